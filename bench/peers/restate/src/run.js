// The peer's supervisor (what ./run starts): restate-server and the Node app as children, the
// deployment registered with the admin API, everything stopped on SIGTERM/SIGINT.
//
// restate-server is configured by a TOML file written into PEER_DATA_DIR (see README.md for why each
// setting); RESTATE_* environment variables, if set, still override it (Restate's own precedence).

import { spawn, fork } from "node:child_process";
import { createRequire } from "node:module";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ports, requireEnv, log } from "./config.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const base = ports(requireEnv("PEER_PORT_BASE"));
requireEnv("PEER_NATS_URL");
requireEnv("PEER_GATEWAY_URL");
const dataDir = path.resolve(requireEnv("PEER_DATA_DIR"));
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(2)} s`;

function serverBinary() {
  const require = createRequire(import.meta.url);
  const name = `@restatedev/restate-server-${os.platform()}-${os.arch()}/bin/restate-server`;
  try {
    return require.resolve(name);
  } catch {
    log(`cannot find ${name}: run bench/peers/restate/install first`);
    process.exit(2);
  }
}

/** restate-server's configuration: Restate's single-node defaults, plus ports and paths. */
function serverConfig() {
  return `# Written by bench/peers/restate/src/run.js; see bench/peers/restate/README.md.
node-name = "orderflow-peer"
cluster-name = "orderflow-peer"
base-dir = ${JSON.stringify(path.join(dataDir, "restate-data"))}
# A single node provisions its own cluster (the default outside --production).
auto-provision = true
# Loopback only: the admin API has no authentication.
bind-ip = "127.0.0.1"
listen-mode = "tcp"
bind-port = ${base.fabric}
advertised-address = "http://127.0.0.1:${base.fabric}/"
disable-telemetry = true
log-disable-ansi-codes = true

[admin]
bind-port = ${base.admin}

[ingress]
bind-port = ${base.ingress}
`;
}

async function fetchOk(url, init = {}) {
  try {
    const response = await fetch(url, { ...init, signal: AbortSignal.timeout(2_000) });
    const text = await response.text();
    return { ok: response.ok, status: response.status, text };
  } catch (error) {
    return { ok: false, status: 0, text: error.message };
  }
}

async function waitFor(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (stopping) throw new Error("stopping");
    const result = await check();
    if (result.ok) return result;
    if (Date.now() > deadline) throw new Error(`${what}: ${result.status} ${result.text}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// ---------------------------------------------------------------------------------------------------
// children

let stopping = false;
let server = null;
let app = null;
let appStarts = [];

function startServer() {
  mkdirSync(dataDir, { recursive: true });
  const configFile = path.join(dataDir, "restate.toml");
  writeFileSync(configFile, serverConfig());
  server = spawn(serverBinary(), ["--config-file", configFile, "--no-logo"], {
    stdio: ["ignore", "inherit", "inherit"],
  });
  server.on("exit", (code, signal) => {
    server = null;
    if (!stopping) {
      log(`restate-server exited (${signal ?? code}); stopping the peer`);
      stop(1);
    }
  });
  server.on("error", (error) => {
    log(`cannot start restate-server: ${error.message}`);
    stop(1);
  });
}

/** Resolves once an app process (the first, or one started again after a crash) is listening. */
let appListening;
let appStarted = false;
const firstListening = new Promise((resolve) => (appListening = resolve));

/** The endpoint and setup API; restarted if it dies (Restate then retries what it was running). */
function startApp() {
  appStarts = appStarts.filter((t) => Date.now() - t < 60_000);
  appStarts.push(Date.now());
  // The SDK logs two INFO lines per invocation (start, end); WARN keeps retries and failures.
  const env = { ...process.env, RESTATE_LOGGING: process.env.RESTATE_LOGGING ?? "WARN" };
  app = fork(path.join(here, "app.js"), [], { env, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  app.on("message", (message) => {
    if (!message?.listening) return;
    if (appStarted) log("the app is listening again");
    appStarted = true;
    appListening();
  });
  app.on("exit", (code, signal) => {
    app = null;
    if (stopping) return;
    if (appStarts.length >= 5) {
      log(`the app exited (${signal ?? code}) 5 times within a minute; stopping the peer`);
      stop(1);
      return;
    }
    log(`the app exited (${signal ?? code}); starting it again`);
    setTimeout(() => stopping || startApp(), 500);
  });
}

async function register() {
  const uri = `http://127.0.0.1:${base.endpoint}`;
  // force: on a restart over the same PEER_DATA_DIR the endpoint's URI is already registered, and
  // without force Restate keeps the old registration instead of discovering the handlers again.
  const answer = await waitFor("registering the deployment", () =>
    fetchOk(`http://127.0.0.1:${base.admin}/deployments`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ uri, force: true }),
    }),
  );
  const services = JSON.parse(answer.text).services?.map((s) => s.name) ?? [];
  log(`registered ${uri}: ${services.join(", ")} (${elapsed()})`);
}

function waitExit(child, ms) {
  if (child === null || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
    }, ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function stop(code) {
  if (stopping) return;
  stopping = true;
  // The app first, so nothing is invoked while restate-server drains; then the server.
  if (app !== null) {
    app.kill("SIGTERM");
    await waitExit(app, 10_000);
  }
  if (server !== null) {
    server.kill("SIGTERM");
    await waitExit(server, 30_000);
  }
  log(`stopped (${elapsed()})`);
  process.exit(code);
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
process.on("SIGHUP", () => stop(0));

try {
  startServer();
  startApp();
  await firstListening;
  await waitFor("restate-server's admin API", () => fetchOk(`http://127.0.0.1:${base.admin}/health`));
  await register();
  await waitFor("the setup API's readiness", () =>
    fetchOk(`http://127.0.0.1:${base.api}/health/ready`),
  );
  log(
    `ready in ${elapsed()}: setup API http://127.0.0.1:${base.api}, orders POST ` +
      `http://127.0.0.1:${base.ingress}/orders/place/send, admin http://127.0.0.1:${base.admin}`,
  );
} catch (error) {
  if (!stopping) {
    log(`cannot start: ${error.message}`);
    stop(1);
  }
}
