//! order-service's HTTP API: accept orders, show them and their saga timeline.

use crate::accepts::Accepts;
use crate::admission::{Admission, Overloaded, Shed};
use crate::domain::{NewOrder, OrderStatus};
use crate::outcomes::Outcomes;
use crate::storage::{self, ClaimToken, ItemRow, KeyState, OrderRow, TimelineRow};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use contracts::events::{CancelReason, Event, OrderCreated};
use contracts::{CorrelationId, Envelope, OrderId, Priority, TraceContext};
use platform::db::{Db, SqlError, Tx, format_us, now_us, to_us};
use platform::http::{ApiError, JsonBody, Problem, RequestContext};
use platform::outbox::{self, PublishVersions};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub saga_timeout: Duration,
    /// The versions `orders.created` goes out in.
    pub publish_versions: PublishVersions,
    pub outcomes: Outcomes,
    pub admission: Admission,
    /// New orders waiting to share a transaction.
    pub accepts: Accepts,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{order_id}", get(get_order))
        .route("/orders/{order_id}/events", get(get_timeline))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    paths(create_order, get_order, get_timeline),
    components(schemas(NewOrder, OrderView, ItemView, TimelineEntry, AcceptedOrder)),
    tags((name = "orders", description = "Place orders and follow their saga."))
)]
struct OrderApi;

/// The service's OpenAPI document, served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = platform::http::api_document(
        "order-service",
        "Accepts orders and shows them and their saga. An accepted order is pending until the saga \
         confirms or cancels it; follow it with GET /orders/{order_id}.",
        OrderApi::openapi(),
    );
    platform::http::refuse_unknown_fields(&mut document, &["NewOrder", "OrderLine"]);
    document
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    #[schema(value_type = OrderId)]
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<ItemView>,
    pub payment_method: String,
    /// `pending`, `confirmed` or `cancelled`.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    /// Why the order was cancelled, once it was.
    #[schema(value_type = Option<CancelReason>)]
    pub cancel_reason: Option<String>,
    /// What the order costs, once its stock is reserved.
    pub total_cents: Option<i64>,
    pub correlation_id: String,
    /// The W3C trace id of the request that placed the order, which every event of its saga carries:
    /// look the saga up by it in a tracing backend, or in the services' logs (`trace_id`).
    pub trace_id: Option<String>,
    /// The order's lane: `normal` or `express`.
    #[schema(value_type = Priority)]
    pub priority: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemView {
    pub product_id: String,
    pub quantity: i64,
}

/// The answer to an accepted order (202).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AcceptedOrder {
    #[schema(value_type = OrderId)]
    pub order_id: String,
    /// Always `pending`: the saga decides the rest.
    pub status: &'static str,
    pub correlation_id: String,
}

impl OrderView {
    fn new(order: OrderRow, items: Vec<ItemRow>) -> Self {
        Self {
            order_id: order.order_id,
            customer_id: order.customer_id,
            items: items
                .into_iter()
                .map(|item| ItemView {
                    product_id: item.product_id,
                    quantity: item.quantity,
                })
                .collect(),
            payment_method: order.payment_method,
            status: order.status,
            cancel_reason: order.cancel_reason,
            total_cents: order.total_cents,
            correlation_id: order.correlation_id,
            trace_id: order
                .traceparent
                .as_deref()
                .and_then(|traceparent| contracts::TraceContext::parse(traceparent).ok())
                .map(|trace| trace.trace_id.to_string()),
            priority: order.priority,
            created_at: format_us(order.created_at_us),
            updated_at: format_us(order.updated_at_us),
        }
    }
}

/// One event of an order's saga, as `GET /orders/{id}/events` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelineEntry {
    #[schema(value_type = contracts::EventId)]
    pub event_id: String,
    /// The event type (`orders.created`, `inventory.reserved`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When its producer made it.
    #[schema(format = DateTime)]
    pub occurred_at: String,
    /// When order-service recorded it: for an event it consumed, when it handled it.
    #[schema(format = DateTime)]
    pub recorded_at: String,
    /// The service that published it.
    pub source: String,
}

impl From<TimelineRow> for TimelineEntry {
    fn from(row: TimelineRow) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            occurred_at: format_us(row.occurred_at_us),
            recorded_at: format_us(row.recorded_at_us),
            source: row.source,
        }
    }
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

