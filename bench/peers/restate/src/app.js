// The peer's Node process: the Restate service endpoint (HTTP/2, PEER_PORT_BASE+3) that restate-server
// invokes, and the benchmark's setup API (HTTP/1.1, PEER_PORT_BASE), which reaches the services only
// through Restate's ingress (PEER_PORT_BASE+1), like any other client.
//
// Started by ./run (src/run.js); can also be started on its own against a running restate-server:
//   PEER_PORT_BASE=... PEER_NATS_URL=... PEER_GATEWAY_URL=... node src/app.js

import "./polyfill.js";
import http from "node:http";
import http2 from "node:http2";
import { randomUUID } from "node:crypto";
import { createEndpointHandler } from "@restatedev/restate-sdk";
import { services } from "./services.js";
import { connectNats, closeNats } from "./events.js";
import { setGatewayUrl } from "./gateway.js";
import { ports, requireEnv, log, readReply } from "./config.js";

const base = ports(requireEnv("PEER_PORT_BASE"));
const natsUrl = requireEnv("PEER_NATS_URL");
setGatewayUrl(requireEnv("PEER_GATEWAY_URL"));
const ingress = `http://127.0.0.1:${base.ingress}`;

/** A call through the ingress: {status, json, text}. */
async function callIngress(path, { body, headers = {}, timeoutMs = 10_000 } = {}) {
  const response = await fetch(`${ingress}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body ?? null),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return readReply(response);
}

const seg = (s) => encodeURIComponent(s);

// ---------------------------------------------------------------------------------------------------
// the setup API

function send(res, status, value) {
  const body = value === undefined ? "" : JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

function problem(res, status, detail) {
  send(res, status, { title: http.STATUS_CODES[status] ?? "Error", status, detail });
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) throw Object.assign(new Error("the body is larger than 1 MiB"), { status: 413 });
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw Object.assign(new Error("the body is not JSON"), { status: 400 });
  }
}

/** Maps a failed ingress answer onto the setup API's: a handler's 400 TerminalError is the caller's. */
function relayFailure(res, answer) {
  const message = answer.json?.message ?? answer.text;
  if (answer.status === 400) return problem(res, 422, message);
  return problem(res, 502, `Restate's ingress answered ${answer.status}: ${message}`);
}

async function ready() {
  try {
    // Answers 200 only once the ingress is up and the deployment is registered (else 404).
    const answer = await callIngress("/catalog/all/list", { timeoutMs: 2_000 });
    return answer.status === 200;
  } catch {
    return false;
  }
}

async function putProduct(res, id, req) {
  const product = await readJson(req);
  const put = await callIngress(`/inventory/${seg(id)}/put`, { body: product });
  if (put.status !== 200) return relayFailure(res, put);
  const added = await callIngress("/catalog/all/add", { body: id });
  if (added.status !== 200) return relayFailure(res, added);
  const now = await callIngress(`/inventory/${seg(id)}/get`);
  if (now.status !== 200) return relayFailure(res, now);
  send(res, put.json?.created ? 201 : 200, now.json);
}

async function listProducts(res) {
  const ids = await callIngress("/catalog/all/list");
  if (ids.status !== 200) return relayFailure(res, ids);
  const products = [];
  const list = ids.json ?? [];
  for (let i = 0; i < list.length; i += 32) {
    const batch = await Promise.all(
      list.slice(i, i + 32).map((id) => callIngress(`/inventory/${seg(id)}/get`)),
    );
    for (const answer of batch) {
      if (answer.status !== 200) return relayFailure(res, answer);
      if (answer.json !== null) products.push(answer.json);
    }
  }
  send(res, 200, products);
}

/** Convenience: the same order through the ingress, answered with an order id chosen here. */
async function placeOrder(res, req) {
  const order = await readJson(req);
  if (order === null || typeof order !== "object" || Array.isArray(order))
    return problem(res, 422, "the body must be a JSON object");
  const orderId = randomUUID();
  const headers = { "idempotency-key": orderId };
  const correlation = req.headers["x-correlation-id"];
  if (typeof correlation === "string") headers["x-correlation-id"] = correlation;
  const answer = await callIngress("/orders/place/send", { body: { ...order, order_id: orderId }, headers });
  if (answer.status !== 202 && answer.status !== 200) return relayFailure(res, answer);
  send(res, 202, { order_id: orderId });
}

async function getOrder(res, id) {
  const answer = await callIngress(`/order_saga/${seg(id)}/get`);
  if (answer.status !== 200) return relayFailure(res, answer);
  if (answer.json === null) return problem(res, 404, `no order ${id}`);
  send(res, 200, { order_id: id, ...answer.json });
}

async function route(req, res) {
  const url = new URL(req.url, "http://localhost");
  const path = url.pathname;
  let m;
  if (path === "/health/ready" && req.method === "GET") {
    return (await ready()) ? send(res, 200, { status: "ready" }) : problem(res, 503, "not ready yet");
  }
  if (path === "/health/live" && req.method === "GET") return send(res, 200, { status: "live" });
  if (path === "/products" && req.method === "GET") return listProducts(res);
  if ((m = /^\/products\/([^/]+)$/.exec(path)) && req.method === "PUT") {
    return putProduct(res, decodeURIComponent(m[1]), req);
  }
  if (path === "/orders" && req.method === "POST") return placeOrder(res, req);
  if ((m = /^\/orders\/([^/]+)$/.exec(path)) && req.method === "GET") {
    return getOrder(res, decodeURIComponent(m[1]));
  }
  return problem(res, 404, `no route ${req.method} ${path}`);
}

const setup = http.createServer((req, res) => {
  route(req, res).catch((error) => {
    if (!res.headersSent) problem(res, error.status ?? 502, error.message);
    else res.destroy();
  });
});
setup.keepAliveTimeout = 75_000;

// ---------------------------------------------------------------------------------------------------
// start and stop

const endpoint = http2.createServer(createEndpointHandler({ services }));

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
}

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`app: ${signal}, stopping`);
  setup.close();
  endpoint.close();
  await closeNats();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

async function start(what, action) {
  try {
    await action();
  } catch (error) {
    log(`app: cannot ${what}: ${error.message}`);
    process.exit(1);
  }
}
await start(`connect to NATS at ${natsUrl}`, () => connectNats(natsUrl));
await start(`listen on 127.0.0.1:${base.endpoint}`, () => listen(endpoint, base.endpoint));
await start(`listen on 127.0.0.1:${base.api}`, () => listen(setup, base.api));
log(`app: endpoint on 127.0.0.1:${base.endpoint}, setup API on 127.0.0.1:${base.api}, NATS ${natsUrl}`);
// Tells the supervisor (src/run.js) that the endpoint can be registered.
process.send?.({ listening: true });
