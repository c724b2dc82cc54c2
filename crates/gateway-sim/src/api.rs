//! The Stripe-like HTTP API. Business answers (declined, key reused, unknown charge) use Stripe's
//! `{"error": {"code", "message"}}` shape so clients are written against a realistic gateway; malformed
//! requests get the platform's problem documents like every other orderflow API.
//!
//! The `/admin` routes switch and show the simulated faults; they are never subject to them.

use crate::domain::{self, ChargeRequest, ChargeStatus, IdempotencyKey, RefundRequest};
use crate::faults::{Fault, FaultMode, FaultSettings, FaultStats, Faults};
use crate::ledger::{Charge, Ledger, LedgerFilter, Refund, RefundRecorded};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::Shutdown;
use platform::access::Admin;
use platform::db::{SqlError, format_us};
use platform::http::{ApiError, JsonBody};
use serde_json::json;

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The simulator's OpenAPI document, served at `/openapi.json`. It names the routes every orderflow
/// process has; the `/v1` API imitates a third party's (Stripe's shapes) and `/admin` is the
/// operator's switch (`orderflow gateway`), both described in this module rather than as a contract.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::http::api_document(
        "gateway-sim",
        "A payment gateway simulator for orderflow's tests, demos and benchmarks: POST/GET /v1/charges \
         and /v1/refunds in Stripe's shapes, and /admin/faults and /admin/stats to break it on purpose. \
         Not a contract of orderflow: this document lists only the routes every orderflow process has.",
        utoipa::openapi::OpenApiBuilder::new().build(),
    )
}

/// The gateway's routes: the `/v1` API behind the fault layer, and the `/admin` routes that control it.
/// `shutdown` ends the calls a fault holds (hang, slow), so they never keep the server from stopping.
pub fn routes(ledger: Ledger, faults: Faults, shutdown: Shutdown) -> Router {
    let v1 = Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/refunds", post(create_refund).get(list_refunds))
        .with_state(ledger)
        .layer(middleware::from_fn_with_state(
            FaultLayer {
                faults: faults.clone(),
                shutdown,
            },
            inject_faults,
        ));
    let admin = Router::new()
        .route("/admin/faults", get(show_faults).post(set_faults))
        .route("/admin/stats", get(show_stats))
        .with_state(faults);
    v1.merge(admin)
}

#[derive(Clone)]
struct FaultLayer {
    faults: Faults,
    shutdown: Shutdown,
}

/// Applies the current fault to one `/v1` call. A held call (hang, or the late answer of slow) is
/// raced against shutdown: graceful shutdown waits for every in-flight request, and a hanging one
/// would otherwise make it wait forever. `slow` handles the call at once and holds only its answer,
/// so a client that gives up waiting does not know whether it was charged.
async fn inject_faults(State(layer): State<FaultLayer>, request: Request, next: Next) -> Response {
    let mut shutdown = layer.shutdown;
    match layer.faults.next() {
        Fault::None => next.run(request).await,
        Fault::Unavailable => unavailable(),
        Fault::Delay(delay) => {
            let response = next.run(request).await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.requested() => {}
            }
            response
        }
        Fault::Hang => {
            shutdown.requested().await;
            unavailable()
        }
    }
}

/// The answer of a gateway in an outage: 503 with Stripe's error shape, and the ledger untouched.
fn unavailable() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "The gateway is temporarily unavailable.",
    )
}

async fn show_faults(_admin: Admin, State(faults): State<Faults>) -> Json<FaultSettings> {
    Json(faults.settings())
}

async fn set_faults(
    _admin: Admin,
    State(faults): State<Faults>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<FaultSettings>, ApiError> {
    let JsonBody(body) = body?;
    let settings = FaultSettings::parse(&body).map_err(ApiError::Validation)?;
    faults.set(settings);
    let mode = settings.mode.as_str();
    match settings.mode {
        FaultMode::Ok => tracing::info!(mode, "fault injection off: calls are handled normally"),
        FaultMode::Down => tracing::warn!(mode, "fault injected: every call answers 503"),
        FaultMode::Slow => tracing::warn!(
            mode,
            latency_ms = settings.latency_ms,
            "fault injected: every call is delayed by {} ms",
            settings.latency_ms
        ),
        FaultMode::Flaky => tracing::warn!(
            mode,
            error_rate = settings.error_rate,
            "fault injected: a share {} of the calls answers 503",
            settings.error_rate
        ),
        FaultMode::Hang => tracing::warn!(mode, "fault injected: calls are never answered"),
    }
    Ok(Json(settings))
}

async fn show_stats(_admin: Admin, State(faults): State<Faults>) -> Json<FaultStats> {
    Json(faults.stats())
}

/// The answer to a charge request, before it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeReply {
    Succeeded(Charge),
    Declined(Charge),
    KeyReused,
}

/// The whole charge path from a valid request to its answer: decide, record under the key, and give
/// the key's stored answer. Kept in one function so that fault injection can wrap exactly this.
pub async fn charge(
    ledger: &Ledger,
    key: &IdempotencyKey,
    request: &ChargeRequest,
) -> Result<ChargeReply, SqlError> {
    let decision = domain::decide(&request.payment_method);
    let (charge, created) = ledger.record_charge(key, request, decision).await?;
    if !created && !domain::is_replay(&charge, request) {
        tracing::warn!(
            idempotency_key = key.as_str(),
            "idempotency key reused for a different charge"
        );
        metrics::counter!("orderflow_gateway_charges_total", "outcome" => "key_reused")
            .increment(1);
        return Ok(ChargeReply::KeyReused);
    }
    let outcome = match (created, charge.status) {
        (false, _) => "replayed",
        (true, ChargeStatus::Succeeded) => "succeeded",
        (true, ChargeStatus::Declined) => "declined",
    };
    tracing::debug!(charge_id = %charge.id, amount_cents = charge.amount_cents,
        order_id = charge.order_id.as_deref().unwrap_or(""), outcome, "charge answered");
    metrics::counter!("orderflow_gateway_charges_total", "outcome" => outcome).increment(1);
    Ok(match charge.status {
        ChargeStatus::Succeeded => ChargeReply::Succeeded(charge),
        ChargeStatus::Declined => ChargeReply::Declined(charge),
    })
}

