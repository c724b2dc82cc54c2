//! `System`: the whole of orderflow for one test — its own nats-server on a free port, its own
//! databases, and the four processes (`orderflow gateway-sim`, `inventory-service`, `payment-service`,
//! `order-service`) started from the binary under test — plus typed helpers to drive and inspect it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::{
    Backend, ChildProcess, FaultProxy, NatsServer, PostgresServer, TestCa, TestDatabase, free_port,
    wait_until,
};

/// How long a saga may take in a test before we call it stuck. Generous: CI machines are slow.
pub const SAGA_DEADLINE: Duration = Duration::from_secs(60);

/// Variations on the standard system, for tests that need them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra flags for order-service (e.g. a short `--saga-timeout`).
    pub order_args: Vec<String>,
    /// Extra flags for payment-service (e.g. a longer `--gateway-timeout-ms`).
    pub payment_args: Vec<String>,
    /// Extra flags for all three services (e.g. a short `--ack-wait`).
    pub service_args: Vec<String>,
    /// Environment variables for all three services (e.g. a `RUST_LOG` that shows per-event lines).
    pub service_env: Vec<(String, String)>,
    /// Instances of each service beyond the first, sharing its database and durable consumers.
    pub replicas: usize,
    /// PostgreSQL only: the services reach their database through a [`FaultProxy`] the test can cut.
    pub database_proxy: bool,
    /// TLS everywhere, with a CA of the test's own: NATS takes TLS connections only, from clients
    /// with a certificate (mutual TLS), and on PostgreSQL the services use a server of the test's own
    /// that takes TLS connections only, its certificate checked (`sslmode=verify-full`).
    pub tls: bool,
    /// A 3-node NATS cluster instead of one server: `System::nats` is its first node, the others
    /// are in `System::nats_peers`, and the services get all three URLs.
    pub nats_cluster: bool,
    /// PostgreSQL only: a password in the services' database URLs (the test server trusts local
    /// connections and never asks for it), to show it never reaches a log.
    pub database_password: Option<&'static str>,
}

pub struct System {
    pub nats: NatsServer,
    /// The other nodes of a cluster ([`Options::nats_cluster`]).
    pub nats_peers: Vec<NatsServer>,
    /// The services' further instances (see [`Options::replicas`]).
    pub replicas: Vec<Replica>,
    pub order: ChildProcess,
    pub inventory: ChildProcess,
    pub payment: ChildProcess,
    pub gateway: ChildProcess,
    pub order_url: String,
    pub inventory_url: String,
    pub payment_url: String,
    pub gateway_url: String,
    /// `ORDERFLOW_ADMIN_TOKEN` of the services and the gateway simulator.
    pub admin_token: String,
    http: reqwest::Client,
    /// Between the services and PostgreSQL, with [`Options::database_proxy`].
    pub db_proxy: Option<FaultProxy>,
    db: TestDatabase,
    /// The PostgreSQL server of the test's own, with [`Options::tls`]; dropped after `db`.
    pub pg_server: Option<PostgresServer>,
    /// With [`Options::tls`]: the CA, and what a NATS client needs to use it.
    pub tls: Option<TestCa>,
    _logs: tempfile::TempDir,
}

/// The sum of the series of Prometheus counter `name` whose labels include `label` (`key="value"`),
/// as the process at `url` exports them now.
pub async fn counter_sum(url: &str, name: &str, label: &str) -> f64 {
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics as text");
    let series = format!("{name}{{");
    metrics
        .lines()
        .filter(|line| line.starts_with(&series) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The environment that makes an orderflow process use the test CA's TLS on NATS (none without).
fn tls_env(ca: Option<&TestCa>) -> Vec<(String, String)> {
    let Some(ca) = ca else {
        return Vec::new();
    };
    let client = ca.client();
    [
        ("ORDERFLOW_NATS_CA", ca.ca_file()),
        ("ORDERFLOW_NATS_CLIENT_CERT", client.cert),
        ("ORDERFLOW_NATS_CLIENT_KEY", client.key),
    ]
    .into_iter()
    .map(|(key, path)| (key.to_owned(), path.display().to_string()))
    .collect()
}

/// A further instance of a service, on its own port.
pub struct Replica {
    pub service: &'static str,
    pub process: ChildProcess,
    pub url: String,
}

/// What every process of one system shares: its NATS server, its log folder, its environment.
struct Launcher<'a> {
    nats_url: String,
    logs: &'a Path,
    env: &'a [(String, String)],
}

impl Launcher<'_> {
    /// Starts `orderflow <command>` on `port`, logging as `name`.
    fn start(
        &self,
        name: &str,
        command: &str,
        port: u16,
        db_url: &str,
        extra: &[String],
    ) -> ChildProcess {
        let mut args = vec![
            command.to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--database-url".into(),
            db_url.to_owned(),
            "--log-format".into(),
            "json".into(),
        ];
        if command != "gateway-sim" {
            args.extend(["--nats-url".into(), self.nats_url.clone()]);
        }
        args.extend(extra.iter().cloned());
        ChildProcess::spawn(
            name,
            Path::new(env!("CARGO_BIN_EXE_orderflow")),
            &args,
            self.env,
            self.logs,
        )
    }
}

