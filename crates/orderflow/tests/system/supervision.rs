//! `orderflow up` as a supervisor: a child killed with SIGKILL while orders flow is restarted, and every
//! order still ends final with the stock adding up; with `--no-restart` the same crash stops everything.

use crate::up::{processes_mentioning, start_up, wait_ready};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::{ChildProcess, free_port, wait_until};

const ORDERFLOW: &str = env!("CARGO_BIN_EXE_orderflow");
/// How long a killed child may take to be restarted and ready again (backoff plus startup).
const RESTART_DEADLINE: Duration = Duration::from_secs(20);
/// How long every placed order may take to end after the last restart: events a killed consumer held
/// come back after the services' ack wait (10 s).
const FINAL_DEADLINE: Duration = Duration::from_secs(60);
/// Orders placed around each kill.
const ORDERS_PER_KILL: usize = 10;
/// sku-1's stock in the demo catalog that `up` seeds on a first start.
const SKU_1_STOCK: i64 = 100;

/// One `orderflow up` with its own data dir and free ports.
struct Up {
    process: ChildProcess,
    data_dir: PathBuf,
    http_base: u16,
    nats_port: u16,
    order_url: String,
    inventory_url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Up {
    async fn start(envs: &[(&str, &str)]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let http_base = testkit::free_ports(4);
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let nats_port = free_port();
        let process = start_up(&data_dir, http_base, nats_port, dir.path(), &envs);
        let order_url = format!("http://127.0.0.1:{http_base}");
        wait_ready(&process, &order_url).await;
        Up {
            process,
            data_dir,
            http_base,
            nats_port,
            order_url,
            inventory_url: format!("http://127.0.0.1:{}", http_base + 1),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// The pid of `up`'s child `name` (nats-server, or an `orderflow` subcommand), once it runs.
    async fn child_pid(&self, name: &str) -> libc::pid_t {
        let data_dir = self.data_dir.display().to_string();
        wait_until(&format!("{name} runs"), RESTART_DEADLINE, || async {
            child_pid(&data_dir, name)
        })
        .await
    }

    /// Runs `orderflow verify` against this system until it passes (payment may still be settling a
    /// cancellation when every order already looks final), failing at `deadline`.
    async fn verified(&self, deadline: Instant) {
        loop {
            let output = std::process::Command::new(ORDERFLOW)
                .arg("verify")
                .args(["--data-dir", &self.data_dir.display().to_string()])
                .args(["--http-port-base", &self.http_base.to_string()])
                .args([
                    "--nats-url",
                    &format!("nats://127.0.0.1:{}", self.nats_port),
                ])
                .output()
                .expect("run orderflow verify");
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "orderflow verify fails: {}\n{}",
                crate::harness::shown(&output),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILLs the child `name` and waits until `up` logged its restart and the new run is ready.
    async fn kill_and_await_restart(&self, name: &str) {
        let pid = self.child_pid(name).await;
        // SAFETY: kill has no memory-safety preconditions; the pid was read from /proc a moment ago
        // and belongs to a live child of our `up`, which has not reaped it.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {name}");
        let ready = format!("{name} is ready again (restart #1,");
        let found = tokio::time::timeout(RESTART_DEADLINE, async {
            while !self.log().contains(&ready) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        let log = self.log();
        assert!(found.is_ok(), "{name} was not restarted:\n{log}");
        let restarting = format!(
            "{name} exited unexpectedly (signal: 9 (SIGKILL)); restarting in 250 ms (restart #1)"
        );
        assert!(log.contains(&restarting), "no line {restarting:?}:\n{log}");
        assert_ne!(self.child_pid(name).await, pid, "{name} has the same pid");
    }

    /// Places `count` orders of one sku-1 each, retrying each (under its own idempotency key) until it
    /// is accepted: order-service may be down for a moment.
    async fn place_orders(&self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let key = uuid::Uuid::new_v4().to_string();
            let body = json!({
                "customer_id": "c-1",
                "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa"
            });
            let started = Instant::now();
            let id = loop {
                let response = self
                    .http
                    .post(format!("{}/orders", self.order_url))
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await;
                let last = match response {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        let placed: Value = response.json().await.unwrap();
                        break placed["order_id"].as_str().unwrap().to_owned();
                    }
                    Ok(response)
                        if response.status().is_server_error()
                            || response.status() == StatusCode::CONFLICT =>
                    {
                        response.status().to_string()
                    }
                    Ok(response) => panic!(
                        "POST /orders: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ),
                    Err(error) => error.to_string(),
                };
                assert!(
                    started.elapsed() < RESTART_DEADLINE,
                    "POST /orders kept failing (last: {last}):\n{}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        ids
    }

    async fn get_json(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }
}

/// The pid of the live process `name` started for `data_dir`: nats-server (its program), or the
/// `orderflow` subcommand `name`. `up` itself mentions both the data dir and nats-server, but as
/// arguments, so it never matches; a killed child awaiting its reaping has an empty command line.
fn child_pid(data_dir: &str, name: &str) -> Option<libc::pid_t> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw);
            let args: Vec<&str> = cmdline.split('\0').collect();
            let is_it = if name == "nats-server" {
                args.first()
                    .is_some_and(|program| Path::new(program).ends_with("nats-server"))
            } else {
                args.get(1) == Some(&name)
            };
            (is_it && args.iter().any(|arg| arg.contains(data_dir))).then_some(pid)
        })
}

#[tokio::test]
async fn up_restarts_a_killed_child_and_every_order_ends_final() {
    let mut up = Up::start(&[]).await;

    let mut placed = Vec::new();
    for name in [
        "nats-server",
        "order-service",
        "inventory-service",
        "payment-service",
        "gateway-sim",
    ] {
        let placing = up.place_orders(ORDERS_PER_KILL);
        let killing = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            up.kill_and_await_restart(name).await;
        };
        let (ids, ()) = tokio::join!(placing, killing);
        placed.extend(ids);
    }

    let deadline = Instant::now() + FINAL_DEADLINE;
    let mut confirmed = 0;
    for id in &placed {
        let url = format!("{}/orders/{id}", up.order_url);
        let status = loop {
            let status = up
                .get_json(&url)
                .await
                .and_then(|order| order["status"].as_str().map(str::to_owned));
            if let Some(status) = status.as_ref().filter(|status| *status != "pending") {
                break status.clone();
            }
            assert!(
                Instant::now() < deadline,
                "order {id} not final within {FINAL_DEADLINE:?} (now {status:?}):\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            ["confirmed", "cancelled"].contains(&status.as_str()),
            "order {id}: {status}"
        );
        confirmed += i64::from(status == "confirmed");
    }
    assert_eq!(
        confirmed,
        placed.len() as i64,
        "with stock for all, every order should be confirmed"
    );

    // The commit of the stock follows the order's final state asynchronously.
    let url = format!("{}/products/sku-1", up.inventory_url);
    let mut product = Value::Null;
    while Instant::now() < deadline {
        product = up.get_json(&url).await.unwrap_or(Value::Null);
        if product["reserved"] == 0 && product["sold"] == confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counter = |field: &str| product[field].as_i64().unwrap_or(-1);
    assert_eq!(
        (counter("reserved"), counter("sold")),
        (0, confirmed),
        "sku-1: {product}\n{}",
        up.log()
    );
    assert_eq!(
        counter("available") + counter("reserved") + counter("sold"),
        SKU_1_STOCK,
        "sku-1: {product}"
    );

    up.verified(deadline).await;

    let stopping = Instant::now();
    let status = up.process.terminate();
    assert!(status.success(), "up exited with {status}:\n{}", up.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        stopping.elapsed()
    );
    let left = processes_mentioning(&up.data_dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test]
async fn with_no_restart_a_killed_child_stops_everything() {
    let mut up = Up::start(&[("ORDERFLOW_NO_RESTART", "1")]).await;
    let pid = up.child_pid("gateway-sim").await;
    // SAFETY: as in `kill_and_await_restart`.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let status = wait_until("up exits", Duration::from_secs(15), || {
        let status = up.process.exit_status();
        async move { status }
    })
    .await;
    let log = up.log();
    assert!(!status.success(), "up exited with {status}:\n{log}");
    assert!(
        log.contains("gateway-sim exited on its own"),
        "no reason given:\n{log}"
    );
    assert!(!log.contains("restarting in"), "restarted anyway:\n{log}");
    let left = processes_mentioning(&up.data_dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
