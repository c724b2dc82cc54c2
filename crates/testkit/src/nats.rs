//! The pinned nats-server, started per test (modelled on nats.rs's
//! `nats-server` test crate).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, workspace_root};

/// Overrides where the nats-server binary is looked up.
const BINARY_ENV: &str = "ORDERFLOW_NATS_SERVER";
/// How long a freshly spawned server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many fresh ports `start` tries before giving up.
const START_ATTEMPTS: usize = 3;
/// How long `restart` keeps retrying when the old port is not yet bindable.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between `restart` attempts whose bind failed.
const RESTART_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long `stop` lets the server shut down gracefully before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh cluster may take to elect its JetStream leader.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line nats-server logs once JetStream is up and clients are accepted.
const READY_LINE: &str = "Server is ready";

/// A real nats-server with JetStream, private to one test.
///
/// Tests run against the pinned server binary rather than a mock because the
/// behaviour under test (durable streams, redelivery, restarts) *is* the
/// server's behaviour. Each instance gets a free port and its own store in a
/// temp dir, so tests run in parallel without seeing each other's streams, and
/// never touch a system nats-server on 4222.
///
/// The child is a `std::process::Child` (not tokio's) so that `Drop` can kill
/// and reap it synchronously: no server outlives its test, even on panic.
/// It stays in the test's process group so that Ctrl-C on `cargo test` also
/// stops it.
pub struct NatsServer {
    // Declared (and therefore dropped) before `dir`; `Drop` kills it anyway
    // before any field is dropped.
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    store: PathBuf,
    log_path: PathBuf,
    /// In a cluster, its name and routes; with TLS, its certificates: as flags.
    extra_args: Vec<String>,
    /// `n1`, `n2`, ... in a cluster; `nats` alone.
    name: String,
    /// Owns the store and the log; removed when the server is dropped.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a fresh server on a free port with an empty JetStream store and
    /// waits until it accepts connections.
    ///
    /// Panics (with the server log) if the binary is missing or the server
    /// doesn't become ready: a test can't do anything useful without it.
    pub async fn start() -> NatsServer {
        NatsServer::start_named("nats", Vec::new()).await
    }

    /// Starts a server named `name` with `extra_args` on a free port, as [`NatsServer::start`].
    async fn start_named(name: &str, extra_args: Vec<String>) -> NatsServer {
        let mut server = NatsServer::unstarted(name, extra_args);

        // The free port may be taken by someone else between `free_port` and
        // the server's bind; the server then exits and we try another port.
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            match server.launch(port).await {
                Ok(child) => {
                    server.child = Some(child);
                    server.port = port;
                    return server;
                }
                Err(status) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "testkit: nats-server {name} on port {port} exited during startup ({status}); retrying on another port"
                    );
                }
                Err(status) => panic!(
                    "nats-server {name} exited during startup ({status}) on {START_ATTEMPTS} different ports; log:\n{}",
                    server.log()
                ),
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// [`NatsServer::start`], taking TLS connections only, with the server certificate of `ca`,
    /// and only from clients presenting a certificate `ca` signed (mutual TLS).
    pub async fn start_tls(ca: &crate::TestCa) -> NatsServer {
        let (server, ca_file) = (ca.server(), ca.ca_file());
        let args = [
            "--tls".to_owned(),
            "--tlscert".to_owned(),
            server.cert.display().to_string(),
            "--tlskey".to_owned(),
            server.key.display().to_string(),
            "--tlsverify".to_owned(),
            "--tlscacert".to_owned(),
            ca_file.display().to_string(),
        ];
        NatsServer::start_named("nats", args.to_vec()).await
    }

    /// A server not started yet, with its own temp dir.
    fn unstarted(name: &str, extra_args: Vec<String>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-nats-")
            .tempdir()
            .expect("creating a temp dir for nats-server failed; is TMPDIR writable?");
        NatsServer {
            child: None,
            port: 0,
            binary: nats_server_binary(),
            store: dir.path().join("js"),
            log_path: dir.path().join("nats-server.log"),
            extra_args,
            name: name.to_owned(),
            _dir: dir,
        }
    }

