//! The payment gateway's HTTP client (Stripe-like API; gateway-sim in development). It classifies every
//! answer into what the worker needs to decide: a charge outcome, or an error that is worth retrying
//! (the gateway may answer later) or not (it never will, for this request).

use contracts::{Currency, Money};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// What the gateway decided about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded { charge_id: String },
    Declined { code: String },
}

/// A charge the gateway holds under an idempotency key, as its charge search shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCharge {
    pub charge_id: String,
    /// `true` for a charge that took money; a declined charge is recorded too, and took none.
    pub succeeded: bool,
}

/// A refund the gateway made (or had made before under the same key or for the same charge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub amount_cents: i64,
}

/// The gateway gave no usable answer. `transient`: no answer, or a temporary one (timeout, connection
/// failure, 5xx, 429); the same request may succeed later. Otherwise the gateway refused the request
/// itself (4xx other than 402 and 429), and repeating it will not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct GatewayError {
    pub transient: bool,
    pub reason: String,
}

impl GatewayError {
    fn transient(reason: impl Into<String>) -> Self {
        Self {
            transient: true,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ChargeBody {
    id: String,
}

#[derive(Deserialize)]
struct ListedCharge {
    id: String,
    status: String,
}

#[derive(Deserialize)]
struct RefundBody {
    id: String,
    amount_cents: i64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
}

impl GatewayClient {
    /// `timeout` bounds each call as a whole, connecting included: a hanging gateway costs one timeout
    /// per attempt, never a stuck worker.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// Charges `amount_cents` to `payment_method`. The gateway stores its answer under
    /// `idempotency_key`, so repeating a call with the same key never charges twice; it returns the
    /// first answer instead.
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount: Money,
        currency: &Currency,
        payment_method: &str,
        order_id: &str,
    ) -> Result<ChargeOutcome, GatewayError> {
        let body = serde_json::json!({
            "amount_cents": amount.cents(),
            "currency": currency.as_str(),
            "payment_method": payment_method,
            "order_id": order_id,
        });
        let request = self.post("/v1/charges", idempotency_key, &body);
        let (status, bytes) = self.send("charge", request).await?;
        match status {
            200 => serde_json::from_slice::<ChargeBody>(&bytes)
                .map(|charge| ChargeOutcome::Succeeded {
                    charge_id: charge.id,
                })
                .map_err(|error| {
                    GatewayError::transient(format!("unreadable charge answer: {error}"))
                }),
            402 => Ok(ChargeOutcome::Declined {
                code: error_code(&bytes).unwrap_or_else(|| "card_declined".into()),
            }),
            _ => Err(refused(status, &bytes)),
        }
    }

    /// Refunds the charge in full; the gateway refunds a charge at most once.
    pub async fn refund(
        &self,
        idempotency_key: &str,
        charge_id: &str,
    ) -> Result<Refund, GatewayError> {
        let body = serde_json::json!({ "charge": charge_id });
        let request = self.post("/v1/refunds", idempotency_key, &body);
        let (status, bytes) = self.send("refund", request).await?;
        match status {
            200 => serde_json::from_slice::<RefundBody>(&bytes)
                .map(|refund| Refund {
                    refund_id: refund.id,
                    amount_cents: refund.amount_cents,
                })
                .map_err(|error| {
                    GatewayError::transient(format!("unreadable refund answer: {error}"))
                }),
            _ => Err(refused(status, &bytes)),
        }
    }

    /// The charges the gateway holds under `idempotency_key` (a charge search, as real gateways offer):
    /// how an unknown outcome is settled without charging. Empty when the key never charged.
    pub async fn find_charges(
        &self,
        idempotency_key: &str,
    ) -> Result<Vec<FoundCharge>, GatewayError> {
        let mut url =
            reqwest::Url::parse(&format!("{}/v1/charges", self.base_url)).map_err(|error| {
                GatewayError {
                    transient: false,
                    reason: format!("the gateway URL cannot take a query: {error}"),
                }
            })?;
        url.query_pairs_mut()
            .append_pair("idempotency_key", idempotency_key);
        let (status, bytes) = self.send("lookup", self.http.get(url)).await?;
        match status {
            200 => serde_json::from_slice::<Vec<ListedCharge>>(&bytes)
                .map(|charges| {
                    charges
                        .into_iter()
                        .map(|charge| FoundCharge {
                            succeeded: charge.status == "succeeded",
                            charge_id: charge.id,
                        })
                        .collect()
                })
                .map_err(|error| {
                    GatewayError::transient(format!("unreadable charge search answer: {error}"))
                }),
            _ => Err(refused(status, &bytes)),
        }
    }

    /// A `POST` of `body` to `path` under `idempotency_key`.
    fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(body)
    }

    /// Sends one request and reads the whole answer within the timeout; records the call's duration.
    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), GatewayError> {
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.bytes().await?.to_vec()))
        }
        .await;
        let outcome = match &result {
            Ok((status, _)) => status.to_string(),
            Err(error) if error.is_timeout() => "timeout".into(),
            Err(_) => "unreachable".into(),
        };
        metrics::histogram!("orderflow_gateway_call_duration_seconds",
            "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            if error.is_timeout() {
                GatewayError::transient(format!("no answer within {} ms", self.timeout.as_millis()))
            } else {
                GatewayError::transient(platform::telemetry::error_chain(&error))
            }
        })
    }
}

fn error_code(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(bytes)
        .ok()
        .map(|body| body.error.code)
}

/// Classifies an answer that is neither a success nor a decline.
fn refused(status: u16, bytes: &[u8]) -> GatewayError {
    let code = error_code(bytes).unwrap_or_default();
    GatewayError {
        transient: status == 429 || status >= 500,
        reason: format!("gateway answered {status} {code}")
            .trim_end()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_server_errors_are_worth_a_retry_and_client_errors_are_not() {
        assert!(refused(503, b"").transient);
        assert!(refused(500, b"").transient);
        assert!(refused(429, b"").transient);
        let reused = refused(409, br#"{"error":{"code":"idempotency_key_reused"}}"#);
        assert!(!reused.transient);
        assert_eq!(reused.reason, "gateway answered 409 idempotency_key_reused");
        assert!(!refused(422, b"{}").transient);
    }
}
