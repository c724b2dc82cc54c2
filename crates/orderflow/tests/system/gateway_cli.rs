//! `orderflow gateway` (run as the real binary, as an operator would) switches the gateway simulator's
//! faults, reads them back, and shows its counters.

use crate::harness::System;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::{Command, Output};
use testkit::free_port;

/// Runs `orderflow gateway ARGS --gateway-url URL` with the admin token in `ORDERFLOW_ADMIN_TOKEN`
/// (none: the variable unset, and no saved token where the command looks for one).
fn gateway_at(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .arg("gateway")
        .args(args)
        .args(["--gateway-url", url])
        .env_remove("ORDERFLOW_ADMIN_TOKEN")
        .env("ORDERFLOW_DATA_DIR", "/nonexistent");
    if let Some(token) = token {
        command.env("ORDERFLOW_ADMIN_TOKEN", token);
    }
    command.output().expect("run orderflow gateway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `orderflow gateway ARGS` against the system, asserts it succeeded, and returns its stdout.
fn gateway(system: &System, args: &[&str]) -> String {
    let output = gateway_at(&system.gateway_url, Some(&system.admin_token), args);
    assert!(
        output.status.success(),
        "orderflow gateway {args:?} failed ({}):\n{}{}",
        output.status,
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|_| panic!("not JSON:\n{stdout}"))
}

/// A charge straight to the simulator, as payment-service makes it; returns the status.
async fn charge(system: &System, key: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/v1/charges", system.gateway_url))
        .header("Idempotency-Key", key)
        .json(&json!({"amount_cents": 1299, "payment_method": "tok_visa", "order_id": key}))
        .send()
        .await
        .expect("POST /v1/charges")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderflow_gateway_switches_faults_and_shows_counters() {
    let Some(system) = System::start(testkit::Backend::Sqlite).await else {
        return;
    };
    assert_eq!(
        gateway(&system, &["faults"]).trim(),
        "gateway faults: mode=ok latency_ms=1000 error_rate=0.5"
    );

    assert_eq!(
        gateway(&system, &["faults", "down"]).trim(),
        "gateway faults: mode=down latency_ms=1000 error_rate=0.5"
    );
    let (status, settings) = system
        .admin_get_json(&format!("{}/admin/faults", system.gateway_url))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(settings["mode"], "down", "{settings}");
    assert_eq!(
        charge(&system, "cli-down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let set = json_of(&gateway(
        &system,
        &["faults", "flaky", "--error-rate", "0.2", "--json"],
    ));
    let expected = json!({"mode": "flaky", "latency_ms": 1000, "error_rate": 0.2});
    assert_eq!(set, expected);
    // Read back through the environment variable an operator would set instead of the flag.
    let shown = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["gateway", "faults", "--json"])
        .env("ORDERFLOW_GATEWAY_URL", &system.gateway_url)
        .env("ORDERFLOW_ADMIN_TOKEN", &system.admin_token)
        .output()
        .expect("run orderflow gateway");
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_eq!(json_of(&text(&shown.stdout)), expected);

    // The simulator refuses it; the settings stay as they were.
    let refused = gateway_at(
        &system.gateway_url,
        Some(&system.admin_token),
        &["faults", "flaky", "--error-rate", "2"],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("error_rate: must be a number from 0 to 1"),
        "{stderr}"
    );
    assert_eq!(json_of(&gateway(&system, &["faults", "--json"])), expected);

    assert_eq!(
        gateway(&system, &["faults", "ok"]).trim(),
        "gateway faults: mode=ok latency_ms=1000 error_rate=0.5"
    );
    assert_eq!(charge(&system, "cli-ok").await, StatusCode::OK);

    let stats = json_of(&gateway(&system, &["stats", "--json"]));
    let counter = |name: &str| {
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    assert!(counter("requests") >= 2, "{stats}");
    assert!(counter("unavailable") >= 1, "{stats}");
    assert_eq!((counter("delayed"), counter("hung")), (0, 0), "{stats}");
    let line = gateway(&system, &["stats"]);
    assert!(line.starts_with("gateway stats: requests="), "{line}");

    // Without the admin token, or with another, the simulator refuses and the command says what to
    // set; the faults stay as they were.
    for token in [None, Some("not-the-token-0123456789")] {
        let refused = gateway_at(&system.gateway_url, token, &["faults", "down"]);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
        let stderr = text(&refused.stderr);
        let status = if token.is_none() { "401" } else { "403" };
        assert!(
            stderr.contains(status) && stderr.contains("ORDERFLOW_ADMIN_TOKEN"),
            "{stderr}"
        );
    }
    assert_eq!(charge(&system, "cli-still-ok").await, StatusCode::OK);
}

#[test]
fn an_unreachable_gateway_is_named_with_what_to_do() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = gateway_at(&url, None, &["faults", "down"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the gateway simulator at {url}"))
            && stderr.contains("`orderflow up`")
            && stderr.contains("--gateway-url"),
        "{stderr}"
    );
}
