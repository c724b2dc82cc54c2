//! Logs, metrics and traces. Logs are JSON lines (one object per line, see [`FlatJson`]), readable text
//! on a terminal; metrics go to a Prometheus recorder whose text the `/metrics` endpoint renders; the
//! spans of a saga are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and every one of
//! them starts in [`join_trace`].

use contracts::TraceContext;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: for machines (log shippers, `orderflow logs`, tests).
    Json,
    /// Human-readable lines: for a terminal.
    Pretty,
    /// Pretty when stdout is a terminal, JSON otherwise (a container, a file, a pipe).
    Auto,
}

impl LogFormat {
    /// What `Auto` means for a process whose stdout is (or is not) a terminal: a person reads a
    /// terminal, a machine reads anything else. Kept apart from the check of stdout so it can be tested.
    fn resolve(self, stdout_is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if stdout_is_terminal => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            chosen => chosen,
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "auto" => Ok(LogFormat::Auto),
            other => Err(format!(
                "log format must be auto, json or pretty, not '{other}'"
            )),
        }
    }
}

/// What `init` installed. Keep it until the process ends: dropping it flushes the spans not yet
/// exported.
pub struct Telemetry {
    pub metrics: PrometheusHandle,
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("could not export the last spans: {error}");
        }
    }
}

/// The spans exported over OTLP: one per request, per event handled, per payment step and per
/// deadline cancellation. A service's long-lived task spans and the saga's log-only span are not
/// spans of a saga.
const EXPORTED_SPANS: [&str; 4] = ["request", "event", "payment", "deadline"];

/// Whether OTLP export is on in this process (set once by `init`).
static EXPORTING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs the global log subscriber (level from `RUST_LOG`, default `info`), span export over OTLP
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables configure it), and the
/// Prometheus recorder. Call once, first thing; `service` names the process on every JSON line and
/// every exported span.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = otlp_provider(service);
    let _ = EXPORTING.set(traces.is_some());
    let export = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(filter_fn(|metadata| {
                !metadata.is_span() || EXPORTED_SPANS.contains(&metadata.name())
            }))
    });
    let lines = match format.resolve(std::io::stdout().is_terminal()) {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stdout)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .fmt_fields(SpanJson)
            .event_format(FlatJson { service })
            .with_writer(std::io::stdout)
            .boxed(),
    };
    // A second init in one process (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(export)
        .with(filter)
        .try_init();
    Telemetry {
        metrics: install_metrics(),
        traces,
    }
}

fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            // Before the subscriber exists: straight to stderr. The service runs without export.
            eprintln!(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set, but no OTLP exporter could be built: {error}"
            );
            return None;
        }
    };
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    )
}