async fn create_charge(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let JsonBody(body) = body?;
    let request = ChargeRequest::parse(&body).map_err(ApiError::Validation)?;
    let reply = charge(&ledger, &key, &request)
        .await
        .map_err(ApiError::database)?;
    Ok(match reply {
        ChargeReply::Succeeded(charge) => (
            StatusCode::OK,
            Json(json!({
                "id": charge.id,
                "status": charge.status.as_str(),
                "amount_cents": charge.amount_cents,
                "currency": charge.currency,
            })),
        )
            .into_response(),
        ChargeReply::Declined(charge) => {
            let mut reply = gateway_error(
                StatusCode::PAYMENT_REQUIRED,
                "card_declined",
                "Your card was declined.",
            );
            reply["error"]["decline_code"] = charge.decline_code.into();
            reply["error"]["charge"] = charge.id.into();
            (StatusCode::PAYMENT_REQUIRED, Json(reply)).into_response()
        }
        ChargeReply::KeyReused => key_reused(),
    })
}

async fn create_refund(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let JsonBody(body) = body?;
    let request = RefundRequest::parse(&body).map_err(ApiError::Validation)?;
    let Some(charge) = ledger
        .charge(&request.charge_id)
        .await
        .map_err(ApiError::database)?
    else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            "resource_missing",
            &format!("No such charge: '{}'", request.charge_id),
        ));
    };
    if charge.status != ChargeStatus::Succeeded {
        return Ok(error_response(
            StatusCode::CONFLICT,
            "charge_not_refundable",
            "Only a succeeded charge can be refunded.",
        ));
    }
    let refund = match ledger
        .record_refund(&key, &charge)
        .await
        .map_err(ApiError::database)?
    {
        RefundRecorded::Created(refund) => {
            tracing::info!(refund_id = %refund.id, charge_id = %refund.charge_id,
                amount_cents = refund.amount_cents, "charge refunded");
            metrics::counter!("orderflow_gateway_refunds_total", "outcome" => "refunded")
                .increment(1);
            refund
        }
        RefundRecorded::Existing(refund) => {
            metrics::counter!("orderflow_gateway_refunds_total", "outcome" => "replayed")
                .increment(1);
            refund
        }
        RefundRecorded::KeyReused => return Ok(key_reused()),
    };
    Ok((StatusCode::OK, Json(refund_json(&refund))).into_response())
}

async fn list_charges(
    State(ledger): State<Ledger>,
    filter: Result<Query<LedgerFilter>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = ledger_filter(filter)?;
    let charges = ledger.charges(&filter).await.map_err(ApiError::database)?;
    Ok(Json(charges.iter().map(charge_json).collect()))
}

async fn list_refunds(
    State(ledger): State<Ledger>,
    filter: Result<Query<LedgerFilter>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = ledger_filter(filter)?;
    if filter.idempotency_key.is_some() {
        return Err(ApiError::BadRequest(
            "refunds can be searched by order_id only".into(),
        ));
    }
    let refunds = ledger
        .refunds(filter.order_id.as_deref())
        .await
        .map_err(ApiError::database)?;
    Ok(Json(refunds.iter().map(refund_json).collect()))
}

fn ledger_filter(
    filter: Result<Query<LedgerFilter>, QueryRejection>,
) -> Result<LedgerFilter, ApiError> {
    filter
        .map(|Query(filter)| filter)
        .map_err(|rejection| ApiError::BadRequest(format!("invalid query: {rejection}")))
}

fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::BadRequest("the Idempotency-Key header must be visible ASCII".into())
        })?),
    };
    IdempotencyKey::parse(raw).map_err(ApiError::BadRequest)
}

fn charge_json(charge: &Charge) -> serde_json::Value {
    json!({
        "id": charge.id,
        "status": charge.status.as_str(),
        "amount_cents": charge.amount_cents,
        "currency": charge.currency,
        "payment_method": charge.payment_method,
        "decline_code": charge.decline_code,
        "order_id": charge.order_id,
        "idempotency_key": charge.idempotency_key,
        "refunded": charge.refunded(),
        "created_at": format_us(charge.created_at_us),
    })
}

fn refund_json(refund: &Refund) -> serde_json::Value {
    json!({
        "id": refund.id,
        "status": "succeeded",
        "charge": refund.charge_id,
        "amount_cents": refund.amount_cents,
        "order_id": refund.order_id,
        "idempotency_key": refund.idempotency_key,
        "created_at": format_us(refund.created_at_us),
    })
}

fn gateway_error(status: StatusCode, code: &str, message: &str) -> serde_json::Value {
    json!({ "error": { "code": code, "message": message, "status": status.as_u16() } })
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(gateway_error(status, code, message))).into_response()
}

fn key_reused() -> Response {
    error_response(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "This Idempotency-Key was already used with different parameters.",
    )
}