impl System {
    /// Starts everything and waits until every service is ready. `None` when the backend is not
    /// available here (PostgreSQL unreachable and not required).
    pub async fn start(backend: Backend) -> Option<System> {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Option<System> {
        let tls = options.tls.then(TestCa::new);
        let (db, pg_server) = match (&tls, backend) {
            (Some(ca), Backend::Postgres) => {
                let server = PostgresServer::start_tls(ca)?;
                (TestDatabase::create_on(&server.url()).await?, Some(server))
            }
            _ => (TestDatabase::create(backend).await?, None),
        };
        let db_proxy = match db.server_addr() {
            Some(server) if options.database_proxy => Some(FaultProxy::start(server).await),
            _ => None,
        };
        // What the services are given: through the proxy, when there is one.
        let service_db = |service: &str| {
            let url = match &db_proxy {
                Some(proxy) => db.url_via(service, proxy.port()),
                None => db.url_for(service),
            };
            match options.database_password {
                Some(password) => with_password(&url, password),
                None => url,
            }
        };
        let (nats, nats_peers) = if let Some(ca) = &tls {
            (NatsServer::start_tls(ca).await, Vec::new())
        } else if options.nats_cluster {
            let mut nodes = NatsServer::start_cluster(3).await;
            let first = nodes.remove(0);
            (first, nodes)
        } else {
            (NatsServer::start().await, Vec::new())
        };
        let nats_url = std::iter::once(&nats)
            .chain(&nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let logs = tempfile::tempdir().expect("create a temp dir for service logs");
        let [order_port, inventory_port, payment_port, gateway_port] =
            [free_port(), free_port(), free_port(), free_port()];
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");
        let admin_token = platform::access::AdminToken::generate().expose().to_owned();
        let token_env = [("ORDERFLOW_ADMIN_TOKEN".to_owned(), admin_token.clone())];
        // The tests' clients all come from 127.0.0.1, like many shops behind one proxy: no
        // per-client limit, unless a test sets one with --rate-limit (a flag wins over the variable).
        let unlimited = [("ORDERFLOW_RATE_LIMIT".to_owned(), "0".to_owned())];
        let service_env = [
            &unlimited[..],
            &options.service_env,
            &token_env,
            &tls_env(tls.as_ref()),
        ]
        .concat();
        let launcher = Launcher {
            nats_url: nats_url.clone(),
            logs: logs.path(),
            env: &service_env,
        };
        let gateway = Launcher {
            env: &token_env,
            nats_url: nats_url.clone(),
            logs: logs.path(),
        }
        .start(
            "gateway-sim",
            "gateway-sim",
            gateway_port,
            &format!("sqlite://{}/gateway.db?mode=rwc", logs.path().display()),
            &[],
        );
        let inventory = launcher.start(
            "inventory-service",
            "inventory-service",
            inventory_port,
            &service_db("inventory"),
            &options.service_args,
        );
        let payment = launcher.start(
            "payment-service",
            "payment-service",
            payment_port,
            &service_db("payment"),
            &[
                &["--gateway-url".into(), gateway_url.clone()][..],
                &options.payment_args,
                &options.service_args,
            ]
            .concat(),
        );
        let order = launcher.start(
            "order-service",
            "order-service",
            order_port,
            &service_db("order"),
            &[&options.order_args[..], &options.service_args].concat(),
        );
        let mut replicas = Vec::new();
        for n in 0..options.replicas {
            for (service, store, extra) in [
                ("inventory-service", "inventory", Vec::new()),
                (
                    "payment-service",
                    "payment",
                    [
                        &["--gateway-url".into(), gateway_url.clone()][..],
                        &options.payment_args,
                    ]
                    .concat(),
                ),
                ("order-service", "order", options.order_args.clone()),
            ] {
                let port = free_port();
                let process = launcher.start(
                    &format!("{service}-{}", n + 2),
                    service,
                    port,
                    &service_db(store),
                    &[&extra[..], &options.service_args].concat(),
                );
                replicas.push(Replica {
                    service,
                    process,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
        }
        let system = System {
            nats,
            nats_peers,
            replicas,
            order,
            inventory,
            payment,
            gateway,
            order_url: format!("http://127.0.0.1:{order_port}"),
            inventory_url: format!("http://127.0.0.1:{inventory_port}"),
            payment_url: format!("http://127.0.0.1:{payment_port}"),
            gateway_url,
            admin_token,
            http: reqwest::Client::new(),
            db_proxy,
            db,
            pg_server,
            tls,
            _logs: logs,
        };
        for url in [
            &system.gateway_url,
            &system.inventory_url,
            &system.payment_url,
            &system.order_url,
        ] {
            system.wait_ready(url).await;
        }
        for replica in &system.replicas {
            system.wait_ready(&replica.url).await;
        }
        Some(system)
    }

    pub async fn wait_ready(&self, base: &str) {
        let url = format!("{base}/health/ready");
        let ready = tokio::time::timeout(SAGA_DEADLINE, async {
            loop {
                if let Ok(response) = self.http.get(&url).send().await
                    && response.status() == StatusCode::OK
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        if ready.is_err() {
            panic!("{url} not ready after {SAGA_DEADLINE:?}\n{}", self.logs());
        }
    }

    /// The database URL that `service` ("order", "inventory" or "payment") was started with.
    pub fn db_url(&self, service: &str) -> String {
        self.db.url_for(service)
    }

    /// A connection of our own to a service's database (`store`: order, inventory or payment), looking
    /// at the service's tables, to read or change them behind its back.
    pub async fn connect_to(&self, store: &str) -> sqlx::AnyConnection {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db_url(store))
            .await
            .expect("connect to the service's database");
        if self.db.backend() == Backend::Postgres {
            conn.execute(sqlx::AssertSqlSafe(format!(
                "SET search_path TO \"{store}\""
            )))
            .await
            .expect("use the service's schema");
        }
        conn
    }

    /// Runs SQL directly in a service's database, behind the service's back, as a bug or a careless
    /// operator would.
    pub async fn execute_sql(&self, store: &str, sql: &str) {
        use sqlx::{Connection, Executor};
        let mut conn = self.connect_to(store).await;
        conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .expect("run the SQL");
        conn.close().await.expect("close");
    }

    /// Stops every consumer of `store` (order, inventory or payment) from applying events until the
    /// returned block is released, without any error: on SQLite another connection holds the write
    /// lock, on PostgreSQL one holds the inbox table locked, so each event's transaction waits.
    pub async fn block_consumers(&self, store: &str) -> ConsumerBlock {
        use sqlx::Executor;
        let mut conn = self.connect_to(store).await;
        let lock = match self.db.backend() {
            Backend::Sqlite => "PRAGMA busy_timeout = 30000; BEGIN EXCLUSIVE",
            Backend::Postgres => "BEGIN; LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE",
        };
        conn.execute(lock).await.expect("lock the database");
        ConsumerBlock { conn }
    }

    /// Runs `orderflow verify ARGS` against the system's databases (read-only) and gateway.
    pub fn verify(&self, args: &[&str]) -> Output {
        // SQLite URLs of the harness create the file if missing; verify only ever reads.
        let url = |service: &str| self.db_url(service).replace("mode=rwc", "mode=ro");
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("verify")
            .args(["--order-db", &url("order")])
            .args(["--inventory-db", &url("inventory")])
            .args(["--payment-db", &url("payment")])
            .args(["--gateway-url", &self.gateway_url])
            .args(["--nats-url", &self.nats_url()])
            .envs(tls_env(self.tls.as_ref()))
            .args(args)
            .output()
            .expect("run orderflow verify")
    }

    /// Switches the gateway simulator's faults (`{"mode": "down"}`, `{"mode": "ok"}`, ...).
    pub async fn set_gateway_faults(&self, faults: &Value) {
        let response = self
            .http
            .post(format!("{}/admin/faults", self.gateway_url))
            .bearer_auth(&self.admin_token)
            .json(faults)
            .send()
            .await
            .expect("POST /admin/faults");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Runs an inspecting command (`status`, `trace ID`) with the URLs of this system.
    pub fn inspect(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(args)
            .args(["--order-url", &self.order_url])
            .args(["--inventory-url", &self.inventory_url])
            .args(["--payment-url", &self.payment_url])
            .args(["--gateway-url", &self.gateway_url])
            .args(["--nats-url", &self.nats_url()])
            .envs(tls_env(self.tls.as_ref()))
            .output()
            .expect("run orderflow")
    }

    /// Runs `orderflow loadgen --json ARGS` against this system, as its admin (it creates its own
    /// products).
    pub async fn loadgen(&self, args: &[&str]) -> Output {
        self.loadgen_niced(0, args).await
    }

    /// [`System::loadgen`], `nice` lower in CPU priority than the test: a flood's clients would be
    /// on machines of their own, not taking the cores of the system they flood.
    pub async fn loadgen_niced(&self, nice: u8, args: &[&str]) -> Output {
        tokio::process::Command::new("nice")
            .args(["-n", &nice.to_string()])
            .arg(env!("CARGO_BIN_EXE_orderflow"))
            .arg("loadgen")
            .env("ORDERFLOW_ADMIN_TOKEN", &self.admin_token)
            .args(["--order-url", &self.order_url])
            .args(["--inventory-url", &self.inventory_url])
            .args(["--nats-url", &self.nats.url()])
            .arg("--json")
            .args(args)
            .output()
            .await
            .expect("run orderflow loadgen")
    }

    /// Runs verify until it passes: the last consumers (payment's handling of a cancellation, say)
    /// may still be at work when an order already shows its final state.
    pub async fn verified(&self) -> Output {
        self.verified_with(&[]).await
    }

    /// [`System::verified`] for a system whose DLQ holds letters on purpose.
    pub async fn verified_allowing_dead_letters(&self) -> Output {
        self.verified_with(&["--allow-dead-letters"]).await
    }

    async fn verified_with(&self, args: &[&str]) -> Output {
        let deadline = Instant::now() + SAGA_DEADLINE;
        loop {
            let output = self.verify(args);
            if output.status.success() {
                return output;
            }
            if Instant::now() >= deadline {
                panic!(
                    "orderflow verify still fails after {SAGA_DEADLINE:?}: {}\n{}",
                    shown(&output),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn logs(&self) -> String {
        [&self.order, &self.inventory, &self.payment, &self.gateway]
            .into_iter()
            .chain(self.replicas.iter().map(|replica| &replica.process))
            .map(|p| format!("===== {} =====\n{}", p.name(), p.log()))
            .collect()
    }

    pub async fn put_product(&self, id: &str, price_cents: i64, stock: i64) {
        let response = self
            .http
            .put(format!("{}/products/{id}", self.inventory_url))
            .bearer_auth(&self.admin_token)
            .json(&json!({"name": format!("Product {id}"), "price_cents": price_cents, "stock": stock}))
            .send()
            .await
            .expect("PUT /products");
        assert!(
            response.status().is_success(),
            "PUT /products/{id}: {}",
            response.status()
        );
    }

    pub async fn product(&self, id: &str) -> Value {
        self.get_json(&format!("{}/products/{id}", self.inventory_url))
            .await
            .1
    }

    /// Posts an order body as JSON with optional extra headers; returns status, headers and body.
    pub async fn post_order(
        &self,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .post(format!("{}/orders", self.order_url))
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST /orders");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// Places an order and returns its id, asserting the 202.
    pub async fn place(&self, items: Value, payment_method: &str) -> String {
        let (status, _, body) = self
            .post_order(
                &json!({"customer_id": "c-1", "items": items, "payment_method": payment_method}),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "POST /orders: {body}");
        body["order_id"].as_str().expect("order_id").to_owned()
    }

    /// `GET url` with the admin token.
    pub async fn admin_get_json(&self, url: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        let response = self.http.get(url).send().await.expect("GET");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn order(&self, id: &str) -> Value {
        self.get_json(&format!("{}/orders/{id}", self.order_url))
            .await
            .1
    }

    /// Waits until the order leaves `pending`, and returns it.
    pub async fn wait_final(&self, id: &str) -> Value {
        let url = format!("{}/orders/{id}", self.order_url);
        let found = tokio::time::timeout(SAGA_DEADLINE, async {
            loop {
                if let Ok(response) = self.http.get(&url).send().await
                    && let Ok(order) = response.json::<Value>().await
                    && order["status"].as_str().is_some_and(|s| s != "pending")
                {
                    return order;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        match found {
            Ok(order) => order,
            Err(_) => panic!(
                "order {id} still pending after {SAGA_DEADLINE:?}\n{}",
                self.logs()
            ),
        }
    }

    pub async fn timeline_types(&self, id: &str) -> Vec<String> {
        let (_, events) = self
            .get_json(&format!("{}/orders/{id}/events", self.order_url))
            .await;
        events
            .as_array()
            .expect("timeline array")
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub async fn payment(&self, order_id: &str) -> (StatusCode, Value) {
        self.get_json(&format!("{}/payments/{order_id}", self.payment_url))
            .await
    }

    /// The gateway ledger's charges for one order.
    pub async fn charges_for(&self, order_id: &str) -> Vec<Value> {
        let (_, charges) = self
            .get_json(&format!(
                "{}/v1/charges?order_id={order_id}",
                self.gateway_url
            ))
            .await;
        charges.as_array().cloned().unwrap_or_default()
    }

    /// Waits until a product's counters reach the expected (available, reserved, sold): the commit
    /// or release follows the order's final state asynchronously.
    pub async fn wait_stock(&self, id: &str, available: i64, reserved: i64, sold: i64) {
        let url = format!("{}/products/{id}", self.inventory_url);
        let result = tokio::time::timeout(SAGA_DEADLINE, async {
            loop {
                let (_, p) = self.get_json(&url).await;
                if p["available"] == available && p["reserved"] == reserved && p["sold"] == sold {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        if result.is_err() {
            let (_, p) = self.get_json(&url).await;
            panic!(
                "{id}: expected available {available}, reserved {reserved}, sold {sold}; got {p}\n{}",
                self.logs()
            );
        }
    }

    /// Every NATS server of the system, as the services are given them.
    pub fn nats_url(&self) -> String {
        std::iter::once(&self.nats)
            .chain(&self.nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A JetStream client on whichever server of the system answers.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let url = self.nats_url();
        let mut options = async_nats::ConnectOptions::new();
        if let Some(ca) = &self.tls {
            let client = ca.client();
            options = options
                .require_tls(true)
                .add_root_certificates(ca.ca_file())
                .add_client_certificate(client.cert, client.key);
        }
        let client = options
            .connect(platform::config::nats_servers(&url))
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    /// Every message stored in `stream`, oldest first, as (subject, envelope JSON).
    pub async fn stream_events(&self, stream: &str) -> Vec<(String, Value)> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        let info = stream.info().await.expect("stream info").state.clone();
        let mut events = Vec::new();
        for sequence in info.first_sequence..=info.last_sequence {
            if info.messages == 0 {
                break;
            }
            if let Ok(message) = stream.get_raw_message(sequence).await {
                let envelope = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                events.push((message.subject.to_string(), envelope));
            }
        }
        events
    }

    /// Every message stored in `stream`, oldest first, as (payload, headers).
    pub async fn stream_messages(&self, stream: &str) -> Vec<(Vec<u8>, async_nats::HeaderMap)> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        let info = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        if info.messages == 0 {
            return messages;
        }
        for sequence in info.first_sequence..=info.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                messages.push((message.payload.to_vec(), message.headers));
            }
        }
        messages
    }

    /// Events in `stream` about one order.
    pub async fn events_of(&self, stream: &str, order_id: &str) -> Vec<(String, Value)> {
        self.stream_events(stream)
            .await
            .into_iter()
            .filter(|(_, e)| e["order_id"] == order_id)
            .collect()
    }

    /// Waits until a durable consumer has nothing pending and nothing unacknowledged.
    pub async fn wait_consumer_idle(&self, stream: &str, consumer: &str) {
        let js = self.jetstream().await;
        wait_until(
            &format!("consumer {consumer} to be idle"),
            SAGA_DEADLINE,
            || async {
                let stream = js.get_stream(stream).await.ok()?;
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(consumer).await.ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            },
        )
        .await;
    }
}

/// See [`System::block_consumers`].
pub struct ConsumerBlock {
    conn: sqlx::AnyConnection,
}

impl ConsumerBlock {
    pub async fn release(mut self) {
        use sqlx::{Connection, Executor};
        self.conn.execute("ROLLBACK").await.expect("unlock");
        self.conn.close().await.expect("close");
    }
}

/// `url` (postgres://USER@HOST...) with `password` for USER; any other URL as it is.
fn with_password(url: &str, password: &str) -> String {
    match url
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split_once('@'))
    {
        Some((user, host)) if !user.contains(':') => format!("postgres://{user}:{password}@{host}"),
        _ => url.to_owned(),
    }
}

/// A command's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A finished command's status and output, for assertion messages.
pub fn shown(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}