    /// A JetStream cluster of `size` servers on loopback (`n1`, `n2`, ...), routed to each other,
    /// each with its own store; returns once it can place a stream on all of them, so replicated
    /// streams can be created at once. Panics with the logs if it cannot.
    pub async fn start_cluster(size: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        for (n, route) in routes.iter().enumerate() {
            let name = format!("n{}", n + 1);
            let args = vec![
                "--server_name".to_owned(),
                name.clone(),
                "--cluster_name".to_owned(),
                "orderflow-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                route_list.clone(),
            ];
            let node = NatsServer::start_named(&name, args).await;
            nodes.push(node);
        }
        let client = nodes[0].client().await;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        // Ready when it can place a stream on every node.
        let probe = async_nats::jetstream::stream::Config {
            name: "TESTKIT_CLUSTER_PROBE".to_owned(),
            subjects: vec!["testkit.cluster.probe".to_owned()],
            num_replicas: size,
            ..Default::default()
        };
        while js.create_stream(probe.clone()).await.is_err() {
            if Instant::now() >= deadline {
                let logs: Vec<String> = nodes.iter().map(NatsServer::log).collect();
                panic!(
                    "the nats-server cluster elected no JetStream leader within \
                     {CLUSTER_READY_TIMEOUT:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        js.delete_stream("TESTKIT_CLUSTER_PROBE")
            .await
            .expect("delete the probe stream");
        nodes
    }

    /// The server's name (`n1`, ... in a cluster), as stream infos give their leader.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL, e.g. `nats://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on; stable across [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`), kept across restarts so tests
    /// can check durability.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The file that collects the server's stdout and stderr across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The server log so far, for assertions and failure messages.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Connects a new client. A convenience for tests: panics if the server
    /// can't be reached, since the server is supposed to be up.
    pub async fn client(&self) -> async_nats::Client {
        let url = self.url();
        async_nats::connect(&url).await.unwrap_or_else(|error| {
            panic!("connecting to test nats-server at {url} failed: {error}")
        })
    }

    /// The pid of the running server, if any; lets tests check that no
    /// process is left behind.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is currently alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server abruptly (SIGKILL) and waits until it is gone,
    /// simulating a crash: nothing is flushed or shut down cleanly.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Shuts the server down gracefully (SIGTERM), escalating to SIGKILL if it
    /// hasn't exited within 5 s so a stuck server can't hang the test.
    ///
    /// Blocks the calling thread while waiting.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = libc::pid_t::try_from(child.id()).expect("child pid does not fit in pid_t");
        // SAFETY: `kill` has no memory-safety preconditions. `pid` is our own
        // child, which has not been reaped (try_wait above returned None), so
        // the pid cannot have been reused by an unrelated process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            eprintln!(
                "testkit: SIGTERM to nats-server (pid {pid}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(error) => {
                    eprintln!("testkit: waiting for nats-server (pid {pid}) failed: {error}");
                    break;
                }
            }
        }
        eprintln!(
            "testkit: nats-server (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL"
        );
        kill_and_reap(&mut child);
    }

    /// Starts the server again on the *same* port and store, so clients can
    /// use the same URL and durable state is recovered from disk. Kills the
    /// current process first if it is still running.
    ///
    /// The old port may be briefly unbindable, so binding is retried for a few
    /// seconds. Panics (with the log) if the server doesn't come back.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            match self.launch(self.port).await {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(status) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "nats-server could not be restarted on port {} within {RESTART_BIND_TIMEOUT:?} (last exit: {status}); log:\n{}",
                            self.port,
                            self.log()
                        );
                    }
                    tokio::time::sleep(RESTART_RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Spawns the server on `port` and waits until it is ready.
    ///
    /// "Ready" means: this process logged that it is ready, a TCP connect to
    /// the port succeeds, and the process is still alive. The log check
    /// matters because a TCP connect alone could reach *another* process that
    /// won the race for the port while ours is about to exit.
    ///
    /// Returns the exit status if the process exited before becoming ready
    /// (typically because the port was taken), which is worth retrying.
    async fn launch(&self, port: u16) -> Result<Child, ExitStatus> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|error| {
                panic!(
                    "opening nats-server log {} failed: {error}",
                    self.log_path.display()
                )
            });
        // Only log lines written after this point belong to the new process.
        let log_offset = log
            .metadata()
            .unwrap_or_else(|error| {
                panic!(
                    "reading metadata of {} failed: {error}",
                    self.log_path.display()
                )
            })
            .len();
        let stderr = log
            .try_clone()
            .expect("duplicating the nats-server log file handle failed");

        let mut child = Command::new(&self.binary)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&self.store)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "spawning {} failed: {error}; run `make tools` (or `make test`) to install the pinned nats-server",
                    self.binary.display()
                )
            });
        let ready_line_prefix = format!("[{}] ", child.id());

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Err(status),
                Ok(None) => {}
                Err(error) => {
                    kill_and_reap(&mut child);
                    panic!(
                        "waiting for nats-server failed: {error}; log:\n{}",
                        self.log()
                    );
                }
            }
            if logged_ready(&self.log_path, log_offset, &ready_line_prefix)
                && tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .await
                    .is_ok()
                && matches!(child.try_wait(), Ok(None))
            {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                panic!(
                    "nats-server did not become ready on port {port} within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds the pinned nats-server binary, or panics with how to install it.
fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{BINARY_ENV} points to {}, which does not exist; unset it or point it to a nats-server binary",
            path.display()
        );
        return path;
    }
    let path = workspace_root().join(".tools/nats-server/bin/nats-server");
    assert!(
        path.is_file(),
        "nats-server not found at {}: run `make tools` (or `make test`) to install the pinned nats-server",
        path.display()
    );
    path
}

/// SIGKILLs the child and reaps it. Errors are reported, not raised: this runs
/// in `Drop` and cleanup paths where there is nothing better to do.
fn kill_and_reap(child: &mut Child) {
    if let Err(error) = child.kill() {
        eprintln!(
            "testkit: killing nats-server (pid {}) failed: {error}",
            child.id()
        );
    }
    if let Err(error) = child.wait() {
        eprintln!(
            "testkit: reaping nats-server (pid {}) failed: {error}",
            child.id()
        );
    }
}

/// Whether a line starting with `line_prefix` (the server's `[pid] ` tag) and
/// announcing readiness was written to `log_path` after `offset`.
fn logged_ready(log_path: &Path, offset: u64, line_prefix: &str) -> bool {
    let Ok(mut file) = File::open(log_path) else {
        return false;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return false;
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .any(|line| line.starts_with(line_prefix) && line.ends_with(READY_LINE))
}

/// Reads a log file for display; a missing or unreadable file yields a note
/// instead of an error because this only feeds messages.
fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => format!("<could not read {}: {error}>", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn launch_reports_a_taken_port_as_exit() {
        // Holding the port makes the server fail to bind, as in a port race.
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("local addr").port();
        let mut server = NatsServer::start().await;
        server.kill();
        if let Ok(mut child) = server.launch(port).await {
            kill_and_reap(&mut child);
            panic!("expected an early exit; log:\n{}", server.log());
        }
        // The server still comes back on its own port afterwards.
        server.restart().await;
        assert!(server.is_running());
    }
}
