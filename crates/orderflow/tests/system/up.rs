//! `orderflow up` and `orderflow demo`, as a user runs them: the whole system from one command, the
//! demo's three scenarios against it, a clean stop on SIGTERM with no process left, data kept across
//! runs.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{ChildProcess, free_port, free_ports};

const ORDERFLOW: &str = env!("CARGO_BIN_EXE_orderflow");

/// Starts `orderflow up` on its own data dir and ports, with extra environment variables `envs`.
pub(crate) fn start_up(
    data_dir: &Path,
    http_base: u16,
    nats_port: u16,
    logs: &Path,
    envs: &[(String, String)],
) -> ChildProcess {
    let nats_server = testkit::workspace_root().join(".tools/nats-server/bin/nats-server");
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--http-port-base".into(),
        http_base.to_string(),
        "--nats-port".into(),
        nats_port.to_string(),
        "--nats-server".into(),
        std::env::var("ORDERFLOW_NATS_SERVER")
            .unwrap_or_else(|_| nats_server.display().to_string()),
    ];
    ChildProcess::spawn("up", Path::new(ORDERFLOW), &args, envs, logs)
}

pub(crate) async fn wait_ready(up: &ChildProcess, order_url: &str) {
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Ok(response) = reqwest::get(format!("{order_url}/health/ready")).await
                && response.status() == StatusCode::OK
                && up.log().contains("Ctrl-C")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "orderflow up never became ready:\n{}",
        up.log()
    );
}

/// Processes whose command line mentions `needle` (our unique data dir), read from /proc.
pub(crate) fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

