// @restatedev/restate-sdk 1.17 calls Promise.withResolvers (ES2024), which Node.js has from v22 on;
// this machine has Node.js 20. The standard definition, installed only where it is missing.
if (typeof Promise.withResolvers !== "function") {
  Object.defineProperty(Promise, "withResolvers", {
    configurable: true,
    writable: true,
    value: function withResolvers() {
      let resolve;
      let reject;
      const promise = new this((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}
