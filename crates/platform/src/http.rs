//! HTTP conventions shared by every service: one error type rendered as `application/problem+json`,
//! a JSON body extractor with precise 400/413/415 answers, the correlation-id layer, health endpoints,
//! per-route metrics, the service's OpenAPI document at `/openapi.json`, and a server that stops on
//! the shared shutdown signal.

use crate::access::{AdminAccess, AdminToken, ClientRateLimit};
use crate::consumer::HandledEvent;
use crate::db::{SqlError, is_infrastructure};
use crate::health::{self, Health, HealthReport, ServiceStatus};
use crate::nats::ConsumerBacklog;
use crate::outbox::OutboxBacklog;
use crate::telemetry::error_chain;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contracts::trace::TRACEPARENT_HEADER;
use contracts::{CorrelationId, OrderId, TraceContext};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use utoipa::openapi::OpenApi as Document;
use utoipa::{OpenApi, ToSchema};

/// Request bodies above this size are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// A path into the body, such as `items[0].quantity`.
    pub field: String,
    /// What is wrong with it and what is accepted.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every error an HTTP handler can return. Mapped to a status and a problem document here and nowhere
/// else; internal causes are logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("too many requests from this client; retry after the time Retry-After gives")]
    RateLimited { retry_after: Duration },
    /// Work refused because it could not be done in time now (admission control); nothing changed.
    #[error("{detail}")]
    Overloaded {
        detail: String,
        retry_after: Duration,
    },
    #[error("the request was not received and answered within {}; send it again", crate::config::format_duration(*.0))]
    RequestTimeout(Duration),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(error))
    }

    /// A failed database call: 503 (retry later) while the database is unavailable, 500 otherwise.
    /// Shared (`Arc`) when one failed transaction answers several requests.
    pub fn database(error: impl Into<Arc<SqlError>>) -> Self {
        let error = error.into();
        if is_infrastructure(&error) {
            tracing::warn!(error = %error_chain(&error), "database unavailable; request refused with 503");
            ApiError::Unavailable(
                "the service's database is unavailable; retry shortly (the same Idempotency-Key \
                 keeps a retried order from being placed twice)"
                    .into(),
            )
        } else {
            ApiError::internal(error)
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) | ApiError::Validation(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "urn:orderflow:problem:bad-request",
            ApiError::Unauthorized(_) => "urn:orderflow:problem:unauthorized",
            ApiError::Forbidden(_) => "urn:orderflow:problem:forbidden",
            ApiError::NotFound(_) => "urn:orderflow:problem:not-found",
            ApiError::Conflict(_) => "urn:orderflow:problem:conflict",
            ApiError::Unprocessable(_) => "urn:orderflow:problem:unprocessable",
            ApiError::Validation(_) => "urn:orderflow:problem:validation",
            ApiError::UnsupportedMediaType => "urn:orderflow:problem:unsupported-media-type",
            ApiError::PayloadTooLarge => "urn:orderflow:problem:payload-too-large",
            ApiError::Unavailable(_) => "urn:orderflow:problem:unavailable",
            ApiError::RateLimited { .. } => "urn:orderflow:problem:rate-limited",
            ApiError::Overloaded { .. } => "urn:orderflow:problem:overloaded",
            ApiError::RequestTimeout(_) => "urn:orderflow:problem:request-timeout",
            ApiError::Internal(_) => "urn:orderflow:problem:internal",
        }
    }
}

/// An error, as RFC 9457 describes it (`application/problem+json`).
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    /// What kind of problem: `urn:orderflow:problem:<kind>`.
    #[serde(rename = "type")]
    problem_type: &'a str,
    /// The HTTP status's reason phrase.
    title: &'a str,
    status: u16,
    /// What went wrong, for a person.
    detail: String,
    /// Every invalid field, when the request had any (`urn:orderflow:problem:validation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %error_chain(cause.as_ref()), "request failed");
        }
        let detail = match &self {
            ApiError::Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Internal(_) => "an internal error occurred; it has been logged".into(),
            other => other.to_string(),
        };
        let problem = Problem {
            problem_type: self.problem_type(),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            errors: match &self {
                ApiError::Validation(errors) => Some(errors),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Whole seconds, rounded up: a client that waits that long is let in.
            ApiError::RateLimited { retry_after } | ApiError::Overloaded { retry_after, .. } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            // The rest of a body that did not arrive in time is not worth waiting for.
            ApiError::RequestTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON request body as a raw value: services turn it into domain types themselves so that every
/// invalid field is reported at once. Refuses non-JSON content types (415), oversized bodies (413)
/// and malformed JSON (400).
#[derive(Debug)]
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::BadRequest(format!("the body is not valid JSON: {error}")))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Who the current request belongs to, for the events it makes.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller's `X-Correlation-ID`, or a new UUID. The same rules apply to it here and when a
    /// consumer decodes an event ([`CorrelationId::parse`]).
    pub correlation_id: CorrelationId,
    /// The request's span: a child of the caller's `traceparent`, or the root of a new trace (also
    /// when the caller's is malformed: tracing never fails a request).
    pub trace: TraceContext,
}

