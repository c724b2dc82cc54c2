//! order-service's HTTP API: accept orders, show them and their saga timeline.

use crate::domain::NewOrder;
use crate::storage::{self, KeyState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use contracts::events::{Event, OrderCreated};
use contracts::{Envelope, OrderId};
use platform::db::{Db, to_us};
use platform::http::{ApiError, CorrelationId, JsonBody};
use platform::outbox::{self, OutboxSignal};
use std::time::Duration;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
    pub saga_timeout: Duration,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{order_id}", get(get_order))
        .route("/orders/{order_id}/events", get(get_timeline))
        .with_state(state)
}

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )),
    }
}

/// `POST /orders`: stores the order as `pending` and its `orders.created` event in one transaction,
/// then answers 202; the saga continues asynchronously.
async fn create_order(
    State(state): State<AppState>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let order = NewOrder::parse(&body).map_err(ApiError::Validation)?;
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key {
        match storage::claim_idempotency_key(&state.db, key, &order.canonical_json())
            .await
            .map_err(ApiError::internal)?
        {
            KeyState::Claimed => {}
            KeyState::Completed(order_id) => {
                let existing = storage::find_order(&state.db, order_id)
                    .await
                    .map_err(ApiError::internal)?;
                let correlation = existing.map(|o| o.correlation_id).unwrap_or(correlation_id);
                return Ok(accepted(order_id, &correlation));
            }
            KeyState::Mismatch => {
                return Err(ApiError::Unprocessable(
                    "this Idempotency-Key was already used with a different request body".into(),
                ));
            }
            KeyState::InFlight => {
                return Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is still being processed; retry shortly"
                        .into(),
                ));
            }
        }
    }

    let order_id = OrderId::new();
    let created = insert_pending(&state, order_id, &order, &correlation_id, key.as_deref()).await;
    if let Err(error) = created {
        if let Some(key) = &key
            && let Err(release) = storage::release_idempotency_key(&state.db, key).await
        {
            tracing::warn!(error = %release, "could not release the idempotency key");
        }
        return Err(ApiError::internal(error));
    }
    state.outbox.wake();
    tracing::info!(%order_id, lines = order.items.len(), "order accepted");
    Ok(accepted(order_id, &correlation_id))
}

async fn insert_pending(
    state: &AppState,
    order_id: OrderId,
    order: &NewOrder,
    correlation_id: &str,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    let now = time::OffsetDateTime::now_utc();
    let deadline_at = now + state.saga_timeout;
    let event = Envelope::first(
        order_id,
        correlation_id.to_owned(),
        Event::OrderCreated(OrderCreated {
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            payment_method: order.payment_method.clone(),
            deadline_at,
        }),
    );
    let mut tx = state.db.begin().await?;
    storage::insert_order(&mut tx, order_id, order, correlation_id, to_us(deadline_at)).await?;
    storage::record_timeline(
        &mut tx,
        &event.meta,
        event.event.event_type(),
        event.event.producer(),
    )
    .await?;
    outbox::enqueue(&mut tx, &event).await?;
    if let Some(key) = key {
        storage::complete_idempotency_key(&mut tx, key, order_id).await?;
    }
    tx.commit().await
}

fn accepted(order_id: OrderId, correlation_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/orders/{order_id}"))],
        Json(serde_json::json!({
            "order_id": order_id.to_string(),
            "status": "pending",
            "correlation_id": correlation_id,
        })),
    )
        .into_response()
}

fn parse_order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|error| ApiError::BadRequest(format!("order id: {error}")))
}

async fn get_order(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = parse_order_id(&raw_id)?;
    match storage::find_order(&state.db, order_id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(order) => Ok(Json(order).into_response()),
        None => Err(ApiError::NotFound(format!("no order {order_id}"))),
    }
}

async fn get_timeline(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = parse_order_id(&raw_id)?;
    if storage::find_order(&state.db, order_id)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order {order_id}")));
    }
    let entries = storage::timeline(&state.db, order_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(entries).into_response())
}
