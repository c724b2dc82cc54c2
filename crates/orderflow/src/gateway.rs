//! `orderflow gateway`: the operator's switch for the gateway simulator's faults (`/admin/faults`) and a
//! look at its counters (`/admin/stats`), so a demo or a game day can break the payment gateway and watch
//! what orderflow does about it, without hand-written curl commands.

use crate::admin::{AdminArgs, WithAdmin};
use crate::demo::root_cause;
use crate::up::{DEFAULT_HTTP_PORT_BASE, Ports, http_client, local_url};
use anyhow::{Context as _, Result, anyhow, bail};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Switch the gateway simulator's faults and read its counters.
///
/// The simulator (run by `orderflow up`) can act like a real payment gateway in trouble; payment-service
/// then retries, backs off and opens its circuit breaker. Use `faults` to break it and to mend it, and
/// `stats` to see how many calls reached it and what happened to them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The --http-port-base that `orderflow up` runs with: the gateway simulator listens on +3.
    #[arg(long, global = true, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    http_port_base: u16,
    /// The gateway simulator's base URL; wins over --http-port-base.
    /// [default: http://127.0.0.1:<http-port-base + 3>]
    #[arg(long, global = true, env = "ORDERFLOW_GATEWAY_URL",
        value_parser = platform::config::HTTP_URL)]
    gateway_url: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the fault settings, or set them when MODE is given.
    ///
    /// Setting replaces every setting: a parameter left out takes its default, whatever was set before.
    /// The admin endpoints are never subject to the faults, so `orderflow gateway faults ok` always mends it.
    Faults {
        /// The fault to switch to; without it, the current settings are shown.
        #[arg(value_enum)]
        mode: Option<Mode>,
        /// The delay `slow` adds to every call, in milliseconds (0 to 600000). [default: 1000]
        #[arg(long, value_name = "N", requires = "mode")]
        latency_ms: Option<u64>,
        /// The share of the calls `flaky` fails, from 0 to 1. [default: 0.5]
        #[arg(long, value_name = "F", requires = "mode", value_parser = finite)]
        error_rate: Option<f64>,
        /// Print the settings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the gateway's calls met since it started.
    ///
    /// requests: every call to its API; unavailable: answered 503 by `down` or `flaky`; delayed: held by
    /// `slow`; hung: held by `hang`.
    Stats {
        /// Print the counters as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The gateway simulator's fault modes (its `FaultMode`), as the operator types them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// No fault: every call is handled normally.
    Ok,
    /// Every call answers 503 at once, like a gateway in an outage.
    Down,
    /// Every call is handled at once and answered after --latency-ms, like a gateway behind a
    /// congested network: a client that gives up first does not know the outcome.
    Slow,
    /// A share --error-rate of the calls answers 503, the others are handled.
    Flaky,
    /// No call is ever answered: only the caller's own timeout helps.
    Hang,
}

impl Mode {
    /// The name the operator types, which is also the simulator's name for the mode.
    fn name(self) -> String {
        use clap::ValueEnum;
        // Every variant has a name: ValueEnum derives one from each, lowercased.
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// A number JSON can carry: NaN and infinity would be sent as `null`, which the simulator reads as
/// "the default", silently.
fn finite(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(format!("`{raw}` is not a number")),
    }
}

impl Args {
    /// Whether the answer is wanted as JSON (`--json`).
    pub fn json(&self) -> bool {
        match self.action {
            Action::Faults { json, .. } | Action::Stats { json } => json,
        }
    }
}

/// `GET /admin/faults`, as this command shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    mode: String,
    latency_ms: u64,
    error_rate: f64,
}

impl Settings {
    fn describe(&self) -> String {
        format!(
            "gateway faults: mode={} latency_ms={} error_rate={}",
            self.mode, self.latency_ms, self.error_rate
        )
    }
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Stats {
    requests: u64,
    unavailable: u64,
    delayed: u64,
    hung: u64,
}

impl Stats {
    fn describe(&self) -> String {
        format!(
            "gateway stats: requests={} unavailable={} delayed={} hung={}",
            self.requests, self.unavailable, self.delayed, self.hung
        )
    }
}

/// What the simulator answered: its JSON as it sent it (what `--json` prints), and what that says.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Faults { json: Value, settings: Settings },
    Stats { json: Value, stats: Stats },
}

impl Answer {
    pub fn json(&self) -> &Value {
        match self {
            Answer::Faults { json, .. } | Answer::Stats { json, .. } => json,
        }
    }

    /// The answer as one line for a person.
    pub fn text_line(&self) -> String {
        match self {
            Answer::Faults { settings, .. } => settings.describe(),
            Answer::Stats { stats, .. } => stats.describe(),
        }
    }
}

/// Runs one `orderflow gateway` command; a failure says what to do about it.
pub async fn execute(args: Args) -> Result<Answer> {
    let gateway = Gateway {
        url: gateway_url(args.gateway_url.as_deref(), args.http_port_base)?,
        client: http_client()?,
        token: args.admin.token(),
    };
    match args.action {
        Action::Faults {
            mode,
            latency_ms,
            error_rate,
            ..
        } => {
            let answer = match mode {
                None => gateway.call("/admin/faults", None).await?,
                Some(mode) => {
                    let body = fault_request(mode, latency_ms, error_rate);
                    gateway.call("/admin/faults", Some(&body)).await?
                }
            };
            let settings = gateway.parse(&answer, "/admin/faults")?;
            Ok(Answer::Faults {
                json: answer,
                settings,
            })
        }
        Action::Stats { .. } => {
            let answer = gateway.call("/admin/stats", None).await?;
            let stats = gateway.parse(&answer, "/admin/stats")?;
            Ok(Answer::Stats {
                json: answer,
                stats,
            })
        }
    }
}

/// An explicit URL wins; otherwise the port layout of `orderflow up`.
fn gateway_url(explicit: Option<&str>, http_port_base: u16) -> Result<String> {
    match explicit {
        Some(url) => Ok(url.trim_end_matches('/').to_owned()),
        None => Ok(local_url(Ports::from_base(http_port_base)?.gateway)),
    }
}

/// The `POST /admin/faults` body: only what was given, so the simulator applies its own defaults.
fn fault_request(mode: Mode, latency_ms: Option<u64>, error_rate: Option<f64>) -> Value {
    let mut body = Map::new();
    body.insert("mode".into(), json!(mode.name()));
    if let Some(latency_ms) = latency_ms {
        body.insert("latency_ms".into(), json!(latency_ms));
    }
    if let Some(error_rate) = error_rate {
        body.insert("error_rate".into(), json!(error_rate));
    }
    Value::Object(body)
}

/// The gateway simulator's admin API.
struct Gateway {
    /// Without a trailing slash.
    url: String,
    client: reqwest::Client,
    /// The admin token: every route of the simulator's admin API needs it.
    token: Option<String>,
}

impl Gateway {
    /// One admin call, a POST of `body` or else a GET; its JSON answer, or an error an operator can act on.
    async fn call(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let (method, request) = match body {
            Some(body) => ("POST", self.client.post(&url).json(body)),
            None => ("GET", self.client.get(&url)),
        };
        let response = request
            .admin(self.token.as_deref())
            .send()
            .await
            .map_err(|error| {
                if error.is_connect() {
                    anyhow!(
                        "cannot reach the gateway simulator at {} ({}); is `orderflow up` running? \
                     For another system pass --gateway-url (or set ORDERFLOW_GATEWAY_URL)",
                        self.url,
                        root_cause(&error)
                    )
                } else if error.is_timeout() {
                    anyhow!(
                        "the gateway simulator at {} did not answer {method} {path} in time; \
                     is --gateway-url the gateway simulator?",
                        self.url
                    )
                } else {
                    anyhow!(
                        "{method} {url} failed ({}); is --gateway-url the gateway simulator?",
                        root_cause(&error)
                    )
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the answer to {method} {url}"))?;
        if !status.is_success() {
            bail!(
                "{}{}",
                refusal(method, &url, status, &bytes),
                crate::admin::refusal_hint(status)
            );
        }
        serde_json::from_slice(&bytes).map_err(|_| unexpected(&url))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, answer: &Value, path: &str) -> Result<T> {
        serde_json::from_value(answer.clone())
            .map_err(|_| unexpected(&format!("{}{path}", self.url)))
    }
}

fn unexpected(url: &str) -> anyhow::Error {
    anyhow!(
        "{url} did not answer like the gateway simulator; is --gateway-url the gateway simulator?"
    )
}

/// Why the simulator said no, for a person: a 422 lists each invalid field on its own line; other
/// problem documents give their detail; anything else, the start of the body.
fn refusal(method: &str, url: &str, status: StatusCode, body: &[u8]) -> String {
    let problem = serde_json::from_slice::<Value>(body).ok();
    let field_errors: Vec<String> = problem
        .as_ref()
        .and_then(|problem| problem.get("errors"))
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    let text = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("?");
                    format!("  {}: {}", text("field"), text("message"))
                })
                .collect()
        })
        .unwrap_or_default();
    if status == StatusCode::UNPROCESSABLE_ENTITY && !field_errors.is_empty() {
        return format!(
            "the gateway simulator refused these settings:\n{}",
            field_errors.join("\n")
        );
    }
    let detail = problem
        .as_ref()
        .and_then(|problem| problem.get("detail"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let hint = if status == StatusCode::NOT_FOUND {
        "; is --gateway-url the gateway simulator?"
    } else {
        ""
    };
    format!("{method} {url} answered {status}: {detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, ValueEnum};
    use gateway_sim::faults::{DEFAULT_ERROR_RATE, DEFAULT_LATENCY_MS, FaultMode};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("gateway").chain(line.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn every_mode_is_one_the_simulator_knows() {
        for mode in Mode::value_variants() {
            let parsed = FaultMode::parse(&mode.name()).map(|mode| mode.as_str());
            assert_eq!(parsed, Some(mode.name().as_str()));
        }
    }

    #[test]
    fn the_help_states_the_simulators_defaults() {
        let mut command = Cli::command();
        let faults = command
            .find_subcommand_mut("faults")
            .expect("faults subcommand");
        let help = faults.render_long_help().to_string();
        assert!(
            help.contains(&format!("[default: {DEFAULT_LATENCY_MS}]")),
            "{help}"
        );
        assert!(
            help.contains(&format!("[default: {DEFAULT_ERROR_RATE}]")),
            "{help}"
        );
        for mode in Mode::value_variants() {
            assert!(help.contains(&format!("{}:", mode.name())), "{help}");
        }
    }

    #[test]
    fn faults_without_a_mode_takes_no_parameters() {
        let args = parse(&["faults"]).expect("valid");
        assert!(matches!(args.action, Action::Faults { mode: None, .. }));
        assert!(parse(&["faults", "--latency-ms", "5"]).is_err());
        assert!(parse(&["faults", "--error-rate", "0.1"]).is_err());
        assert!(parse(&["faults", "broken"]).is_err());
        assert!(parse(&["faults", "flaky", "--error-rate", "NaN"]).is_err());
        assert!(parse(&["faults", "slow", "--latency-ms", "-1"]).is_err());
    }

    #[test]
    fn a_mode_and_its_parameters_parse() {
        let args = parse(&[
            "faults",
            "flaky",
            "--error-rate",
            "0.2",
            "--json",
            "--gateway-url",
            "http://gw:1/",
        ])
        .expect("valid");
        // The URL parser drops the trailing slash: paths are joined onto it.
        assert_eq!(args.gateway_url.as_deref(), Some("http://gw:1"));
        match args.action {
            Action::Faults {
                mode,
                latency_ms,
                error_rate,
                json,
            } => {
                assert_eq!(mode, Some(Mode::Flaky));
                assert_eq!(latency_ms, None);
                assert_eq!(error_rate, Some(0.2));
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        let args = parse(&["stats", "--http-port-base", "9080", "--json"]).expect("valid");
        assert_eq!(args.http_port_base, 9080);
        assert!(matches!(args.action, Action::Stats { json: true }));
    }

    #[test]
    fn the_gateway_is_at_port_base_plus_three_unless_named() {
        assert_eq!(
            gateway_url(None, 9080).expect("valid"),
            "http://127.0.0.1:9083"
        );
        assert_eq!(
            gateway_url(Some("http://gw:1/"), 9080).expect("valid"),
            "http://gw:1"
        );
        assert!(gateway_url(None, 65533).is_err());
    }

    #[test]
    fn only_given_parameters_are_sent() {
        assert_eq!(
            fault_request(Mode::Down, None, None),
            json!({"mode": "down"})
        );
        assert_eq!(
            fault_request(Mode::Slow, Some(250), Some(0.0)),
            json!({"mode": "slow", "latency_ms": 250, "error_rate": 0.0})
        );
    }

    fn gateway() -> Gateway {
        Gateway {
            url: "http://gw:1".into(),
            client: reqwest::Client::new(),
            token: None,
        }
    }

    #[test]
    fn settings_and_stats_read_as_one_line_and_json_as_sent() {
        let sent = json!({"mode": "slow", "latency_ms": 1000, "error_rate": 0.5, "since": "boot"});
        let answer = Answer::Faults {
            json: sent.clone(),
            settings: gateway().parse(&sent, "/admin/faults").expect("settings"),
        };
        assert_eq!(
            answer.text_line(),
            "gateway faults: mode=slow latency_ms=1000 error_rate=0.5"
        );
        // Fields this command does not know are still printed with --json.
        assert_eq!(answer.json(), &sent);
        let sent = json!({"requests": 12, "unavailable": 3, "delayed": 1, "hung": 0});
        let answer = Answer::Stats {
            json: sent.clone(),
            stats: gateway().parse(&sent, "/admin/stats").expect("stats"),
        };
        assert_eq!(
            answer.text_line(),
            "gateway stats: requests=12 unavailable=3 delayed=1 hung=0"
        );
        assert_eq!(answer.json(), &sent);
    }

    #[test]
    fn an_answer_of_another_shape_is_not_the_simulator() {
        let error = gateway()
            .parse::<Stats>(&json!({"status": "ok"}), "/admin/stats")
            .expect_err("not stats");
        assert_eq!(
            error.to_string(),
            "http://gw:1/admin/stats did not answer like the gateway simulator; \
             is --gateway-url the gateway simulator?"
        );
    }

    #[test]
    fn json_is_asked_for_by_either_action() {
        assert!(parse(&["faults", "--json"]).expect("valid").json());
        assert!(parse(&["stats", "--json"]).expect("valid").json());
        assert!(!parse(&["stats"]).expect("valid").json());
    }

    #[test]
    fn a_validation_problem_lists_each_field() {
        let body = json!({
            "type": "urn:orderflow:problem:validation",
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "error_rate: must be a number from 0 to 1; colour: is not a known field",
            "errors": [
                {"field": "error_rate", "message": "must be a number from 0 to 1"},
                {"field": "colour", "message": "is not a known field"},
            ],
        });
        assert_eq!(
            refusal(
                "POST",
                "http://gw/admin/faults",
                StatusCode::UNPROCESSABLE_ENTITY,
                body.to_string().as_bytes()
            ),
            "the gateway simulator refused these settings:\n  \
             error_rate: must be a number from 0 to 1\n  \
             colour: is not a known field"
        );
    }

    #[test]
    fn other_refusals_give_the_detail_or_the_body() {
        let problem = json!({"status": 400, "detail": "the request body must be JSON"});
        assert_eq!(
            refusal(
                "POST",
                "http://gw/admin/faults",
                StatusCode::BAD_REQUEST,
                problem.to_string().as_bytes()
            ),
            "POST http://gw/admin/faults answered 400 Bad Request: the request body must be JSON"
        );
        assert_eq!(
            refusal(
                "GET",
                "http://orders/admin/faults",
                StatusCode::NOT_FOUND,
                b"no such route"
            ),
            "GET http://orders/admin/faults answered 404 Not Found: no such route; \
             is --gateway-url the gateway simulator?"
        );
    }
}