/// Makes `span` a span of the trace `parent` belongs to (a remote span: the publisher of a message,
/// the caller of a request, what a stored row says; `None` starts a trace) and returns its own place
/// in it, to record in its fields and to send on in the `traceparent` of what it causes. With OTLP
/// export on, these are the exported span's own ids, so parent links hold across services in the
/// tracing backend; without it, a new span id under `parent`.
pub fn join_trace(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if EXPORTING.get().copied().unwrap_or(false) {
        if let Some(parent) = parent {
            let remote = SpanContext::new(
                TraceId::from_bytes(parent.trace_id_bytes()),
                SpanId::from_bytes(parent.span_id_bytes()),
                if parent.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        if let Some(joined) = TraceContext::from_ids(
            u128::from_be_bytes(own.trace_id().to_bytes()),
            u64::from_be_bytes(own.span_id().to_bytes()),
            own.is_sampled(),
        ) {
            return joined;
        }
    }
    match parent {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    }
}

/// The JSON line of one event: `timestamp`, `level`, `service` and `message` first, then the fields
/// of every span it happened in (outermost first, an inner span's value winning) and its own, all at
/// the top level. A request's or an event's span puts `correlation_id`, `order_id`, `event_id`,
/// `subject` and `trace_id` on each of its lines without nesting, so `jq 'select(.order_id == ...)'`
/// and `orderflow logs --order` find every line of a saga by one key.
#[derive(Debug, Clone, Copy)]
pub struct FlatJson {
    pub service: &'static str,
}

impl<S> FormatEvent<S, SpanJson> for FlatJson
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanJson>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // SpanJson keeps each span's fields as the text of a JSON object.
                if let Some(recorded) = extensions.get::<FormattedFields<SpanJson>>()
                    && let Ok(Value::Object(span_fields)) =
                        serde_json::from_str::<Value>(recorded.as_str())
                {
                    fields.extend(span_fields);
                }
            }
        }
        let mut visitor = JsonVisitor(&mut fields);
        event.record(&mut visitor);
        let message = fields.remove("message").unwrap_or(Value::Null);
        // Written once, first: a span naming its service says what the line already says.
        for head in ["timestamp", "level", "service"] {
            fields.remove(head);
        }
        let timestamp = time::OffsetDateTime::now_utc()
            .format(LOG_TIMESTAMP)
            .unwrap_or_default();
        // Written by hand around serde's values so the four come first, in this order.
        write!(
            writer,
            "{{\"timestamp\":{},\"level\":{},\"service\":{},\"message\":{}",
            Value::from(timestamp),
            Value::from(event.metadata().level().as_str()),
            Value::from(self.service),
            message
        )?;
        for (key, value) in &fields {
            write!(writer, ",{}:{value}", Value::from(key.as_str()))?;
        }
        writeln!(writer, "}}")
    }
}

/// RFC 3339 in UTC with microseconds, always as wide: lines from several services sort by it as text.
const LOG_TIMESTAMP: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// A span's fields as the text of one JSON object, written as the span is created and read back only
/// when a line is logged inside it (rarely, at the default level): numbers and booleans as such,
/// everything else as text, like an event's ([`JsonVisitor`]). Written straight into the text,
/// because every request and every event opens spans: tracing-subscriber's `JsonFields` built a
/// map of JSON values for each and then serialized it, 5.6 % of order-service's CPU at 1,800
/// orders/s.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanJson;

impl<'writer> FormatFields<'writer> for SpanJson {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut object = JsonObject::reopen(String::new());
        fields.record(&mut object);
        writer.write_str(&object.close()?)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut object = JsonObject::reopen(std::mem::take(&mut current.fields));
        fields.record(&mut object);
        current.fields = object.close()?;
        Ok(())
    }
}

/// The text of a JSON object being written, without its closing brace until [`JsonObject::close`].
struct JsonObject {
    text: Vec<u8>,
    empty: bool,
    failed: bool,
}

impl JsonObject {
    /// Continues `text`, an object written before (or nothing, for a new one).
    fn reopen(text: String) -> JsonObject {
        let mut text = text.into_bytes();
        if text.last() == Some(&b'}') {
            text.pop();
        }
        if text.is_empty() {
            text.push(b'{');
        }
        let empty = text == b"{";
        JsonObject {
            text,
            empty,
            failed: false,
        }
    }

    fn put(&mut self, field: &Field, value: &(impl serde::Serialize + ?Sized)) {
        if !self.empty {
            self.text.push(b',');
        }
        self.empty = false;
        let written = serde_json::to_writer(&mut self.text, field.name()).and_then(|()| {
            self.text.push(b':');
            serde_json::to_writer(&mut self.text, value)
        });
        self.failed |= written.is_err();
    }

    fn close(mut self) -> Result<String, fmt::Error> {
        self.text.push(b'}');
        if self.failed {
            return Err(fmt::Error);
        }
        String::from_utf8(self.text).map_err(|_| fmt::Error)
    }
}

impl Visit for JsonObject {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

/// An event's fields as JSON values: numbers and booleans as such, everything else as text.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

fn install_metrics() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        // A saga may last as long as its timeout (30 s by default, up to a day): the alert on its
        // p99 needs buckets beyond it. A full name wins over the suffix.
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("orderflow_saga_duration_seconds".into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 900.0, 3600.0,
                ],
            )
        })
        .unwrap_or_else(|_| PrometheusBuilder::new());
    match builder.install_recorder() {
        Ok(handle) => handle,
        // Only one global recorder per process: a second call gets a detached one (tests only).
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    }
}

