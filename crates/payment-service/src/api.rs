//! HTTP: what a payment looks like from outside. Only payments the gateway has been asked about are
//! visible; the join's waiting state is an internal detail.

use crate::{domain, storage};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use contracts::OrderId;
use platform::db::Db;
use platform::http::ApiError;
use serde_json::json;

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/payments/{order_id}", get(get_payment))
        .with_state(db)
}

async fn get_payment(
    State(db): State<Db>,
    Path(order_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let order_id =
        OrderId::parse(&order_id).map_err(|error| ApiError::BadRequest(error.to_string()))?;
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
    Ok(Json(json!({
        "order_id": payment.order_id,
        "status": status,
        "amount_cents": payment.amount_cents,
        "attempts": payment.attempts,
    })))
}
