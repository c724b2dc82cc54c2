// The peer's ports and environment (bench/peers/README.md: PEER_PORT_BASE and the next 9 ports), and
// the one way its HTTP replies are read.

export function requireEnv(name) {
  const value = process.env[name];
  if (value === undefined || value.trim() === "") {
    log(`${name} is not set (see bench/peers/README.md)`);
    process.exit(2);
  }
  return value.trim();
}

/** PEER_PORT_BASE → every port the peer uses. */
export function ports(raw) {
  const base = Number(raw);
  if (!Number.isInteger(base) || base < 1 || base + 9 > 65535) {
    log(`PEER_PORT_BASE must be a port from 1 to 65526, not ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return {
    api: base, // the setup API (this peer's HTTP API)
    ingress: base + 1, // restate-server: HTTP ingress (orders go here)
    admin: base + 2, // restate-server: admin API (deployment registration, introspection)
    endpoint: base + 3, // the Node service endpoint restate-server invokes
    fabric: base + 4, // restate-server: node-to-node (message fabric); also serves /metrics
  };
}

export function log(message) {
  process.stderr.write(`[peer-restate] ${new Date().toISOString()} ${message}\n`);
}

/** A fetch response read to the end: {status, json, text}; json is null when the body is not JSON. */
export async function readReply(response) {
  const text = await response.text();
  let json = null;
  try {
    json = text.length > 0 ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: response.status, json, text };
}
