// The payment gateway simulator's API, called from inside ctx.run.
//   200 → charged; 402 → declined (a TerminalError: retrying cannot change it);
//   5xx, 429, or no answer → a plain Error, which Restate retries with the same Idempotency-Key.

import { TerminalError } from "@restatedev/restate-sdk";
import { readReply } from "./config.js";

let gatewayUrl = null;
const CALL_TIMEOUT_MS = 5_000;

export function setGatewayUrl(url) {
  gatewayUrl = url.replace(/\/+$/, "");
}

async function call(method, path, { key, body } = {}) {
  const headers = { accept: "application/json" };
  if (key !== undefined) headers["idempotency-key"] = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${gatewayUrl}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  const { status, json } = await readReply(response);
  return { status, json };
}

function retryable(status) {
  return status >= 500 || status === 429 || status === 408;
}

/** Charges `amountCents` for `orderId`; returns the charge id. */
export async function charge({ orderId, amountCents, paymentMethod }) {
  const { status, json } = await call("POST", "/v1/charges", {
    key: orderId,
    body: { amount_cents: amountCents, payment_method: paymentMethod, order_id: orderId },
  });
  if (status === 200) return { charge_id: json?.id ?? null };
  if (status === 402) throw new TerminalError("payment_declined");
  if (retryable(status)) throw new Error(`the gateway answered ${status} to the charge`);
  throw new TerminalError(`the gateway refused the charge with ${status}`);
}

/**
 * Compensation of charge: refunds any succeeded, unrefunded charge made under this order's key
 * (there is none when the charge was declined or never reached the gateway).
 */
export async function refund(orderId) {
  const query = new URLSearchParams({ idempotency_key: orderId });
  const { status, json } = await call("GET", `/v1/charges?${query}`);
  if (status !== 200) throw new Error(`the gateway answered ${status} to the charge lookup`);
  const refunded = [];
  for (const charge of Array.isArray(json) ? json : []) {
    if (charge.status !== "succeeded" || charge.refunded) continue;
    const answer = await call("POST", "/v1/refunds", {
      key: `refund-${orderId}`,
      body: { charge: charge.id },
    });
    if (answer.status !== 200 && answer.status !== 201) {
      throw new Error(`the gateway answered ${answer.status} to the refund`);
    }
    refunded.push(charge.id);
  }
  return refunded;
}
