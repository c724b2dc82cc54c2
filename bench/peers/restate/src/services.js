// The order saga as Restate services (TypeScript SDK, plain JavaScript).
//
//   orders      a Service: the ingress entry point. `place` takes the order body, reads X-Correlation-ID
//               from the request headers, picks the order id and starts that order's saga.
//   order_saga  a Workflow keyed by order id: `run` is the saga (runs exactly once per id), and its
//               K/V state is the order's record; `get` (shared) reads it.
//   inventory   a Virtual Object keyed by product id: Restate runs one exclusive handler per key at a
//               time, so reserve/release/commit never race and stock is never oversold.
//   catalog     a Virtual Object with one key: the ids of the products that were put, so the setup API
//               can list them.
//
// Every step that leaves the handler (a call to another object, the gateway, NATS) is a journaled
// operation, so a retried or recovered invocation replays the steps already done instead of repeating
// them; that is what makes the compensations below (the saga pattern of Restate's saga guide) safe.

import * as restate from "@restatedev/restate-sdk";
import { TerminalError } from "@restatedev/restate-sdk";
import { publishEvent } from "./events.js";
import { charge, refund } from "./gateway.js";

const MAX_QUANTITY = 1_000_000;
const MAX_LINES = 100;
const CORRELATION_HEADER = "x-correlation-id";
/// How long the charge is retried (gateway 5xx or no answer) before the order is cancelled with
/// payment_unavailable; orderflow's own saga deadline is 30 s by default.
const PAYMENT_RETRY_FOR_MS = 30_000;

const key = (id) => String(id);

// ---------------------------------------------------------------------------------------------------
// inventory: one object per product

const PRODUCT = "product";

export const inventory = restate.object({
  name: "inventory",
  handlers: {
    /** Create or replace: {name, price_cents, stock} → {created}. */
    put: async (ctx, req) => {
      const product = checkProduct(req);
      const created = (await ctx.get(PRODUCT)) === null;
      ctx.set(PRODUCT, {
        name: product.name,
        price_cents: product.price_cents,
        available: product.stock,
        reserved: 0,
        sold: 0,
      });
      return { created };
    },

    /** The product's counters, or null if it was never put. Shared: runs beside exclusive calls. */
    get: restate.handlers.object.shared(async (ctx) => {
      const product = await ctx.get(PRODUCT);
      return product === null ? null : { product_id: ctx.key, ...product };
    }),

    /** {quantity} → {ok: true, price_cents} or {ok: false, reason}. */
    reserve: async (ctx, { quantity }) => {
      const product = await ctx.get(PRODUCT);
      if (product === null) return { ok: false, reason: "unknown_product" };
      if (product.available < quantity) return { ok: false, reason: "insufficient_stock" };
      product.available -= quantity;
      product.reserved += quantity;
      ctx.set(PRODUCT, product);
      return { ok: true, price_cents: product.price_cents };
    },

    /** Compensation of reserve: reserved → available. */
    release: async (ctx, { quantity }) => {
      const product = await ctx.get(PRODUCT);
      if (product === null) throw new TerminalError(`release of unknown product ${ctx.key}`);
      product.reserved -= quantity;
      product.available += quantity;
      ctx.set(PRODUCT, product);
    },

    /** The order was paid: reserved → sold. */
    commit: async (ctx, { quantity }) => {
      const product = await ctx.get(PRODUCT);
      if (product === null) throw new TerminalError(`commit of unknown product ${ctx.key}`);
      product.reserved -= quantity;
      product.sold += quantity;
      ctx.set(PRODUCT, product);
    },
  },
});

function checkProduct(req) {
  const bad = (message) => new TerminalError(message, { errorCode: 400 });
  if (req === null || typeof req !== "object") throw bad("the body must be a JSON object");
  const { name, price_cents, stock } = req;
  if (typeof name !== "string" || name.length === 0 || name.length > 200)
    throw bad("name must be a string of 1 to 200 characters");
  if (!Number.isSafeInteger(price_cents) || price_cents < 0)
    throw bad("price_cents must be an integer of at least 0");
  if (!Number.isSafeInteger(stock) || stock < 0 || stock > 1_000_000_000)
    throw bad("stock must be an integer from 0 to 1000000000");
  return { name, price_cents, stock };
}

// ---------------------------------------------------------------------------------------------------
// catalog: which products exist (for GET /products)

export const catalog = restate.object({
  name: "catalog",
  handlers: {
    add: async (ctx, productId) => {
      const ids = (await ctx.get("ids")) ?? [];
      if (!ids.includes(productId)) {
        ids.push(productId);
        ctx.set("ids", ids);
      }
    },
    list: restate.handlers.object.shared(async (ctx) => (await ctx.get("ids")) ?? []),
  },
});

// ---------------------------------------------------------------------------------------------------
// orders: the ingress entry point

