// orderflow's events on core NATS (fire-and-forget, no JetStream), each published inside ctx.run so
// the publication is a journaled step: a recovered saga does not publish an event it already published.
// (A crash between the publish and the journal entry's ack publishes it again, with the same event_id:
// at-least-once, as orderflow's own relay.)

import { connect, headers as natsHeaders } from "@nats-io/transport-node";

let connection = null;

/** Connects once; the client reconnects by itself if the server goes away. */
export async function connectNats(servers) {
  connection = await connect({
    servers: servers.split(",").map((s) => s.trim()),
    name: "orderflow-peer-restate",
    maxReconnectAttempts: -1,
  });
  return connection;
}

export async function closeNats() {
  if (connection !== null) await connection.drain().catch(() => {});
  connection = null;
}

/** orderflow's envelope (contracts::Envelope wire form). */
function envelope({ eventId, type, orderId, correlationId, data }) {
  return JSON.stringify({
    event_id: eventId,
    type,
    version: "v1",
    occurred_at: new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000Z"),
    order_id: orderId,
    correlation_id: correlationId,
    causation_id: null,
    data,
  });
}

/**
 * Publishes `type` on subject `type` as a journaled step. The event id is drawn from ctx.rand outside
 * the step, so it is the same on every attempt of the step.
 */
export function publishEvent(ctx, type, { orderId, correlationId, data }) {
  const eventId = ctx.rand.uuidv4();
  return ctx.run(`publish ${type}`, () => {
    if (connection === null || connection.isClosed()) throw new Error("not connected to NATS");
    const h = natsHeaders();
    h.set("Orderflow-Correlation-Id", correlationId);
    connection.publish(type, envelope({ eventId, type, orderId, correlationId, data }), { headers: h });
  });
}
