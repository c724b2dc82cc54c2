//! `orderflow logs`: the services' lines under `orderflow up`, merged into one time-ordered story.
//! Every service writes one JSON object per line to `<data-dir>/logs/<service>.log` (see
//! `platform::telemetry::FlatJson`), with the saga's `order_id`, `correlation_id` and `trace_id` at
//! the top level of each line about it, so one saga is a filter on one key across the files.

use crate::status::Colour;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How often `--follow` looks for new lines.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Print the services' log lines under `orderflow up`, merged in time order: all of them, or one saga's.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads <data-dir>/logs/*.log, the JSON lines each service writes under `orderflow up`.
Examples:
  orderflow logs --order 0193a5c0-...            every line about one order, from every service
  orderflow logs --since 10m --follow            the last ten minutes, then new lines as they come")]
pub struct Args {
    /// Folder where `orderflow up` keeps its data; the logs are in its logs/ folder.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./.orderflow")]
    pub data_dir: PathBuf,
    /// Only the lines about this order (its `order_id`).
    #[arg(long = "order", value_name = "ORDER_ID")]
    pub order_id: Option<String>,
    /// Only the lines of this saga (its `correlation_id`, as in X-Correlation-ID).
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Only lines from the last DURATION (e.g. 30s, 10m, 2h) or since a time (RFC 3339, e.g.
    /// 2026-12-06T03:00:00Z).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<OffsetDateTime>,
    /// Keep printing matching lines as the services write them, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Print the matching lines as they are (JSON), one per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_since(raw: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    let ago = platform::config::parse_duration(raw).map_err(|_| {
        format!("'{raw}' is neither a duration (30s, 10m, 2h) nor an RFC 3339 time")
    })?;
    Ok(OffsetDateTime::now_utc() - ago)
}

/// Which lines to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub order_id: Option<String>,
    pub correlation_id: Option<String>,
    pub since: Option<OffsetDateTime>,
}

impl Filter {
    pub fn from_args(args: &Args) -> Self {
        Self {
            order_id: args.order_id.clone(),
            correlation_id: args.correlation_id.clone(),
            since: args.since,
        }
    }

    pub fn matches(&self, line: &LogLine) -> bool {
        let field_is = |key: &str, wanted: &Option<String>| match wanted {
            None => true,
            Some(wanted) => line.fields.get(key).and_then(Value::as_str) == Some(wanted),
        };
        field_is("order_id", &self.order_id)
            && field_is("correlation_id", &self.correlation_id)
            && self
                .since
                .is_none_or(|since| line.time().is_some_and(|at| at >= since))
    }
}

/// One line a service wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// As written, for `--json`.
    pub raw: String,
    pub fields: Map<String, Value>,
}

impl LogLine {
    /// `None` for a line that is not one of ours (nats-server's own log, a panic message).
    pub fn parse(raw: &str) -> Option<LogLine> {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(raw) else {
            return None;
        };
        fields.get("timestamp")?.as_str()?;
        Some(LogLine {
            raw: raw.to_owned(),
            fields,
        })
    }

    fn text(&self, key: &str) -> &str {
        self.fields.get(key).and_then(Value::as_str).unwrap_or("")
    }

    pub fn timestamp(&self) -> &str {
        self.text("timestamp")
    }

    fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(self.timestamp(), &Rfc3339).ok()
    }

    /// `HH:MM:SS.mmm service LEVEL message key=value ...`, the service in its own colour.
    pub fn render(&self, colour: Colour) -> String {
        let clock = self
            .timestamp()
            .split_once('T')
            .map(|(_, time)| time.trim_end_matches('Z'))
            .unwrap_or_default();
        let clock: String = clock.chars().take(12).collect();
        let service = self.text("service");
        let level = self.text("level");
        let mut text = format!(
            "{clock} {} {} {}",
            colour.service(service, &format!("{service:<17}")),
            colour.level(level, &format!("{level:<5}")),
            self.text("message")
        );
        for (key, value) in &self.fields {
            if matches!(key.as_str(), "timestamp" | "level" | "service" | "message") {
                continue;
            }
            match value {
                Value::String(text_value) => text.push_str(&format!(" {key}={text_value}")),
                other => text.push_str(&format!(" {key}={other}")),
            }
        }
        text
    }
}

/// Reads the log files of a data dir from where it last stopped, so that `--follow` sees each line
/// once; a file that shrank (rotated, truncated) is read again from its start.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    offsets: Vec<(PathBuf, u64)>,
}

impl LogReader {
    /// Reads the `*.log` files in `dir` (`<data-dir>/logs` under `orderflow up`).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            offsets: Vec::new(),
        }
    }

    /// Whether there are logs to read at all.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Every complete line written since the last call, from every file, oldest first.
    pub fn read_new(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return lines;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        files.sort();
        for path in files {
            let offset = match self.offsets.iter_mut().find(|(known, _)| *known == path) {
                Some((_, offset)) => offset,
                None => {
                    self.offsets.push((path.clone(), 0));
                    &mut self.offsets.last_mut().expect("just pushed").1
                }
            };
            read_from(&path, offset, &mut lines);
        }
        // Stable: lines of one file with the same timestamp keep their order.
        lines.sort_by(|a, b| a.timestamp().cmp(b.timestamp()));
        lines
    }
}

/// Appends the complete lines of `path` after `offset` and moves `offset` past them.
fn read_from(path: &Path, offset: &mut u64, lines: &mut Vec<LogLine>) {
    let Ok(mut file) = File::open(path) else {
        return;
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
    }
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut reader = BufReader::new(file);
    let mut raw = String::new();
    loop {
        raw.clear();
        match reader.read_line(&mut raw) {
            Ok(0) | Err(_) => break,
            // A line still being written: read it whole next time.
            Ok(_) if !raw.ends_with('\n') => break,
            Ok(read) => {
                *offset += read as u64;
                if let Some(line) = LogLine::parse(raw.trim_end()) {
                    lines.push(line);
                }
            }
        }
    }
}

impl Colour {
    /// Each service in a colour of its own, so the merged story reads by service at a glance.
    fn service(self, service: &str, text: &str) -> String {
        let code = match service {
            "order-service" => "36",
            "inventory-service" => "35",
            "payment-service" => "33",
            "gateway-sim" => "34",
            _ => "37",
        };
        self.paint(code, text)
    }

    fn level(self, level: &str, text: &str) -> String {
        match level {
            "ERROR" => self.paint("31;1", text),
            "WARN" => self.paint("33;1", text),
            "DEBUG" | "TRACE" => self.paint("2", text),
            _ => text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ORDER: &str = "01a24cfb-1cd8-77c3-af12-ae50eda80b2f";

    fn line(service: &str, at: &str, message: &str, order: Option<&str>) -> String {
        let mut value = serde_json::json!({
            "timestamp": at, "level": "INFO", "service": service, "message": message,
            "correlation_id": "corr-1",
        });
        if let Some(order) = order {
            value["order_id"] = order.into();
        }
        value.to_string()
    }

    fn write_logs(dir: &Path, files: &[(&str, Vec<String>)]) {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        for (name, lines) in files {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("logs").join(format!("{name}.log")))
                .unwrap();
            for line in lines {
                writeln!(file, "{line}").unwrap();
            }
        }
    }

    #[test]
    fn lines_of_every_service_merge_in_time_order_and_filter_by_order() {
        let dir = tempfile::tempdir().unwrap();
        write_logs(
            dir.path(),
            &[
                (
                    "order-service",
                    vec![
                        line(
                            "order-service",
                            "2026-12-06T03:00:00.000100Z",
                            "accepted",
                            Some(ORDER),
                        ),
                        line(
                            "order-service",
                            "2026-12-06T03:00:00.000900Z",
                            "order confirmed",
                            Some(ORDER),
                        ),
                    ],
                ),
                (
                    "payment-service",
                    vec![
                        line(
                            "payment-service",
                            "2026-12-06T03:00:00.000500Z",
                            "charged",
                            Some(ORDER),
                        ),
                        line(
                            "payment-service",
                            "2026-12-06T03:00:00.000600Z",
                            "another",
                            Some("other"),
                        ),
                    ],
                ),
                (
                    "nats-server",
                    vec!["[123] 2026/12/06 03:00:00 [INF] Server is ready".to_owned()],
                ),
            ],
        );
        let mut reader = LogReader::new(&dir.path().join("logs"));
        let filter = Filter {
            order_id: Some(ORDER.to_owned()),
            ..Filter::default()
        };
        let messages: Vec<String> = reader
            .read_new()
            .into_iter()
            .filter(|l| filter.matches(l))
            .map(|l| l.text("message").to_owned())
            .collect();
        assert_eq!(messages, ["accepted", "charged", "order confirmed"]);

        // Following: only what was written since.
        assert!(reader.read_new().is_empty());
        write_logs(
            dir.path(),
            &[(
                "inventory-service",
                vec![line(
                    "inventory-service",
                    "2026-12-06T03:00:01.000000Z",
                    "later",
                    Some(ORDER),
                )],
            )],
        );
        let later: Vec<LogLine> = reader.read_new();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].text("service"), "inventory-service");
    }

    #[test]
    fn correlation_and_since_narrow_the_lines() {
        let early = LogLine::parse(&line(
            "order-service",
            "2026-12-06T03:00:00.000000Z",
            "a",
            None,
        ))
        .unwrap();
        let late = LogLine::parse(&line(
            "order-service",
            "2026-12-06T04:00:00.000000Z",
            "b",
            None,
        ))
        .unwrap();
        let filter = Filter {
            correlation_id: Some("corr-1".to_owned()),
            since: Some(OffsetDateTime::parse("2026-12-06T03:30:00Z", &Rfc3339).unwrap()),
            ..Filter::default()
        };
        assert!(!filter.matches(&early));
        assert!(filter.matches(&late));
        let other = Filter {
            correlation_id: Some("corr-2".to_owned()),
            ..Filter::default()
        };
        assert!(!other.matches(&late));
    }

    #[test]
    fn a_line_reads_as_time_service_level_message_and_fields() {
        let parsed = LogLine::parse(&line(
            "payment-service",
            "2026-12-06T03:00:00.123456Z",
            "charged",
            Some(ORDER),
        ))
        .unwrap();
        assert_eq!(
            parsed.render(Colour::Off),
            format!(
                "03:00:00.123 payment-service   INFO  charged correlation_id=corr-1 order_id={ORDER}"
            )
        );
        assert!(parsed.render(Colour::On).contains("\x1b[33m"));
        assert_eq!(LogLine::parse("not json"), None);
        assert_eq!(LogLine::parse("{\"no\":\"timestamp\"}"), None);
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let ten_minutes_ago = parse_since("10m").unwrap();
        let age = OffsetDateTime::now_utc() - ten_minutes_ago;
        assert!(age >= time::Duration::minutes(10) && age < time::Duration::minutes(11));
        assert_eq!(
            parse_since("2026-12-06T03:00:00Z").unwrap(),
            OffsetDateTime::parse("2026-12-06T03:00:00Z", &Rfc3339).unwrap()
        );
        assert!(
            parse_since("yesterday")
                .unwrap_err()
                .contains("neither a duration")
        );
    }
}