/// An error with all of its causes, for one log line. A cause whose text the line already ends with
/// is left out: some errors (sqlx's, I/O errors) print their source's message as their own.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Text from outside (a message, a row) made safe for a log line or a header: control characters
/// escaped (`\n`, `\u{7}`), and cut to `max_bytes` at a character boundary, with `...` marking the
/// cut.
pub fn printable(raw: &str, max_bytes: usize) -> String {
    let room = max_bytes.saturating_sub(3);
    // The usual case, text that needs neither (every header the relay publishes): copied as it is.
    if raw.len() <= room && !raw.chars().any(char::is_control) {
        return raw.to_owned();
    }
    let mut safe = String::with_capacity(raw.len().min(max_bytes));
    for c in raw.chars() {
        let width = if c.is_control() {
            c.escape_default().len()
        } else {
            c.len_utf8()
        };
        if safe.len() + width > room {
            safe.push_str("...");
            break;
        }
        if c.is_control() {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// The log of a task that keeps retrying while something it needs is down (the database, NATS): a
/// warning when the outage starts, debug lines while it lasts, and one line when the task works again,
/// saying how long it was down. At 3 AM that reads as "down at 03:02, back at 03:04", not as a
/// thousand identical warnings.
#[derive(Debug)]
pub struct OutageLog {
    /// What fails, for the log lines: "outbox relay", "charge worker", ...
    task: &'static str,
    /// What failing means for the system, said once when it starts.
    meaning: &'static str,
    failures: u32,
    since: Option<Instant>,
}

impl OutageLog {
    pub fn new(task: &'static str, meaning: &'static str) -> Self {
        Self {
            task,
            meaning,
            failures: 0,
            since: None,
        }
    }

    /// Failed attempts in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failed attempt that will be retried after `retry_in`.
    pub fn failed(&mut self, error: &(dyn std::error::Error + 'static), retry_in: Duration) {
        self.failures = self.failures.saturating_add(1);
        let retry_in_ms = retry_in.as_millis() as u64;
        if self.failures == 1 {
            self.since = Some(Instant::now());
            tracing::warn!(task = self.task, error = %error_chain(error), retry_in_ms,
                "{} failing: {}; retrying until it works", self.task, self.meaning);
        } else {
            tracing::debug!(task = self.task, error = %error_chain(error), retry_in_ms,
                failed_attempts = self.failures, "{} still failing", self.task);
        }
    }

    /// Records a successful attempt; logs the recovery if it ends an outage.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                task = self.task,
                failed_attempts = self.failures,
                outage_ms = since.elapsed().as_millis() as u64,
                "{} working again",
                self.task
            );
        }
        self.failures = 0;
    }
}

/// How many things of each kind happened in the last minute (orders accepted, confirmed, cancelled),
/// for `/status`: a counter answers "how many ever", this answers "what is happening now" without a
/// Prometheus to take the rate. One bucket per second, the oldest dropped as time moves on; shared by
/// the tasks of one process.
#[derive(Debug, Clone, Default)]
pub struct LastMinute {
    buckets: Arc<Mutex<VecDeque<Bucket>>>,
}

/// The counts of one second (since the Unix epoch), by kind.
type Bucket = (u64, BTreeMap<&'static str, u64>);

impl LastMinute {
    const SECONDS: u64 = 60;

    /// Counts one `kind` now.
    pub fn add(&self, kind: &'static str) {
        self.add_at(kind, unix_seconds());
    }

    /// The counts of the last minute, by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts_at(unix_seconds())
    }

    fn add_at(&self, kind: &'static str, second: u64) {
        let mut buckets = self.lock();
        match buckets.back_mut() {
            Some((last, counts)) if *last == second => *counts.entry(kind).or_default() += 1,
            _ => buckets.push_back((second, BTreeMap::from([(kind, 1)]))),
        }
        while buckets
            .front()
            .is_some_and(|(first, _)| *first + Self::SECONDS <= second)
        {
            buckets.pop_front();
        }
    }

    fn counts_at(&self, second: u64) -> BTreeMap<&'static str, u64> {
        let mut total = BTreeMap::new();
        for (at, counts) in self.lock().iter() {
            if *at + Self::SECONDS > second {
                for (kind, n) in counts {
                    *total.entry(*kind).or_default() += n;
                }
            }
        }
        total
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Bucket>> {
        // Plain counts stay fit to read after a panic elsewhere.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line logged inside spans carries their fields, typed, including one recorded after the span
    /// was opened and text that needs escaping.
    #[test]
    fn a_line_carries_the_fields_of_its_spans() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(SpanJson)
                .event_format(FlatJson { service: "test" })
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer", order_id = "o-1", attempt = 2_u64);
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", quoted = %"say \"hi\"\n", ok = true,
                trace_id = tracing::field::Empty);
            inner.record("trace_id", "t-9");
            let _inner = inner.enter();
            tracing::info!(cents = -5_i64, "charged");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "charged");
        assert_eq!(line["service"], "test");
        assert_eq!(line["order_id"], "o-1");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["quoted"], "say \"hi\"\n");
        assert_eq!(line["ok"], true);
        assert_eq!(line["trace_id"], "t-9");
        assert_eq!(line["cents"], -5);
    }

    #[test]
    fn printable_text_escapes_control_characters_and_is_cut_at_a_character_boundary() {
        assert_eq!(printable("plain", 64), "plain");
        assert_eq!(printable("a\nb\u{7}", 64), "a\\nb\\u{7}");
        // Cut with "..." so the whole fits in 10 bytes; an escape is never split.
        assert_eq!(printable("0123456789abc", 10), "0123456...");
        assert_eq!(printable("012345\n7", 10), "012345...");
        // Exactly as long as the room left for the text: kept; one byte more: cut.
        assert_eq!(printable("0123456", 10), "0123456");
        assert_eq!(printable("01234567", 10), "0123456...");
        // "é" is two bytes: not split.
        assert_eq!(printable("012345é", 10), "012345...");
        assert_eq!(printable("01234é", 10), "01234é");
    }

    #[test]
    fn the_last_minute_forgets_what_is_older() {
        let recent = LastMinute::default();
        recent.add_at("confirmed", 1_000);
        recent.add_at("confirmed", 1_000);
        recent.add_at("cancelled", 1_030);
        assert_eq!(
            recent.counts_at(1_059),
            BTreeMap::from([("cancelled", 1), ("confirmed", 2)])
        );
        assert_eq!(recent.counts_at(1_060), BTreeMap::from([("cancelled", 1)]));
        recent.add_at("confirmed", 1_100);
        assert_eq!(recent.counts_at(1_100), BTreeMap::from([("confirmed", 1)]));
        assert_eq!(recent.lock().len(), 1, "old buckets are dropped");
    }

    #[test]
    fn auto_logs_pretty_on_a_terminal_and_json_anywhere_else() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Pretty);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        // A format asked for by name is kept, wherever stdout goes.
        for terminal in [true, false] {
            assert_eq!(LogFormat::Json.resolve(terminal), LogFormat::Json);
            assert_eq!(LogFormat::Pretty.resolve(terminal), LogFormat::Pretty);
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Failure {
        text: &'static str,
        #[source]
        cause: Option<Box<Failure>>,
    }

    fn failure(text: &'static str, cause: Option<Failure>) -> Failure {
        Failure {
            text,
            cause: cause.map(Box::new),
        }
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let refused = failure("connection refused", None);
        let io = failure(
            "error communicating with database: connection refused",
            Some(refused),
        );
        let top = failure("cannot connect to the database", Some(io));
        assert_eq!(
            error_chain(&top),
            "cannot connect to the database: error communicating with database: connection refused"
        );
        let plain = failure("a", Some(failure("b", Some(failure("c", None)))));
        assert_eq!(error_chain(&plain), "a: b: c");
    }
}