/// Names the order a request is about on its span, so that every line logged while handling it
/// carries `order_id` (`orderflow logs --order` finds them).
pub fn record_order_id(order_id: OrderId) {
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
}

/// The methods the HTTP metrics name; any other is labelled `other`.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The `method` label of the HTTP metrics. A client may send any token as a method (`FOO`, `get`,
/// one per request): labelled as sent, each would add series to every scrape for as long as the
/// process runs.
fn method_label(method: &Method) -> &'static str {
    STANDARD_METHODS
        .into_iter()
        .find(|standard| *standard == method.as_str())
        .unwrap_or("other")
}

/// Adopts or creates the correlation id and the trace, runs the request inside a span carrying them,
/// echoes the correlation id in the response and records per-route metrics (labelled by the matched
/// route, never the raw path, and by the method when it is a standard one).
async fn correlate_and_measure(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let supplied = request
        .headers()
        .get(CORRELATION_ID_HEADER)
        .map(|v| CorrelationId::parse(v.to_str().unwrap_or("")));
    let correlation_id = match supplied {
        Some(Ok(id)) => id,
        Some(Err(_)) => {
            return ApiError::BadRequest(format!(
                "X-Correlation-ID must be 1 to {} visible ASCII characters",
                CorrelationId::MAX_LEN
            ))
            .into_response();
        }
        None => CorrelationId::new(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // The log line may say what the client sent; the metrics keep a bounded set of labels.
    let method = request.method().to_string();
    let method_label = method_label(request.method());
    let caller = request
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|value| TraceContext::parse(value.to_str().ok()?).ok());
    let span = tracing::info_span!("request", %method, %route, correlation_id = %correlation_id,
        order_id = tracing::field::Empty, trace_id = tracing::field::Empty, span_id = tracing::field::Empty,
        parent_span_id = caller.map(|parent| tracing::field::display(parent.span_id)));
    let trace = crate::telemetry::join_trace(&span, caller);
    span.record("trace_id", tracing::field::display(trace.trace_id));
    span.record("span_id", tracing::field::display(trace.span_id));
    request.extensions_mut().insert(RequestContext {
        correlation_id: correlation_id.clone(),
        trace,
    });
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(correlation_id.as_str()) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, value);
    }
    let status = response.status().as_u16().to_string();
    metrics::histogram!("orderflow_http_request_duration_seconds",
        "method" => method_label, "route" => route.clone(), "status" => status.clone())
    .record(started.elapsed().as_secs_f64());
    metrics::counter!("orderflow_http_requests_total",
        "method" => method_label, "route" => route, "status" => status)
    .increment(1);
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// A service's OpenAPI document, rendered once: it never changes while the process runs.
#[derive(Clone)]
struct RenderedDocument(Bytes);

/// This document itself.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The service's OpenAPI 3.1 document.", body = Object)))]
async fn openapi_document(
    axum::Extension(RenderedDocument(document)): axum::Extension<RenderedDocument>,
) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}

/// The routes every service has, and the error document every route may answer with.
#[derive(OpenApi)]
#[openapi(
    paths(health::live, health::ready, health::status, health::handled, health::render_metrics, openapi_document),
    components(schemas(Problem, FieldError, HealthReport, ServiceStatus, OutboxBacklog, ConsumerBacklog, HandledEvent)),
    tags((name = "operations", description = "Health, status, metrics and this document: the same on every service."))
)]
struct CommonApi;

/// Marks the named schemas of `document` as refusing fields they do not name
/// (`additionalProperties: false`): request bodies parsed by hand, whose types have no serde
/// attribute to say so.
pub fn refuse_unknown_fields(document: &mut Document, schemas: &[&str]) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    let Some(components) = document.components.as_mut() else {
        return;
    };
    for name in schemas {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// A service's whole OpenAPI document: its own routes (`routes`, from its `#[derive(OpenApi)]`) with
/// the common ones, under its name.
pub fn api_document(service: &str, description: &str, mut routes: Document) -> Document {
    add_answer(
        &mut routes,
        StatusCode::TOO_MANY_REQUESTS,
        "This client is over its rate limit (ORDERFLOW_RATE_LIMIT); nothing changed. Retry after \
         the seconds Retry-After gives.",
    );
    let mut document = CommonApi::openapi();
    document.merge(routes);
    add_answer(
        &mut document,
        StatusCode::REQUEST_TIMEOUT,
        "The request, its body included, did not arrive and get its answer within \
         ORDERFLOW_HTTP_REQUEST_TIMEOUT; the connection is closed.",
    );
    document.info = utoipa::openapi::InfoBuilder::new()
        .title(service)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .license(Some(
            utoipa::openapi::LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    document
}

/// Adds a problem-document answer with `status` to every operation of `document`: answers the server
/// gives before any handler runs.
fn add_answer(document: &mut Document, status: StatusCode, description: &str) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let answer = ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry(status.as_u16().to_string())
                .or_insert_with(|| RefOr::T(answer.clone()));
        }
    }
}

