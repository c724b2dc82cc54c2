//! Logs and metrics. Logs are JSON lines by default (one object per line with the fields of every
//! enclosing span, so `correlation_id` and `order_id` appear on each line of a saga); metrics go to a
//! Prometheus recorder whose text the `/metrics` endpoint renders.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: for machines (and for tests that search the logs).
    Json,
    /// Human-readable lines: for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            other => Err(format!("log format must be json or pretty, not '{other}'")),
        }
    }
}

/// Installs the global log subscriber (level from `RUST_LOG`, default `info`) and the Prometheus
/// recorder. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init in one process (tests) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    install_metrics()
}

fn install_metrics() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
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
    let mut safe = String::with_capacity(raw.len().min(max_bytes));
    for c in raw.chars() {
        let escaped: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if safe.len() + escaped.len() > max_bytes.saturating_sub(3) {
            safe.push_str("...");
            break;
        }
        safe.push_str(&escaped);
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

#[cfg(test)]
mod tests {
    use super::*;

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
