//! Configuration that cannot be honoured is refused before anything connects: exit code 2 and a
//! message naming the flag and what it accepts, for a flag and for its environment variable alike; and
//! no message shows a password from a URL.

use crate::harness::{shown, text};
use std::process::{Command, Output};
use testkit::free_port;

/// Runs `orderflow ARGS` with `envs`, without any ORDERFLOW_* variable of the developer's shell.
fn orderflow(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ORDERFLOW_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run orderflow")
}

fn assert_refused(args: &[&str], envs: &[(&str, &str)], expected: &[&str]) {
    let output = orderflow(args, envs);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?}: {}",
        shown(&output)
    );
    let stderr = text(&output.stderr);
    for part in expected {
        assert!(stderr.contains(part), "{args:?}: no {part:?} in:\n{stderr}");
    }
}

#[test]
fn values_that_cannot_work_exit_2_naming_the_flag_and_the_range() {
    assert_refused(
        &["inventory-service", "--ack-wait", "0s"],
        &[],
        &["--ack-wait", "from 100ms to 1h"],
    );
    assert_refused(
        &["inventory-service"],
        &[("ORDERFLOW_ACK_WAIT", "0s")],
        &["--ack-wait", "from 100ms to 1h"],
    );
    assert_refused(
        &["payment-service", "--max-deliver", "0"],
        &[],
        &["--max-deliver", "1..=1000"],
    );
    assert_refused(
        &["order-service", "--saga-timeout", "5s", "--ack-wait", "10s"],
        &[],
        &["--saga-timeout", "--ack-wait", "longer"],
    );
    assert_refused(
        &["order-service", "--inbox-retention", "1h"],
        &[],
        &["--inbox-retention", "at least 7d"],
    );
    assert_refused(
        &["order-service", "--idempotency-key-ttl", "10s"],
        &[],
        &["--idempotency-key-ttl", "from 1m"],
    );
    assert_refused(
        &["payment-service", "--gateway-url", "ftp://gateway"],
        &[],
        &["--gateway-url", "http(s) URL"],
    );
    assert_refused(
        &["order-service", "--nats-url", "http://127.0.0.1:4222"],
        &[],
        &["--nats-url", "NATS server URL"],
    );
    assert_refused(
        &["dlq", "list", "--nats-url", "nats://"],
        &[],
        &["--nats-url", "names no host"],
    );
    assert_refused(
        &["verify", "--order-db", "mysql://db/orders"],
        &[],
        &["--order-db", "sqlite:// or postgres://"],
    );
}

#[test]
fn no_message_shows_a_password() {
    let refused = orderflow(
        &[
            "order-service",
            "--database-url",
            "mysql://app:hunter2@db/orders",
        ],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", shown(&refused));
    assert!(!shown(&refused).contains("hunter2"), "{}", shown(&refused));

    // A database that cannot be reached: the service gives up, saying where, without the password.
    let nowhere = free_port();
    let failed = orderflow(
        &[
            "order-service",
            "--database-url",
            &format!("postgres://app:hunter2@127.0.0.1:{nowhere}/orders"),
            "--nats-url",
            &format!("nats://u:hunter2@127.0.0.1:{nowhere}"),
            "--nats-connect-timeout",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    assert!(!failed.status.success(), "{}", shown(&failed));
    assert!(!shown(&failed).contains("hunter2"), "{}", shown(&failed));
}
