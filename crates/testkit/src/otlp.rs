//! An OTLP/HTTP trace receiver in the test process: the services export their spans to it exactly as
//! they would to an OpenTelemetry collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, protobuf over HTTP), and the
//! test reads what arrived.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One span as a service exported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The exporter's `service.name`.
    pub service: String,
    pub name: String,
    /// Lowercase hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's attributes (the tracing span's fields), as text.
    pub attributes: BTreeMap<String, String>,
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver, on a free port until dropped.
pub struct OtlpReceiver {
    endpoint: String,
    spans: Received,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("the receiver's address")
        );
        let spans = Received::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver {
            endpoint,
            spans,
            server,
        }
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(spans): State<Received>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| text(attribute.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|attribute| {
                            let value = text(attribute.value.as_ref()?.value.as_ref()?)?;
                            Some((attribute.key.clone(), value))
                        })
                        .collect(),
                });
            }
        }
    }
    spans
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .extend(received);
    StatusCode::OK
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(text) => Some(text.clone()),
        AnyValue::IntValue(n) => Some(n.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(x) => Some(x.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
