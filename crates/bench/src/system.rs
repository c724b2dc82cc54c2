//! One orderflow system under measurement: `orderflow up` in a temp data dir on free ports, the
//! processes it runs (sampled for memory and CPU), load from `orderflow loadgen`, and `orderflow
//! verify` at the end, without which no figure counts. [`UnderTest`] is what the suite needs of any
//! system, so a benchmark peer (`crate::peers`) is measured by the same code.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::ChildProcess;
use tokio::process::Command;
use tokio::time::Instant;

/// How long `up` may take until every service answers ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a system may take to pass `verify` once the load stopped (the last compensations).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often each process's memory and CPU are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Which storage and broker durability a system runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub name: &'static str,
    /// PostgreSQL URL of a database of its own; SQLite files in the data dir when `None`.
    pub database_url: Option<String>,
    pub nats_sync_always: bool,
}

/// Memory and CPU of one process, as sampled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub rss_idle_kb: u64,
    pub rss_peak_kb: u64,
    /// CPU time (user + system) since the process started, in clock ticks.
    #[serde(skip)]
    pub cpu_ticks: u64,
}

pub struct System {
    pub setup: Setup,
    up: ChildProcess,
    dir: tempfile::TempDir,
    port_base: u16,
    nats_port: u16,
    orderflow: PathBuf,
    sampler: Sampler,
}

/// What the suite needs of a running system: load it, check it, and read what it used.
pub trait UnderTest {
    /// Runs `orderflow loadgen ARGS --json` against the system and returns its report.
    async fn loadgen(&self, args: &[String]) -> Result<Value>;
    /// Whether the system's books balance once it is quiet; no figure counts otherwise.
    async fn verify(&self) -> Result<Verdict>;
    /// Memory and CPU of each process so far, by name.
    fn usage(&self) -> BTreeMap<String, Usage>;
    /// Bytes of log the processes have written so far.
    fn log_bytes(&self) -> u64;
    /// Stops every process of the system and waits for them.
    async fn stop(self);
}

