//! The benchmark peers of `bench/peers/` (its README is the contract): the same saga built on DBOS
//! and on Restate. Each runs beside a nats-server and a gateway simulator of its own, takes the same
//! load from `orderflow loadgen`, and, having no `orderflow verify`, has its books balanced against
//! the load generator's reports and the gateway's ledger instead.

use crate::system::{Sampler, UnderTest, Usage, Verdict, loadgen, wait_ready};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use testkit::{ChildProcess, NatsServer};
use tokio::process::Command;
use tokio::time::Instant;

/// How long a peer may take to answer ready (Restate starts a server and registers a deployment).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a peer's books may take to balance once the load stopped.
const BOOKS_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports a peer may use from its base (the README gives it ten).
const PEER_PORTS: u16 = 10;

/// Which database a peer is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Sqlite,
    Postgres,
    /// The peer keeps its state in its own store (Restate's log).
    Own,
}

/// One peer configuration the suite runs.
#[derive(Debug)]
pub struct PeerSpec {
    /// How the report names it.
    pub name: &'static str,
    /// Its folder under `bench/peers/`.
    pub folder: &'static str,
    pub storage: Storage,
    /// Where the load generator POSTs orders: this many ports above the peer's base, at this path.
    order_port_offset: u16,
    order_path: &'static str,
    /// The orderflow setup it is compared with: the same kind of storage.
    pub compared_with: &'static str,
}

pub const PEERS: [PeerSpec; 3] = [
    PeerSpec {
        name: "DBOS, sqlite",
        folder: "dbos",
        storage: Storage::Sqlite,
        order_port_offset: 0,
        order_path: "/orders",
        compared_with: "sqlite",
    },
    PeerSpec {
        name: "DBOS, postgres",
        folder: "dbos",
        storage: Storage::Postgres,
        order_port_offset: 0,
        order_path: "/orders",
        compared_with: "postgres",
    },
    // Orders go straight to Restate's own ingress, which persists the invocation before its 202.
    PeerSpec {
        name: "Restate",
        folder: "restate",
        storage: Storage::Own,
        order_port_offset: 1,
        order_path: "/orders/place/send",
        compared_with: "sqlite",
    },
];

impl PeerSpec {
    fn folder(&self) -> PathBuf {
        testkit::workspace_root()
            .join("bench/peers")
            .join(self.folder)
    }

    /// Runs the peer's `install` script (idempotent): `Err` says why the peer cannot run here.
    pub async fn install(&self) -> Result<(), String> {
        let script = self.folder().join("install");
        let output = Command::new(&script)
            .current_dir(self.folder())
            .output()
            .await
            .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
        if output.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = said.lines().rev().take(5).collect();
        Err(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }
}

/// A running peer with its own broker and gateway simulator.
pub struct Peer {
    spec: &'static PeerSpec,
    orderflow: PathBuf,
    nats: NatsServer,
    gateway: ChildProcess,
    peer: ChildProcess,
    port_base: u16,
    gateway_port: u16,
    sampler: Sampler,
    http: reqwest::Client,
    /// Every load generator report so far: what the books must add up to.
    reports: Mutex<Vec<Value>>,
    // Last, so it is removed after the processes that write into it are gone.
    dir: tempfile::TempDir,
}

impl Peer {
    /// Starts the peer, given `database_url` for [`Storage::Postgres`], and waits until it is ready.
    pub async fn start(
        orderflow: &Path,
        spec: &'static PeerSpec,
        database_url: Option<&str>,
    ) -> Result<Peer> {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-bench-peer-")
            .tempdir()?;
        let nats = NatsServer::start().await;
        let gateway_port = testkit::free_port();
        let gateway = ChildProcess::spawn(
            "gateway-sim",
            orderflow,
            &[
                "gateway-sim".to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{gateway_port}"),
                "--database-url".to_owned(),
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("gateway.db").display()
                ),
            ],
            &[],
            dir.path(),
        );
        let port_base = testkit::free_ports(PEER_PORTS);
        let database_url = match spec.storage {
            Storage::Sqlite => Some(format!(
                "sqlite:///{}",
                dir.path().join("peer.sqlite").display()
            )),
            Storage::Postgres => Some(
                database_url
                    .context("a PostgreSQL peer needs a database")?
                    .to_owned(),
            ),
            Storage::Own => None,
        };
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let mut env = vec![
            ("PEER_PORT_BASE".to_owned(), port_base.to_string()),
            ("PEER_NATS_URL".to_owned(), nats.url()),
            (
                "PEER_GATEWAY_URL".to_owned(),
                format!("http://127.0.0.1:{gateway_port}"),
            ),
            ("PEER_DATA_DIR".to_owned(), data_dir.display().to_string()),
        ];
        if let Some(url) = database_url {
            env.push(("PEER_DATABASE_URL".to_owned(), url));
        }
        let mut peer = ChildProcess::spawn(
            spec.folder,
            &spec.folder().join("run"),
            &[],
            &env,
            dir.path(),
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let ready_urls = [
            format!("http://127.0.0.1:{port_base}/health/ready"),
            format!("http://127.0.0.1:{gateway_port}/health/ready"),
        ];
        wait_ready(&mut peer, spec.name, &http, &ready_urls, READY_TIMEOUT).await?;
        // Sampled from here on: `run` has exec'd or started its parts by now, so the names are theirs.
        let sampler = Sampler::start(peer.pid(), true);
        sampler.mark_idle().await;
        Ok(Peer {
            spec,
            orderflow: orderflow.to_owned(),
            dir,
            nats,
            gateway,
            peer,
            port_base,
            gateway_port,
            sampler,
            http,
            reports: Mutex::new(Vec::new()),
        })
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port_base)
    }

    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    async fn get_json(&self, url: &str) -> Result<Value> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {url} answered {}",
            response.status()
        );
        response
            .json()
            .await
            .with_context(|| format!("GET {url} did not answer JSON"))
    }
}