/// A key claimed by this request, to complete with the order or to give back.
#[derive(Clone)]
pub(crate) struct Claim {
    key: String,
    token: ClaimToken,
}

/// Place an order.
///
/// Stores the order as `pending` and its `orders.created` event in one transaction, then answers
/// 202; the saga reserves the stock and charges the payment asynchronously. A retry with the same
/// `Idempotency-Key` and body answers the same 202 instead of placing a second order.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = NewOrder,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; the same key and body place one order however often they are sent."),
        ("X-Correlation-ID" = Option<String>, Header, description = "1 to 128 visible ASCII characters that tie the saga's events and logs together; a UUID is made up when it is absent."),
    ),
    responses(
        (status = 202, description = "The order is accepted and pending.", body = AcceptedOrder,
            headers(("Location" = String, description = "The order's URL."))),
        (status = 400, description = "A header or the body is not acceptable as it is.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still being processed, or a retry took it over.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (all of them are listed), or an Idempotency-Key used with another body.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded (`urn:orderflow:problem:overloaded`): a new order's saga would take longer than ORDERFLOW_ADMISSION_MAX_WAIT now, or its lane's events waiting in the outbox near ORDERFLOW_OUTBOX_READY_LIMIT, so nothing was created; or the database does not answer. Retry after the seconds Retry-After gives, with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
async fn create_order(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let order = NewOrder::parse(&body).map_err(ApiError::Validation)?;
    if order.currency != contracts::Currency::legacy()
        && !state.publish_versions.includes(contracts::events::V2)
    {
        return Err(ApiError::Validation(vec![platform::http::FieldError::new(
            "currency",
            format!(
                "orders in {} are not taken yet: they need orders.created v2, which this service \
                 publishes once ORDERFLOW_PUBLISH_VERSIONS includes v2 (after every consumer reads \
                 it); until then every order is in {}",
                order.currency,
                contracts::Currency::legacy()
            ),
        )]));
    }
    let request = order.canonical_json();
    let key = idempotency_key(&headers)?;
    if let Err(overloaded) = state.admission.admit(order.priority) {
        return refused(&state, key, &request, &context, order.priority, overloaded).await;
    }
    let order_id = OrderId::new();
    platform::http::record_order_id(order_id);
    // A key seen for the first time, the common case, is stored with the order: one transaction.
    let first_key = match &key {
        Some(key) => KeyUse::New {
            key: key.clone(),
            request: request.clone(),
        },
        None => KeyUse::None,
    };
    let inserted = insert_pending(&state, order_id, &order, &context, first_key)
        .await
        .map_err(ApiError::database)?;
    if let (Inserted::KeyUsed, Some(key)) = (inserted, key) {
        // The key was stored before: its first request's order, a conflict, or a claim to take over.
        let claim = match storage::claim_idempotency_key(&state.db, &key, &request, now_us())
            .await
            .map_err(ApiError::database)?
        {
            KeyState::Claimed(token) => Claim { key, token },
            KeyState::Completed(existing) => {
                platform::http::record_order_id(existing);
                return already_accepted(&state, existing, &context.correlation_id).await;
            }
            KeyState::Mismatch => return Err(key_mismatch()),
            KeyState::InFlight => return Err(key_in_flight()),
        };
        let claimed = KeyUse::Claimed(claim.clone());
        match insert_pending(&state, order_id, &order, &context, claimed).await {
            Ok(Inserted::Created) => {}
            Ok(Inserted::ClaimLost | Inserted::KeyUsed) => {
                // This request stalled past the takeover age and a retry took the key over: that
                // retry's order is the one; asking again with the key returns it.
                return Err(ApiError::Conflict(
                    "this request took too long and a retry with the same Idempotency-Key took \
                     over; retry to get its order"
                        .into(),
                ));
            }
            Err(error) => {
                if let Err(release) =
                    storage::release_idempotency_key(&state.db, &claim.key, &claim.token).await
                {
                    tracing::warn!(error = %release, "could not release the idempotency key");
                }
                return Err(ApiError::database(error));
            }
        }
    }
    tracing::debug!(%order_id, lines = order.items.len(), "order accepted");
    Ok(accepted(order_id, context.correlation_id.as_str()))
}

/// The answer while new orders of `lane` are shed: a request repeated with the key of an order that
/// exists gets it as always; any other is refused with 503 and `Retry-After`, creating nothing (its
/// key is not claimed either).
async fn refused(
    state: &AppState,
    key: Option<String>,
    request: &str,
    context: &RequestContext,
    lane: Priority,
    overloaded: Overloaded,
) -> Result<Response, ApiError> {
    if let Some(key) = key {
        match storage::look_up_idempotency_key(&state.db, &key, request)
            .await
            .map_err(ApiError::database)?
        {
            Some(KeyState::Completed(order_id)) => {
                platform::http::record_order_id(order_id);
                return already_accepted(state, order_id, &context.correlation_id).await;
            }
            Some(KeyState::Mismatch) => return Err(key_mismatch()),
            Some(KeyState::InFlight) => return Err(key_in_flight()),
            Some(KeyState::Claimed(_)) | None => {}
        }
    }
    metrics::counter!("orderflow_admission_rejected_total", "priority" => lane.as_str())
        .increment(1);
    let why = match overloaded.cause {
        Shed::SagaWait => format!(
            "one would take about {:.1} s to finish, more than ORDERFLOW_ADMISSION_MAX_WAIT ({}) \
             allows",
            overloaded.estimate.as_secs_f64(),
            state
                .admission
                .max_wait()
                .map_or_else(|| "off".to_owned(), platform::config::format_duration),
        ),
        Shed::OutboxBacklog { unpublished } => format!(
            "{unpublished} of their events wait in the outbox to be published, at or above {} \
             ({} % of ORDERFLOW_OUTBOX_READY_LIMIT, where the service reports not ready)",
            state.admission.shed_at_outbox(),
            crate::admission::SHED_AT_OUTBOX_SHARE,
        ),
    };
    Err(ApiError::Overloaded {
        detail: format!(
            "new {lane} orders are refused for now: {why}, so nothing was created; retry after \
             the seconds Retry-After gives (with the same Idempotency-Key)"
        ),
        retry_after: overloaded.retry_after,
    })
}

fn key_mismatch() -> ApiError {
    ApiError::Unprocessable(
        "this Idempotency-Key was already used with a different request body".into(),
    )
}

fn key_in_flight() -> ApiError {
    ApiError::Conflict(
        "a request with this Idempotency-Key is still being processed; retry shortly".into(),
    )
}

/// The answer to a repeated request whose first one created `order_id`: the same 202.
async fn already_accepted(
    state: &AppState,
    order_id: OrderId,
    correlation_id: &CorrelationId,
) -> Result<Response, ApiError> {
    let existing = storage::find_order(&state.db, order_id)
        .await
        .map_err(ApiError::database)?;
    let correlation = existing
        .map(|(order, _)| order.correlation_id)
        .unwrap_or_else(|| correlation_id.to_string());
    Ok(accepted(order_id, &correlation))
}

/// How writing one new order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Created,
    /// The key's claim was taken over meanwhile: nothing was stored.
    ClaimLost,
    /// The key was stored before: nothing was stored now.
    KeyUsed,
}

/// The request's Idempotency-Key, as the order's transaction records it.
pub(crate) enum KeyUse {
    None,
    /// Not seen before, as far as this request knows: stored completed with the order.
    New {
        key: String,
        request: String,
    },
    /// Claimed in a transaction of its own: completed with the order if the claim still holds.
    Claimed(Claim),
}

/// One new order as `POST /orders` writes it: the order, its `orders.created` event and the key it
/// was asked with. Written in a transaction shared with the requests beside it ([`Accepts`]).
pub(crate) struct Accept {
    pub(crate) order_id: OrderId,
    order: NewOrder,
    event: Envelope,
    correlation_id: CorrelationId,
    trace: TraceContext,
    deadline_at_us: i64,
    key: KeyUse,
}

impl Accept {
    pub(crate) fn new(
        saga_timeout: Duration,
        order_id: OrderId,
        order: &NewOrder,
        context: &RequestContext,
        key: KeyUse,
    ) -> Accept {
        let correlation_id = context.correlation_id.clone();
        let deadline_at = time::OffsetDateTime::now_utc() + saga_timeout;
        let event = Envelope::first(
            order_id,
            correlation_id.clone(),
            Event::OrderCreated(OrderCreated {
                customer_id: order.customer_id.clone(),
                currency: order.currency.clone(),
                items: order.items.clone(),
                payment_method: order.payment_method.clone(),
                deadline_at,
            }),
        )
        .traced(Some(context.trace))
        .prioritized(order.priority);
        Accept {
            order_id,
            order: order.clone(),
            event,
            correlation_id,
            trace: context.trace,
            deadline_at_us: to_us(deadline_at),
            key,
        }
    }

    pub(crate) fn priority(&self) -> Priority {
        self.order.priority
    }

    /// Writes the order in `tx`, or nothing at all when its key turns out to be taken.
    pub(crate) async fn write(
        &self,
        tx: &mut Tx,
        versions: &PublishVersions,
    ) -> Result<Inserted, SqlError> {
        // The key first: a request with a key already stored writes nothing else, and on PostgreSQL
        // a concurrent one with the same key waits here for this transaction, not for a row further
        // on.
        let refused = match &self.key {
            KeyUse::None => None,
            KeyUse::New { key, request } => {
                let now = now_us();
                (!storage::store_new_idempotency_key(tx, key, request, self.order_id, now).await?)
                    .then_some(Inserted::KeyUsed)
            }
            KeyUse::Claimed(claim) => {
                (!storage::complete_idempotency_key(tx, &claim.key, &claim.token, self.order_id)
                    .await?)
                    .then_some(Inserted::ClaimLost)
            }
        };
        if let Some(refused) = refused {
            return Ok(refused);
        }
        storage::insert_order(
            tx,
            self.order_id,
            &self.order,
            &self.correlation_id,
            self.trace,
            self.deadline_at_us,
        )
        .await?;
        storage::record_timeline(tx, &[&self.event]);
        outbox::enqueue_as(tx, &self.event, versions);
        Ok(Inserted::Created)
    }
}

async fn insert_pending(
    state: &AppState,
    order_id: OrderId,
    order: &NewOrder,
    context: &RequestContext,
    key: KeyUse,
) -> Result<Inserted, Arc<SqlError>> {
    let inserted = state
        .accepts
        .write(Accept::new(
            state.saga_timeout,
            order_id,
            order,
            context,
            key,
        ))
        .await?;
    if inserted == Inserted::Created {
        state.outcomes.accepted();
    }
    Ok(inserted)
}

fn accepted(order_id: OrderId, correlation_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/orders/{order_id}"))],
        Json(AcceptedOrder {
            order_id: order_id.to_string(),
            status: "pending",
            correlation_id: correlation_id.to_owned(),
        }),
    )
        .into_response()
}