impl System {
    pub async fn start(orderflow: &Path, setup: Setup) -> Result<System> {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-bench-")
            .tempdir()?;
        let port_base = testkit::free_ports(4);
        let nats_port = testkit::free_port();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--http-port-base".into(),
            port_base.to_string(),
            "--nats-port".into(),
            nats_port.to_string(),
            "--nats-server".into(),
            nats_server().display().to_string(),
            "--no-restart".into(),
            "--nats-sync".into(),
            if setup.nats_sync_always {
                "always"
            } else {
                "default"
            }
            .into(),
        ];
        if let Some(url) = &setup.database_url {
            args.extend(["--database-url".into(), url.clone()]);
        }
        // One load generator on loopback is every client at once: the per-client limit would
        // measure itself, not the saga.
        let env = [("ORDERFLOW_RATE_LIMIT".to_owned(), "0".to_owned())];
        let up = ChildProcess::spawn("up", orderflow, &args, &env, dir.path());
        // `up` itself only supervises; its children are the system.
        let sampler = Sampler::start(up.pid(), false);
        let mut system = System {
            setup,
            up,
            dir,
            port_base,
            nats_port,
            orderflow: orderflow.to_owned(),
            sampler,
        };
        system.wait_ready().await?;
        system.sampler.mark_idle().await;
        Ok(system)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let urls: Vec<String> = (self.port_base..self.port_base + 4)
            .map(|port| format!("http://127.0.0.1:{port}/health/ready"))
            .collect();
        wait_ready(&mut self.up, "orderflow up", &http, &urls, READY_TIMEOUT).await
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// `orderflow verify` until it passes or [`VERIFY_TIMEOUT`]: the report of the last try.
    async fn verify_once_quiet(&self) -> Result<Verdict> {
        let deadline = Instant::now() + VERIFY_TIMEOUT;
        loop {
            let mut command = Command::new(&self.orderflow);
            command
                .arg("verify")
                .arg("--data-dir")
                .arg(self.dir.path())
                .args(["--http-port-base", &self.port_base.to_string()])
                .args(["--nats-url", &self.nats_url()]);
            if let Some(url) = &self.setup.database_url {
                command.args(["--database-url", url]);
            }
            let output = command
                .output()
                .await
                .context("cannot run orderflow verify")?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            if output.status.success() || Instant::now() > deadline {
                return Ok(Verdict {
                    passed: output.status.success(),
                    output: text,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl UnderTest for System {
    async fn loadgen(&self, args: &[String]) -> Result<Value> {
        let target = [
            "--http-port-base".to_owned(),
            self.port_base.to_string(),
            "--nats-url".to_owned(),
            self.nats_url(),
        ];
        loadgen(&self.orderflow, &target, Some(self.dir.path()), args).await
    }

    async fn verify(&self) -> Result<Verdict> {
        self.verify_once_quiet().await
    }

    fn usage(&self) -> BTreeMap<String, Usage> {
        self.sampler.usage()
    }

    fn log_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.path().join("logs"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.metadata().ok())
                    .map(|metadata| metadata.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stops `up` with SIGTERM (it stops its children in order, as Ctrl-C would) and waits for it.
    async fn stop(self) {
        self.sampler.stop();
        let mut up = self.up;
        let _ = tokio::task::spawn_blocking(move || up.terminate()).await;
        // The data dir goes only once nothing writes to it any more.
        drop(self.dir);
    }
}

/// Waits until every URL answers 200, failing with the process's log when it exits first or
/// `timeout` passes.
pub async fn wait_ready(
    process: &mut ChildProcess,
    name: &str,
    http: &reqwest::Client,
    urls: &[String],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for url in urls {
        loop {
            if let Some(status) = process.exit_status() {
                bail!("{name} exited ({status}) during start:\n{}", process.log());
            }
            let ready = http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready at {url} after {timeout:?}:\n{}",
                    process.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Runs `orderflow loadgen TARGET ARGS --json` and returns its report. `data_dir` is where
/// `orderflow up` saved the admin token that creating products takes (none for a peer).
pub async fn loadgen(
    orderflow: &Path,
    target: &[String],
    data_dir: Option<&Path>,
    args: &[String],
) -> Result<Value> {
    let mut command = Command::new(orderflow);
    if let Some(dir) = data_dir {
        command.env("ORDERFLOW_DATA_DIR", dir);
    }
    let output = command
        .arg("loadgen")
        .args(target)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run orderflow loadgen")?;
    // Exit 1 only says that some order did not end well; the report says which, and is kept.
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "orderflow loadgen printed no report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub struct Verdict {
    pub passed: bool,
    pub output: String,
}

/// The pinned nats-server that `make tools` installs.
pub fn nats_server() -> PathBuf {
    std::env::var_os("ORDERFLOW_NATS_SERVER")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::workspace_root().join(".tools/nats-server/bin/nats-server"))
}

/// Samples the processes of a system every [`SAMPLE_EVERY`]: peak RSS and CPU ticks per name.
pub struct Sampler {
    usage: Arc<Mutex<BTreeMap<String, Usage>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Samples every descendant of `root`, and `root` itself when `with_root`.
    pub fn start(root: u32, with_root: bool) -> Sampler {
        let usage = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(sample(root, with_root, usage.clone()));
        Sampler { usage, task }
    }

    /// Records what the processes hold now as their idle memory: call it after start, before load.
    pub async fn mark_idle(&self) {
        tokio::time::sleep(SAMPLE_EVERY * 3).await;
        for usage in self.usage.lock().expect("not poisoned").values_mut() {
            usage.rss_idle_kb = usage.rss_peak_kb;
        }
    }

    pub fn usage(&self) -> BTreeMap<String, Usage> {
        self.usage.lock().expect("not poisoned").clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn sample(root: u32, with_root: bool, usage: Arc<Mutex<BTreeMap<String, Usage>>>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    loop {
        ticks.tick().await;
        for (name, rss_kb, cpu_ticks) in processes_under(root, with_root) {
            let mut usage = usage.lock().expect("not poisoned");
            let entry = usage.entry(name).or_default();
            entry.rss_peak_kb = entry.rss_peak_kb.max(rss_kb);
            entry.cpu_ticks = entry.cpu_ticks.max(cpu_ticks);
        }
    }
}

/// One live process as /proc shows it.
struct Process {
    pid: u32,
    parent: u32,
    cpu_ticks: u64,
}

/// (name, RSS in KiB, CPU ticks) of each live descendant of `root` (and of `root` when `with_root`).
/// orderflow processes are named by their subcommand, others by their program.
fn processes_under(root: u32, with_root: bool) -> Vec<(String, u64, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<Process> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which is in parentheses and may contain spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let parent = fields.get(1)?.parse::<u32>().ok()?;
            let cpu_ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(Process {
                pid,
                parent,
                cpu_ticks,
            })
        })
        .collect();
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(all.iter().filter(|p| p.parent == parent).map(|p| p.pid));
        next += 1;
    }
    all.iter()
        .filter(|process| tree.contains(&process.pid) && (with_root || process.pid != root))
        .filter_map(|process| {
            let pid = process.pid;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let program = Path::new(args.first()?).file_name()?.to_str()?.to_owned();
            let name = match args.get(1) {
                Some(subcommand) if program == "orderflow" => subcommand.clone(),
                _ => program,
            };
            Some((name, testkit::rss_kb(pid)?, process.cpu_ticks))
        })
        .collect()
}

/// Clock ticks per second of the CPU times in /proc.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