#[tokio::test]
async fn up_runs_the_system_the_demo_passes_and_sigterm_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http_base = free_ports(4);
    let nats_port = free_port();
    let order_url = format!("http://127.0.0.1:{http_base}");

    let mut up = start_up(&data_dir, http_base, nats_port, dir.path(), &[]);
    wait_ready(&up, &order_url).await;
    let banner = up.log();
    assert!(
        banner.contains("curl"),
        "no curl example printed:\n{banner}"
    );
    let (status, catalog) = get(&format!("http://127.0.0.1:{}/products", http_base + 1)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !catalog.as_array().unwrap().is_empty(),
        "demo catalog not seeded"
    );

    // The demo finds the admin token `up` saved in its data dir.
    let demo = Command::new(ORDERFLOW)
        .args(["demo", "--http-port-base", &http_base.to_string()])
        .env("ORDERFLOW_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    let demo_output =
        String::from_utf8_lossy(&demo.stdout).to_string() + &String::from_utf8_lossy(&demo.stderr);
    assert!(
        demo.status.success(),
        "demo failed:\n{demo_output}\n{}",
        up.log()
    );
    for step in [
        "orders.created",
        "inventory.reserved",
        "payments.succeeded",
        "orders.confirmed",
    ] {
        assert!(
            demo_output.contains(step),
            "demo timeline lacks {step}:\n{demo_output}"
        );
    }

    // The containers' health check: 0 for a service that answers, 1 (and why) for one that does not.
    let probe = |url: String| {
        Command::new(ORDERFLOW)
            .args(["probe", &url])
            .output()
            .unwrap()
    };
    let healthy = probe(format!("{order_url}/health/ready"));
    assert!(healthy.status.success(), "{healthy:?}");
    let gone = probe(format!("http://127.0.0.1:{}/health/live", free_port()));
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("did not answer"),
        "{gone:?}"
    );

    let placed = reqwest::Client::new()
        .post(format!("{order_url}/orders"))
        .json(&json!({"customer_id": "c-1", "items": [{"product_id": "sku-1", "quantity": 1}], "payment_method": "tok_visa"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    // The services' logs under `up`, merged: the order's saga ends with order-service's line.
    let line = testkit::wait_until(
        "`orderflow logs --order` to show how the order ended",
        Duration::from_secs(30),
        || async {
            let logs = Command::new(ORDERFLOW)
                .args(["logs", "--json", "--order", &order_id, "--data-dir"])
                .arg(&data_dir)
                .output()
                .unwrap();
            String::from_utf8_lossy(&logs.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["message"] == "order confirmed")
        },
    )
    .await;
    assert_eq!(line["service"], "order-service", "{line}");
    assert_eq!(line["order_id"], order_id.as_str(), "{line}");
    assert!(
        line["trace_id"].as_str().is_some_and(|id| id.len() == 32),
        "{line}"
    );

    let stopping = Instant::now();
    let status = up.terminate();
    assert!(status.success(), "up exited with {status}:\n{}", up.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        stopping.elapsed()
    );
    let needle = data_dir.display().to_string();
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "processes left behind: {left:?}");

    // A second run finds the data of the first.
    let mut again = start_up(&data_dir, http_base, nats_port, dir.path(), &[]);
    wait_ready(&again, &order_url).await;
    let (status, order) = get(&format!("{order_url}/orders/{order_id}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "order lost across restarts: {order}"
    );
    assert!(again.terminate().success());
    assert!(processes_mentioning(&needle).is_empty());
}

#[tokio::test]
async fn nats_sync_always_starts_the_broker_with_that_setting_and_the_saga_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http_base = free_ports(4);
    let order_url = format!("http://127.0.0.1:{http_base}");
    let envs = [("ORDERFLOW_NATS_SYNC".to_owned(), "always".to_owned())];
    let mut up = start_up(&data_dir, http_base, free_port(), dir.path(), &envs);
    wait_ready(&up, &order_url).await;
    let config = std::fs::read_to_string(data_dir.join("nats-server.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    let broker_log = std::fs::read_to_string(data_dir.join("logs/nats-server.log")).unwrap();
    assert!(
        broker_log.contains("Using configuration file"),
        "nats-server did not read the config:\n{broker_log}"
    );
    // The demo finds the admin token `up` saved in its data dir.
    let demo = Command::new(ORDERFLOW)
        .args(["demo", "--http-port-base", &http_base.to_string()])
        .env("ORDERFLOW_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "demo failed:\n{}\n{}",
        String::from_utf8_lossy(&demo.stdout),
        up.log()
    );
    assert!(up.terminate().success());
}

#[test]
fn demo_without_a_running_system_fails_and_says_what_to_do() {
    let port = free_port();
    let demo = Command::new(ORDERFLOW)
        .args(["demo", "--http-port-base", &port.to_string()])
        .output()
        .unwrap();
    let output =
        String::from_utf8_lossy(&demo.stdout).to_string() + &String::from_utf8_lossy(&demo.stderr);
    assert!(!demo.status.success());
    assert!(output.contains("make up"), "{output}");
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `orderflow up --replicas 2 --database-url postgres://… --nats-cluster 3`: two instances of each
/// service on one PostgreSQL database and a 3-node JetStream cluster; `orderflow status --replicas 2`
/// shows every instance ready, and an order placed on the second order-service ends confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_replicas_on_postgres_with_a_nats_cluster() {
    let Some(db) = testkit::TestDatabase::create(testkit::Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http_base = free_ports(7);
    let nats_port = free_ports(6);
    let envs = [
        ("ORDERFLOW_REPLICAS".to_owned(), "2".to_owned()),
        ("ORDERFLOW_NATS_CLUSTER".to_owned(), "3".to_owned()),
        ("ORDERFLOW_UP_DATABASE_URL".to_owned(), db.url()),
    ];
    let mut up = start_up(&data_dir, http_base, nats_port, dir.path(), &envs);
    let order_url = format!("http://127.0.0.1:{http_base}");
    wait_ready(&up, &order_url).await;

    let nats_urls = (nats_port..nats_port + 3)
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let status = Command::new(ORDERFLOW)
        .args(["status", "--json", "--replicas", "2"])
        // Where it finds the NATS operator's password.
        .env("ORDERFLOW_DATA_DIR", &data_dir)
        .args(["--http-port-base", &http_base.to_string()])
        .args(["--nats-url", &nats_urls])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}\n{}", up.log());
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    let services: Vec<(&str, &str)> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["service"].as_str().unwrap(),
                entry["status"]["ready"]["status"]
                    .as_str()
                    .unwrap_or("down"),
            )
        })
        .collect();
    assert_eq!(services.len(), 7, "{report}");
    assert!(
        services.iter().all(|(_, ready)| *ready == "ready"),
        "{report}"
    );
    assert!(
        !report["consumers"].as_array().unwrap().is_empty(),
        "{report}"
    );

    let second = format!("http://127.0.0.1:{}", http_base + 4);
    let placed: Value = reqwest::Client::new()
        .post(format!("{second}/orders"))
        .json(&json!({"customer_id": "c-1", "items": [{"product_id": "sku-1", "quantity": 1}], "payment_method": "tok_visa"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    let status = testkit::wait_until(
        "the order placed on the second instance to end",
        Duration::from_secs(60),
        || async {
            let (_, order) = get(&format!("{order_url}/orders/{order_id}")).await;
            let status = order["status"].as_str().unwrap_or("pending").to_owned();
            (status != "pending").then_some(status)
        },
    )
    .await;
    assert_eq!(status, "confirmed", "{}", up.log());
    assert!(up.terminate().success(), "{}", up.log());
}

/// Under `orderflow up` each service connects to NATS as its own user: inventory-service's may not
/// publish `payments.succeeded` nor read the `DLQ` stream, a client without credentials is refused,
/// and the operator (the tools' user) may do both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_may_do_only_its_own_part_on_nats() {
    use async_nats::jetstream;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http_base = free_ports(4);
    let nats_port = free_port();
    let mut up = start_up(&data_dir, http_base, nats_port, dir.path(), &[]);
    wait_ready(&up, &format!("http://127.0.0.1:{http_base}")).await;
    let url = format!("nats://127.0.0.1:{nats_port}");
    let connect_as = |user: &str| {
        let password = std::fs::read_to_string(data_dir.join("nats-auth").join(user)).unwrap();
        async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            password.trim().to_owned(),
        )
        .connect(url.clone())
    };

    assert!(
        async_nats::connect(&url).await.is_err(),
        "a client without credentials got in"
    );
    let operator = jetstream::new(connect_as("operator").await.unwrap());
    operator
        .publish("dlq.permission-probe", "a dead letter".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let inventory = jetstream::new(connect_as("inventory-service").await.unwrap());

    // Its own part: the state of its consumer.
    let orders = inventory.get_stream("ORDERS").await.unwrap();
    assert!(orders.consumer_info("inventory-orders").await.is_ok());
    // Not another service's events.
    let forged = async {
        inventory
            .publish("payments.succeeded", "{}".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    let forged = tokio::time::timeout(Duration::from_secs(10), forged).await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "inventory-service published payments.succeeded"
    );
    let payments = operator
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(payments, 0, "a forged payments.succeeded was stored");
    // Not the dead letters, which the operator reads.
    let letters = inventory.get_stream("DLQ").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), letters.get_raw_message(1)).await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "inventory-service read a dead letter"
    );
    let consumed = tokio::time::timeout(
        Duration::from_secs(10),
        letters.create_consumer(jetstream::consumer::pull::Config::default()),
    )
    .await;
    assert!(
        !matches!(consumed, Ok(Ok(_))),
        "inventory-service consumed the DLQ"
    );
    let operator_letters = operator.get_stream("DLQ").await.unwrap();
    assert!(operator_letters.get_raw_message(1).await.is_ok());
    assert!(up.terminate().success(), "{}", up.log());
}
