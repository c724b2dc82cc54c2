//! HTTP: what a payment looks like from outside. Only payments the gateway has been asked about are
//! visible; the join's waiting state is an internal detail.

use crate::{domain, storage};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use contracts::{Money, OrderId};
use platform::db::Db;
use platform::http::{ApiError, Problem};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/payments/{order_id}", get(get_payment))
        .with_state(db)
}

#[derive(OpenApi)]
#[openapi(
    paths(get_payment),
    components(schemas(PaymentView)),
    tags((name = "payments", description = "What the gateway was asked to do for an order, and its answer."))
)]
struct PaymentApi;

/// The service's OpenAPI document, served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::http::api_document(
        "payment-service",
        "Charges orders through the payment gateway, behind timeouts, retries and a circuit breaker, \
         and refunds charges that land after a cancel. This API shows a payment once the gateway has \
         been asked about it.",
        PaymentApi::openapi(),
    )
}

/// A payment as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    pub order_id: OrderId,
    /// `processing` while calls to the gateway go on, then `succeeded`, `declined`, `failed` or
    /// `refunded`.
    pub status: &'static str,
    #[schema(value_type = Option<Money>)]
    pub amount_cents: Option<i64>,
    /// Calls made to the gateway so far.
    pub attempts: i64,
}

/// Show the payment of an order.
#[utoipa::path(get, path = "/payments/{order_id}", tag = "payments",
    params(("order_id" = OrderId, Path, description = "The order's id.")),
    responses(
        (status = 200, description = "The payment.", body = PaymentView),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No call to the gateway was made for this order yet.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_payment(
    State(db): State<Db>,
    Path(order_id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let order_id =
        OrderId::parse(&order_id).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    platform::http::record_order_id(order_id);
    let payment = storage::find(&db, order_id)
        .await
        .map_err(ApiError::database)?;
    let visible = payment.and_then(|payment| {
        domain::public_status(payment.status, payment.attempts).map(|status| (payment, status))
    });
    let Some((payment, status)) = visible else {
        return Err(ApiError::NotFound(format!(
            "no payment has been attempted for order {order_id}"
        )));
    };
    Ok(Json(PaymentView {
        order_id: payment.order_id,
        status,
        amount_cents: payment.amount_cents,
        attempts: payment.attempts,
    }))
}