impl UnderTest for Peer {
    async fn loadgen(&self, args: &[String]) -> Result<Value> {
        let target = [
            "--order-url".to_owned(),
            format!(
                "http://127.0.0.1:{}",
                self.port_base + self.spec.order_port_offset
            ),
            "--order-path".to_owned(),
            self.spec.order_path.to_owned(),
            "--inventory-url".to_owned(),
            self.api(),
            "--nats-url".to_owned(),
            self.nats.url(),
        ];
        let report = loadgen(&self.orderflow, &target, None, args).await?;
        self.reports
            .lock()
            .expect("not poisoned")
            .push(report.clone());
        Ok(report)
    }

    /// Balances the books until they do or [`BOOKS_TIMEOUT`]: the problems of the last try.
    async fn verify(&self) -> Result<Verdict> {
        let deadline = Instant::now() + BOOKS_TIMEOUT;
        loop {
            let products = self.get_json(&format!("{}/products", self.api())).await?;
            let charges = self
                .get_json(&format!("{}/v1/charges", self.gateway_url()))
                .await?;
            let reports = self.reports.lock().expect("not poisoned").clone();
            let problems = unbalanced(&reports, &products, &charges);
            if problems.is_empty() || Instant::now() > deadline {
                return Ok(Verdict {
                    passed: problems.is_empty(),
                    output: problems.join("\n"),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn usage(&self) -> BTreeMap<String, Usage> {
        self.sampler.usage()
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(self.peer.log_path()).map_or(0, |metadata| metadata.len())
    }

    async fn stop(self) {
        self.sampler.stop();
        let Peer {
            mut peer,
            mut gateway,
            mut nats,
            dir,
            ..
        } = self;
        let _ = tokio::task::spawn_blocking(move || {
            peer.terminate();
            gateway.terminate();
            nats.stop();
        })
        .await;
        drop(dir);
    }
}

/// Every way the peer's books (`GET /products`) and the gateway's ledger (`GET /v1/charges`) disagree
/// with the orders the load generator saw end. Every order is of one unit.
fn unbalanced(reports: &[Value], products: &Value, charges: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id: BTreeMap<&str, &Value> = products
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|product| Some((product["product_id"].as_str()?, product)))
        .collect();
    let ended = |report: &Value, state: &str| report["final_states"][state].as_i64().unwrap_or(0);
    let (mut confirmed, mut declined) = (0, 0);
    for report in reports {
        let run_confirmed = ended(report, "confirmed");
        confirmed += run_confirmed;
        declined += ended(report, "cancelled:payment_declined");
        let mut sold = 0;
        for (id, stock) in report["stock"].as_object().into_iter().flatten() {
            let Some(product) = by_id.get(id.as_str()) else {
                problems.push(format!("product {id} is missing"));
                continue;
            };
            let count = |field: &str| product[field].as_i64().unwrap_or(i64::MIN);
            let (available, reserved, units_sold) =
                (count("available"), count("reserved"), count("sold"));
            sold += units_sold;
            if available < 0 || reserved != 0 || units_sold < 0 {
                problems.push(format!(
                    "product {id}: available {available}, reserved {reserved}, sold {units_sold}"
                ));
            }
            if Some(available + reserved + units_sold) != stock.as_i64() {
                problems.push(format!(
                    "product {id}: available + reserved + sold is {}, not its stock {stock}",
                    available + reserved + units_sold
                ));
            }
        }
        if sold != run_confirmed {
            problems.push(format!(
                "{sold} units sold in a run whose confirmed orders were {run_confirmed}"
            ));
        }
    }
    let charges = charges.as_array().map(Vec::as_slice).unwrap_or_default();
    let count = |status: &str| {
        charges
            .iter()
            .filter(|charge| charge["status"] == status && charge["refunded"] != true)
            .count() as i64
    };
    let (charged, refused) = (count("succeeded"), count("declined"));
    if charged != confirmed {
        problems.push(format!(
            "the gateway holds {charged} charges for {confirmed} confirmed orders"
        ));
    }
    if refused != declined {
        problems.push(format!(
            "the gateway declined {refused} charges for {declined} orders cancelled as declined"
        ));
    }
    let keys: BTreeSet<&str> = charges
        .iter()
        .filter_map(|charge| {
            let key = charge["idempotency_key"].as_str()?;
            (charge["order_id"].as_str() == Some(key)).then_some(key)
        })
        .collect();
    if keys.len() != charges.len() {
        problems.push(format!(
            "of {} charges only {} have their order id as idempotency key, once each",
            charges.len(),
            keys.len()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(confirmed: i64, declined: i64, stock: Value) -> Value {
        json!({
            "final_states": { "confirmed": confirmed, "cancelled:payment_declined": declined },
            "stock": stock,
        })
    }

    fn charge(order: &str, status: &str) -> Value {
        json!({ "order_id": order, "idempotency_key": order, "status": status, "refunded": false })
    }

    #[test]
    fn balanced_books_have_no_problems() {
        let reports = [report(2, 1, json!({ "a": 10, "z": 0 }))];
        let products = json!([
            { "product_id": "a", "available": 8, "reserved": 0, "sold": 2 },
            { "product_id": "z", "available": 0, "reserved": 0, "sold": 0 },
        ]);
        let charges = json!([
            charge("o1", "succeeded"),
            charge("o2", "succeeded"),
            charge("o3", "declined")
        ]);
        assert_eq!(
            unbalanced(&reports, &products, &charges),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_oversold_product_a_stuck_reservation_and_a_double_charge_are_each_reported() {
        let reports = [report(2, 0, json!({ "a": 10, "b": 5 }))];
        let products = json!([
            { "product_id": "a", "available": -1, "reserved": 0, "sold": 11 },
            { "product_id": "b", "available": 4, "reserved": 1, "sold": 0 },
        ]);
        let charges = json!([
            charge("o1", "succeeded"),
            charge("o2", "succeeded"),
            { "order_id": "o2", "idempotency_key": "o2-again", "status": "succeeded", "refunded": false },
        ]);
        let problems = unbalanced(&reports, &products, &charges).join("\n");
        for expected in [
            "product a: available -1",
            "product b: available 4, reserved 1",
            "11 units sold in a run whose confirmed orders were 2",
            "3 charges for 2 confirmed orders",
            "of 3 charges only 2",
        ] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
    }

    #[test]
    fn a_missing_product_is_reported() {
        let reports = [report(0, 0, json!({ "gone": 3 }))];
        let problems = unbalanced(&reports, &json!([]), &json!([])).join("\n");
        assert!(problems.contains("product gone is missing"), "{problems}");
    }
}
