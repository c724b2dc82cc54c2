//! A real Prometheus (Debian's package, unpacked into `.tools/prometheus` by `make tools`), started per
//! test on a free port with its own storage, scraping the services of one test and evaluating the
//! project's alert rules, so that dashboards and alerts are checked against what a running system
//! really exports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::{free_port, wait_until, workspace_root};

/// Overrides where the prometheus binary is looked up (promtool is expected beside it).
const BINARY_ENV: &str = "ORDERFLOW_PROMETHEUS";
/// Set to 1 (as CI does) to fail instead of skipping when Prometheus is not installed.
const REQUIRE_ENV: &str = "ORDERFLOW_REQUIRE_PROMETHEUS";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Prometheus private to one test; killed when dropped.
pub struct Prometheus {
    child: Child,
    url: String,
    binary: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

/// Something Prometheus scrapes: its `service` label and its base URL (`http://host:port`).
pub struct ScrapeTarget<'a> {
    pub service: &'a str,
    pub url: &'a str,
}

impl Prometheus {
    /// The binary, or `None` (having said why the test is skipped) when it is not installed and
    /// not required.
    pub fn binary() -> Option<PathBuf> {
        let binary = std::env::var_os(BINARY_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".tools/prometheus/usr/bin/prometheus"));
        if binary.is_file() {
            return Some(binary);
        }
        let why = format!(
            "Prometheus not found at {} (set {BINARY_ENV}, or run `make tools`, which unpacks \
             Debian's prometheus package there)",
            binary.display()
        );
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{why}; {REQUIRE_ENV}=1 requires it");
        }
        eprintln!("skipping: {why}");
        None
    }

    /// promtool, from the same package.
    pub fn promtool(&self) -> PathBuf {
        self.binary.with_file_name("promtool")
    }

    /// Starts Prometheus scraping `targets` every second and evaluating `rule_files` every second,
    /// and waits until it is ready. `None` when it is not installed (see [`Prometheus::binary`]).
    pub async fn start(targets: &[ScrapeTarget<'_>], rule_files: &[&Path]) -> Option<Prometheus> {
        let binary = Self::binary()?;
        let dir = tempfile::tempdir().expect("create a temp dir for Prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str("rule_files:\n");
        for file in rule_files {
            config.push_str(&format!("  - {:?}\n", file.display().to_string()));
        }
        config.push_str("scrape_configs:\n  - job_name: orderflow\n    static_configs:\n");
        for target in targets {
            let address = target
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/');
            config.push_str(&format!(
                "      - targets: [{address:?}]\n        labels: {{service: {:?}}}\n",
                target.service
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the Prometheus config");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("create the Prometheus log");
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone the log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            binary,
            log_path,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        wait_until("Prometheus to be ready", READY_TIMEOUT, || async {
            let response = reqwest::get(&ready).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        Some(prometheus)
    }

    /// The result of an instant query (`data.result`); panics on a query Prometheus refuses.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", expr)])
                .expect("a query URL");
        let response: Value = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(
            response["status"], "success",
            "Prometheus refused `{expr}`: {response}"
        );
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