export const orders = restate.service({
  name: "orders",
  handlers: {
    /**
     * POST /orders/place/send with {customer_id, items: [{product_id, quantity}], payment_method} and
     * header X-Correlation-ID. The ingress answers 202 once this invocation is in Restate's log; this
     * handler then starts the order's saga (a one-way, journaled send) and returns the order id.
     */
    place: async (ctx, body) => {
      const order = checkOrder(body);
      const headers = ctx.request().headers;
      let correlationId = headers.get(CORRELATION_HEADER) ?? null;
      if (correlationId === null) correlationId = `restate-${ctx.rand.uuidv4()}`;
      checkCorrelationId(correlationId);
      // A caller (the setup API's POST /orders) may choose the id; otherwise a deterministic one: the
      // same on every retry of this invocation, since ctx.rand is seeded by the invocation id.
      const orderId = order.order_id ?? ctx.rand.uuidv4();
      ctx
        .workflowSendClient(orderSaga, orderId)
        .run({ ...order, order_id: orderId, correlation_id: correlationId });
      return { order_id: orderId };
    },
  },
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function checkOrder(body) {
  const bad = (message) => new TerminalError(message, { errorCode: 400 });
  if (body === null || typeof body !== "object" || Array.isArray(body))
    throw bad("the body must be a JSON object");
  const { customer_id, items, payment_method, order_id } = body;
  if (typeof customer_id !== "string" || customer_id.length === 0 || customer_id.length > 200)
    throw bad("customer_id must be a string of 1 to 200 characters");
  if (typeof payment_method !== "string" || payment_method.length === 0 || payment_method.length > 64)
    throw bad("payment_method must be a string of 1 to 64 characters");
  if (!Array.isArray(items) || items.length === 0 || items.length > MAX_LINES)
    throw bad(`items must be a list of 1 to ${MAX_LINES} lines`);
  const lines = items.map((line, i) => {
    if (line === null || typeof line !== "object") throw bad(`items[${i}] must be an object`);
    const { product_id, quantity } = line;
    if (typeof product_id !== "string" || product_id.length === 0 || product_id.length > 200)
      throw bad(`items[${i}].product_id must be a string of 1 to 200 characters`);
    if (!Number.isSafeInteger(quantity) || quantity < 1 || quantity > MAX_QUANTITY)
      throw bad(`items[${i}].quantity must be an integer from 1 to ${MAX_QUANTITY}`);
    return { product_id, quantity };
  });
  if (order_id !== undefined && (typeof order_id !== "string" || !UUID.test(order_id)))
    throw bad("order_id, when given, must be a UUID");
  return { customer_id, items: lines, payment_method, order_id };
}

function checkCorrelationId(id) {
  // The rule of orderflow's HTTP edge: 1 to 128 visible ASCII characters.
  if (id.length === 0 || id.length > 128 || !/^[\x21-\x7e]+$/.test(id))
    throw new TerminalError("X-Correlation-ID must be 1 to 128 visible ASCII characters", {
      errorCode: 400,
    });
}

// ---------------------------------------------------------------------------------------------------
// order_saga: one workflow per order

export const orderSaga = restate.workflow({
  name: "order_saga",
  handlers: {
    run: async (ctx, order) => {
      const orderId = ctx.key;
      const correlationId = order.correlation_id;
      const announce = (type, data) =>
        publishEvent(ctx, type, { orderId, correlationId, data });

      ctx.set("order", { status: "pending", ...order });
      await announce("orders.created", {});

      // Saga: every step that succeeded pushes its undo; a terminal failure runs them in reverse.
      const compensations = [];
      let total = 0;
      try {
        for (const line of order.items) {
          const stock = ctx.objectClient(inventory, key(line.product_id));
          const reserved = await stock.reserve({ quantity: line.quantity });
          if (!reserved.ok) throw new TerminalError(reserved.reason);
          compensations.push(() => stock.release({ quantity: line.quantity }));
          total += reserved.price_cents * line.quantity;
        }

        // Undo first, then the step (as in the saga guide): if the charge's outcome is unknown when
        // its retries run out, the refund looks the charge up by its key and returns the money.
        compensations.push(() => ctx.run("refund", () => refund(orderId)));
        await ctx.run(
          "charge",
          () => charge({ orderId, amountCents: total, paymentMethod: order.payment_method }),
          { maxRetryDuration: PAYMENT_RETRY_FOR_MS },
        );

        for (const line of order.items) {
          await ctx.objectClient(inventory, key(line.product_id)).commit({ quantity: line.quantity });
        }
      } catch (e) {
        if (!(e instanceof TerminalError)) throw e; // retryable: Restate retries the invocation
        for (const undo of compensations.reverse()) await undo();
        const reason = cancelReason(e);
        ctx.set("order", { status: "cancelled", reason, ...order });
        await announce("orders.cancelled", { reason });
        return { order_id: orderId, status: "cancelled", reason };
      }

      ctx.set("order", { status: "confirmed", total_cents: total, ...order });
      await announce("orders.confirmed", { total_cents: total });
      return { order_id: orderId, status: "confirmed", total_cents: total };
    },

    /** The order's record: {status, reason?, total_cents?, customer_id, items, ...} or null. */
    get: async (ctx) => ctx.get("order"),
  },
});

const REASONS = new Set(["insufficient_stock", "unknown_product", "payment_declined"]);

/** The reason orderflow would give: a known one carried by the error, else payment_unavailable. */
function cancelReason(error) {
  return REASONS.has(error.message) ? error.message : "payment_unavailable";
}

export const services = [orders, orderSaga, inventory, catalog];
