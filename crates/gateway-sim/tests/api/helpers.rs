//! A simulator per test, and typed request helpers.

use gateway_sim::MIGRATIONS;
use metrics_exporter_prometheus::PrometheusBuilder;
use platform::access::AdminToken;
use platform::db::Db;
use platform::shutdown::ShutdownTrigger;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The admin token of every simulator the tests start.
pub const ADMIN_TOKEN: &str = "gateway-test-admin-token";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    trigger: ShutdownTrigger,
    server: tokio::task::JoinHandle<()>,
    db: Db,
    dir: TempDir,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(dir).await
    }

    /// Starts a gateway on the ledger in `dir`, so a test can restart it on the same data.
    pub async fn spawn_in(dir: TempDir) -> TestApp {
        let url = format!("sqlite://{}/gateway.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url, "gateway", MIGRATIONS).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = platform::shutdown::channel();
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let token = AdminToken::parse(ADMIN_TOKEN).unwrap();
        let server = tokio::spawn(gateway_sim::serve(
            listener,
            db.clone(),
            metrics,
            Some(token),
            platform::server::ServerArgs::default(),
            shutdown,
        ));
        // Every request carries the admin token; the `/v1` routes do not look at it.
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        TestApp {
            address,
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            trigger,
            server,
            db,
            dir,
        }
    }

    pub async fn stop(self) -> TempDir {
        self.trigger.trigger();
        self.server.await.unwrap();
        self.db.close().await;
        self.dir
    }

    /// Asks the server to stop and hands back its task, for tests of how shutdown goes.
    pub fn request_stop(self) -> tokio::task::JoinHandle<()> {
        self.trigger.trigger();
        self.server
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn charge(&self, key: &str, amount_cents: i64, method: &str) -> (u16, Value) {
        self.post(
            "/v1/charges",
            Some(key),
            json!({"amount_cents": amount_cents, "payment_method": method, "order_id": format!("order-{key}")}),
        )
        .await
    }

    pub async fn refund(&self, key: &str, charge: &str) -> (u16, Value) {
        self.post("/v1/refunds", Some(key), json!({ "charge": charge }))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn list(&self, path: &str) -> Vec<Value> {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Switches the fault mode and checks the answer echoes it.
    pub async fn set_faults(&self, settings: Value) -> Value {
        let (status, body) = self.post("/admin/faults", None, settings.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["mode"], settings["mode"]);
        body
    }
}