/// What a server enforces on every request before its handler runs.
#[derive(Debug, Clone)]
pub struct EdgePolicy {
    /// The token its admin operations ([`crate::access::Admin`]) require.
    pub admin: Option<AdminToken>,
    /// The per-client limit of the service's own routes (never of health, metrics and status,
    /// which probes and scrapers call).
    pub per_client: Option<ClientRateLimit>,
    /// How long a request may take, its body included: 408 after that.
    pub request_timeout: Duration,
}

impl Default for EdgePolicy {
    /// No admin operations, no rate limit, the default request timeout.
    fn default() -> Self {
        EdgePolicy {
            admin: None,
            per_client: None,
            request_timeout: crate::server::ServerArgs::default().http_request_timeout,
        }
    }
}

/// Wraps a service's routes with health, metrics, its OpenAPI `document`, the correlation layer, the
/// body limit and the `edge` policy.
pub fn with_common_routes(
    routes: Router,
    health: Health,
    document: &Document,
    edge: &EdgePolicy,
) -> Router {
    let rendered = RenderedDocument(Bytes::from(
        serde_json::to_vec(document).unwrap_or_default(),
    ));
    let routes = match &edge.per_client {
        Some(limit) => routes.layer(middleware::from_fn_with_state(
            limit.clone(),
            crate::access::limit_per_client,
        )),
        None => routes,
    };
    let common = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/status", get(health::status))
        .route("/inbox", get(health::handled))
        .route("/metrics", get(health::render_metrics))
        .route("/openapi.json", get(openapi_document))
        .layer(axum::Extension(rendered))
        .with_state(health);
    routes
        .merge(common)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::Extension(AdminAccess(edge.admin.clone())))
        .layer(middleware::from_fn_with_state(
            edge.request_timeout,
            time_limit,
        ))
        .layer(middleware::from_fn(correlate_and_measure))
}

/// Ends a request that takes longer than `limit` (a client trickling its body, say) with 408.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "request not done in time; answered 408"
            );
            ApiError::RequestTimeout(limit).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn extract(content_type: &str, bytes: Vec<u8>) -> Result<JsonBody, ApiError> {
        let request = Request::builder()
            .method("POST")
            .uri("/orders")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(bytes))
            .unwrap_or_default();
        JsonBody::from_request(request, &()).await
    }

    #[tokio::test]
    async fn a_json_body_is_refused_precisely() {
        assert!(
            extract("application/json", b"{\"a\": 1}".to_vec())
                .await
                .is_ok()
        );
        assert!(matches!(
            extract("text/plain", b"{}".to_vec()).await,
            Err(ApiError::UnsupportedMediaType)
        ));
        assert!(matches!(
            extract("application/json", b"{nope".to_vec()).await,
            Err(ApiError::BadRequest(_))
        ));
    }

    /// The request counter's lines after `methods` were sent to a route that takes any method.
    fn requests_counted(methods: &[&str]) -> Vec<String> {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let router = Router::new()
            .route("/orders", axum::routing::any(|| async { "ok" }))
            .layer(middleware::from_fn(correlate_and_measure));
        // A local recorder is per thread: the requests run on this one.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                for method in methods {
                    let request = Request::builder()
                        .method(*method)
                        .uri("/orders")
                        .body(Body::empty())
                        .unwrap();
                    let response = tower::ServiceExt::oneshot(router.clone(), request)
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK, "{method}");
                }
            })
        });
        handle
            .render()
            .lines()
            .filter(|line| line.starts_with("orderflow_http_requests_total{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_made_up_method_is_counted_as_other() {
        let lines = requests_counted(&["GET", "FOO", "BAR", "get", "POST", "PATCH"]);
        let line = |method: &str, count: u32| {
            format!(
                r#"orderflow_http_requests_total{{method="{method}",route="/orders",status="200"}} {count}"#
            )
        };
        for expected in [
            line("GET", 1),
            line("POST", 1),
            line("PATCH", 1),
            line("other", 3),
        ] {
            assert!(lines.contains(&expected), "{expected} in {lines:#?}");
        }
        assert_eq!(lines.len(), 4, "no series but these: {lines:#?}");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_json_value_or_a_400(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1024),
            content_type in proptest::sample::select(vec!["application/json", "application/problem+json", "text/plain", "application/json; charset=utf-8", "\u{1}"]),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            match runtime.block_on(extract(content_type, bytes)) {
                Ok(_) | Err(ApiError::BadRequest(_) | ApiError::UnsupportedMediaType) => {}
                Err(other) => proptest::prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