fn parse_order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|error| ApiError::BadRequest(format!("order id: {error}")))
}

/// Show an order: its lines, its status and, once decided, its total or why it was cancelled.
#[utoipa::path(get, path = "/orders/{order_id}", tag = "orders",
    params(("order_id" = OrderId, Path, description = "The id POST /orders answered with.")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_order(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = parse_order_id(&raw_id)?;
    platform::http::record_order_id(order_id);
    match storage::find_order(&state.db, order_id)
        .await
        .map_err(ApiError::database)?
    {
        Some((order, items)) => Ok(Json(OrderView::new(order, items)).into_response()),
        None => Err(ApiError::NotFound(format!("no order {order_id}"))),
    }
}

/// Show the events of an order's saga, oldest first: what happened to it, and when.
#[utoipa::path(get, path = "/orders/{order_id}/events", tag = "orders",
    params(("order_id" = OrderId, Path, description = "The id POST /orders answered with.")),
    responses(
        (status = 200, description = "The saga's events.", body = Vec<TimelineEntry>),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_timeline(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = parse_order_id(&raw_id)?;
    platform::http::record_order_id(order_id);
    if !storage::order_exists(&state.db, order_id)
        .await
        .map_err(ApiError::database)?
    {
        return Err(ApiError::NotFound(format!("no order {order_id}")));
    }
    let entries: Vec<TimelineEntry> = storage::timeline(&state.db, order_id)
        .await
        .map_err(ApiError::database)?
        .into_iter()
        .map(TimelineEntry::from)
        .collect();
    Ok(Json(entries).into_response())
}
