//! `orderflow up`: the whole system on one machine. Starts nats-server, the gateway simulator and the three
//! services as child processes of this one, waits until each is ready, seeds a demo catalog, restarts a
//! child that dies, and stops everything in order on Ctrl-C. Children are plain processes of the same
//! binary, so what runs here is exactly what runs in production, one process per service.

use crate::admin::UpToken;
use crate::demo::Catalog;
use crate::logs::LogReader;
use crate::status::Colour;
use anyhow::{Context, Result, bail};
use platform::access::AdminToken;
use platform::backoff::{Backoff, Retries};
use platform::telemetry::error_chain;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::IsTerminal;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long nats-server may take to accept connections.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a service may take to report ready (it waits for its database and NATS, and migrates).
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long all children together get to stop after SIGTERM before the stragglers are killed: the
/// services' own `--shutdown-grace` (20 s unless set), then the gateway and the broker.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a child's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;
/// Where the HTTP ports start unless told otherwise (order-service's conventional port).
pub(crate) const DEFAULT_HTTP_PORT_BASE: u16 = 8080;
/// The line nats-server logs once JetStream is up and clients are accepted.
const NATS_READY_LINE: &str = "Server is ready";
/// The wait before restarting a child that exited: 250 ms, doubled for each exit in a row, up to 5 s (a
/// child that keeps dying is retried this often, forever). No jitter: one supervisor restarts its own
/// child, nobody retries in step with it, and round numbers read better in its output.
const RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).without_jitter();
/// A child that ran this long before exiting was not crash-looping: its next restart waits the least again.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(30);

/// Run the whole system locally: nats-server, the gateway simulator and the three services.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the SQLite databases, the NATS store (nats/) and the logs (logs/<process>.log).
    /// Kept between runs: nothing in it is ever deleted.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./.orderflow")]
    pub data_dir: PathBuf,
    /// First of four consecutive HTTP ports: order-service on it, inventory-service on +1,
    /// payment-service on +2, the gateway simulator on +3.
    #[arg(long, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    pub http_port_base: u16,
    /// Port of the nats-server that `up` starts (on 127.0.0.1). Not NATS's usual 4222 on purpose: an
    /// unrelated nats-server often runs there, and `up` never attaches to a server it did not start.
    #[arg(long, env = "ORDERFLOW_NATS_PORT", default_value_t = 4223)]
    pub nats_port: u16,
    /// Use this running NATS server (with JetStream), e.g. nats://127.0.0.1:4222, instead of starting one.
    #[arg(long, env = "ORDERFLOW_UP_NATS_URL", value_parser = platform::config::NATS_URLS)]
    pub nats_url: Option<String>,
    /// The nats-server binary to start: the pinned version that `make tools` installs.
    #[arg(
        long,
        env = "ORDERFLOW_NATS_SERVER",
        default_value = ".tools/nats-server/bin/nats-server"
    )]
    pub nats_server: PathBuf,
    /// A postgres:// URL for the three services (each keeps its tables in its own schema).
    /// [default: SQLite files in the data dir; the gateway simulator always uses SQLite there]
    #[arg(long, env = "ORDERFLOW_UP_DATABASE_URL", value_parser = platform::config::DATABASE_URL)]
    pub database_url: Option<String>,
    /// When the nats-server that `up` starts writes JetStream data to disk. `default`: on an interval
    /// (2 minutes), so a power loss (not a crash of the process) can lose acknowledged events;
    /// `always`: before acknowledging each write, which survives power loss at a large cost in
    /// throughput. See "Durability" in the README.
    #[arg(long, env = "ORDERFLOW_NATS_SYNC", value_enum, default_value_t = NatsSync::Default)]
    pub nats_sync: NatsSync,
    /// Stop everything and exit non-zero when a child exits on its own, instead of restarting it
    /// (after a backoff of 250 ms doubling up to 5 s). For the environment variable, 0/false/no/off mean no.
    #[arg(long, env = "ORDERFLOW_NO_RESTART", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_restart: bool,
    /// Instances of each service (1 to 9), sharing their database and durable consumers; needs
    /// --database-url postgres://…. The further instances listen after the gateway simulator:
    /// order-service, inventory-service and payment-service on --http-port-base + 4, 5, 6, then
    /// 7, 8, 9, ... `orderflow status --replicas N` shows them all.
    #[arg(long, env = "ORDERFLOW_REPLICAS", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
    /// NATS servers `up` starts (1, 3 or 5): more than one form a JetStream cluster on --nats-port
    /// and the ports after it (clients first, then routes), and every stream is stored on all of
    /// them (ORDERFLOW_STREAM_REPLICAS).
    #[arg(long, env = "ORDERFLOW_NATS_CLUSTER", default_value_t = 1,
        value_parser = nats_cluster_size)]
    pub nats_cluster: u16,
    /// The admin token the services and the gateway simulator require for admin operations
    /// (catalog writes, faults). Prefer the environment variable: a flag shows in `ps`.
    /// [default: the one saved in the data dir as admin-token, or a new one saved there]
    #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN", hide_env_values = true,
        value_parser = AdminToken::parse)]
    pub admin_token: Option<AdminToken>,
}

/// `--nats-sync`: JetStream's `sync_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NatsSync {
    Default,
    Always,
}

/// The HTTP ports of one running system, all derived from one base so that several systems (or a
/// system and the tests) can run side by side by choosing another base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    pub order: u16,
    pub inventory: u16,
    pub payment: u16,
    pub gateway: u16,
}

impl Ports {
    pub(crate) fn from_base(base: u16) -> Result<Ports> {
        let offset = |n: u16| {
            base.checked_add(n).filter(|_| base != 0).with_context(|| {
                format!("--http-port-base must be between 1 and 65532, not {base}")
            })
        };
        Ok(Ports {
            order: offset(0)?,
            inventory: offset(1)?,
            payment: offset(2)?,
            gateway: offset(3)?,
        })
    }

    /// The order, inventory and payment ports of a service's `instance` (1 is the base layout): the
    /// further ones follow the gateway simulator, three ports each.
    pub(crate) fn instance(&self, instance: u16) -> Result<[u16; 3]> {
        if instance <= 1 {
            return Ok([self.order, self.inventory, self.payment]);
        }
        let first = (instance - 2)
            .checked_mul(3)
            .and_then(|offset| self.gateway.checked_add(1 + offset))
            .filter(|first| first.checked_add(2).is_some())
            .with_context(|| {
                format!(
                    "instance {instance} has no ports above --http-port-base {}; choose a lower one",
                    self.order
                )
            })?;
        Ok([first, first + 1, first + 2])
    }

    /// Every HTTP port of a system with `replicas` instances of each service.
    fn all(&self, replicas: u16) -> Result<Vec<(u16, String)>> {
        let mut ports = vec![(self.gateway, "gateway-sim".to_owned())];
        for instance in 1..=replicas {
            let [order, inventory, payment] = self.instance(instance)?;
            for (port, service) in [
                (order, "order-service"),
                (inventory, "inventory-service"),
                (payment, "payment-service"),
            ] {
                ports.push((port, instance_name(service, instance)));
            }
        }
        Ok(ports)
    }
}

/// `order-service` for the first instance, `order-service-2` for the second, ...
pub(crate) fn instance_name(service: &str, instance: u16) -> String {
    if instance <= 1 {
        service.to_owned()
    } else {
        format!("{service}-{instance}")
    }
}

/// `--nats-cluster`: an odd number of servers, so that a majority survives the loss of some.
fn nats_cluster_size(raw: &str) -> Result<u16, String> {
    match raw.parse() {
        Ok(size @ (1 | 3 | 5)) => Ok(size),
        _ => Err("must be 1, 3 or 5 (a cluster needs a majority of its servers)".to_owned()),
    }
}

/// The base URL of something listening on this machine.
pub(crate) fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// An HTTP client for talking to our own processes on 127.0.0.1: a developer's HTTP(S)_PROXY must not
/// reroute those requests.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot create an HTTP client")
}

/// Where the NATS server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nats {
    /// Started and stopped by `up`.
    Own {
        binary: PathBuf,
        /// The first server's client port; a cluster's others follow it, then their route ports.
        port: u16,
        store: PathBuf,
        sync: NatsSync,
        /// How many servers: 1, or a cluster of 3 or 5.
        servers: u16,
    },
    /// Someone else's; `up` only passes its URL on.
    External(String),
}

/// Everything `up` will start, decided from the flags before anything runs.
#[derive(Debug, Clone)]
struct Plan {
    data_dir: PathBuf,
    logs_dir: PathBuf,
    ports: Ports,
    nats: Nats,
    database_url: Option<String>,
    /// Whether a child that exits on its own is started again (else everything stops).
    restart: bool,
    /// Instances of each service.
    replicas: u16,
    /// Given to the gateway simulator and the services (as `ORDERFLOW_ADMIN_TOKEN`).
    admin: UpToken,
    /// The users of `up`'s own NATS servers and their passwords (see [`crate::broker_config`]);
    /// each service connects as its own.
    nats_users: Vec<(&'static str, String)>,
}

impl Plan {
    fn new(args: &Args, data_dir: PathBuf, admin: UpToken) -> Result<Plan> {
        let ports = Ports::from_base(args.http_port_base)?;
        if data_dir.to_str().is_none_or(|dir| dir.contains('?')) {
            bail!(
                "the data dir {} cannot be used in a database URL; pick a path without '?' that is valid UTF-8",
                data_dir.display()
            );
        }
        let http_ports = ports.all(args.replicas)?;
        let nats = match &args.nats_url {
            Some(url) => Nats::External(url.clone()),
            None => {
                // Client ports, then route ports.
                let nats_ports = (0..args.nats_cluster * 2)
                    .map(|n| args.nats_port.checked_add(n))
                    .collect::<Option<Vec<u16>>>()
                    .context(
                        "--nats-port leaves no room for the cluster's ports; choose a lower one",
                    )?;
                if let Some((port, user)) = http_ports
                    .iter()
                    .find(|(port, _)| nats_ports.contains(port))
                {
                    bail!(
                        "NATS would use port {port}, which {user} listens on; pick another --nats-port \
                         or --http-port-base"
                    );
                }
                Nats::Own {
                    binary: args.nats_server.clone(),
                    port: args.nats_port,
                    store: data_dir.join("nats"),
                    sync: args.nats_sync,
                    servers: args.nats_cluster,
                }
            }
        };
        if args.replicas > 1 && args.database_url.is_none() {
            bail!(
                "--replicas {} needs --database-url postgres://…: the instances of a service share one \
                 database, and a SQLite file has one writer",
                args.replicas
            );
        }
        if let Some(url) = &args.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!(
                "--database-url must be a postgres:// URL (SQLite files in the data dir are the default), not {}",
                platform::config::redact(url)
            );
        }
        Ok(Plan {
            logs_dir: data_dir.join("logs"),
            data_dir,
            ports,
            nats,
            database_url: args.database_url.clone(),
            restart: !args.no_restart,
            replicas: args.replicas,
            admin,
            nats_users: Vec::new(),
        })
    }

    fn nats_url(&self) -> String {
        match &self.nats {
            Nats::Own { port, servers, .. } => (0..*servers)
                .map(|n| format!("nats://127.0.0.1:{}", port + n))
                .collect::<Vec<_>>()
                .join(","),
            Nats::External(url) => url.clone(),
        }
    }

    /// On how many servers the services store each stream: all of `up`'s own cluster.
    fn stream_replicas(&self) -> Option<u16> {
        match &self.nats {
            Nats::Own { servers, .. } if *servers > 1 => Some(*servers),
            _ => None,
        }
    }

    fn sqlite_url(&self, store: &str) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.data_dir.join(format!("{store}.db")).display()
        )
    }

    /// The nats-server configuration for the settings that have no flag.
    fn nats_config_path(&self) -> PathBuf {
        self.data_dir.join("nats-server.conf")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{name}.log"))
    }

    /// Every child in start order: each only needs those before it.
    fn child_specs(&self, exe: &Path) -> Vec<ChildSpec> {
        self.nats_specs()
            .into_iter()
            .chain(self.service_specs(exe))
            .collect()
    }

    /// The nats-server children, if `up` runs its own: one, or a routed cluster (`nats-1`, ...,
    /// each with its store under nats/).
    fn nats_specs(&self) -> Vec<ChildSpec> {
        let Nats::Own {
            binary,
            port,
            store,
            sync: _,
            servers,
        } = &self.nats
        else {
            return Vec::new();
        };
        let routes = (0..*servers)
            .map(|n| format!("nats-route://127.0.0.1:{}", port + servers + n))
            .collect::<Vec<_>>()
            .join(",");
        (0..*servers)
            .map(|n| {
                let client_port = port + n;
                let (name, store) = if *servers == 1 {
                    ("nats-server".to_owned(), store.clone())
                } else {
                    (format!("nats-{}", n + 1), store.join(format!("n{}", n + 1)))
                };
                let mut args: Vec<OsString> = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client_port.to_string().into(),
                    "-js".into(),
                    "-sd".into(),
                    store.into_os_string(),
                ];
                if *servers > 1 {
                    args.extend(
                        [
                            "--server_name".to_owned(),
                            name.clone(),
                            "--cluster_name".to_owned(),
                            "orderflow".to_owned(),
                            "--cluster".to_owned(),
                            format!("nats://127.0.0.1:{}", port + servers + n),
                            "--routes".to_owned(),
                            routes.clone(),
                        ]
                        .map(OsString::from),
                    );
                }
                // Users and `sync_interval` have no command-line flags; `run` writes this file.
                args.extend(["-c".into(), self.nats_config_path().into_os_string()]);
                ChildSpec {
                    log_path: self.log_path(&name),
                    name,
                    role: Role::Broker,
                    program: binary.clone(),
                    args,
                    env: Vec::new(),
                    ready: Readiness::Nats { port: client_port },
                }
            })
            .collect()
    }

    /// The gateway simulator and the services (each instance of each), in start order.
    fn service_specs(&self, exe: &Path) -> Vec<ChildSpec> {
        // `command`'s `instance` (see `instance_name`).
        let child = |(command, instance): (&str, u16),
                     role: Role,
                     port: u16,
                     database_url: String,
                     extra: Vec<String>| {
            let name = instance_name(command, instance);
            let mut args = vec![
                command.to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
                "--database-url".to_owned(),
                database_url,
                "--log-format".to_owned(),
                "json".to_owned(),
            ];
            args.extend(extra);
            // Not flags: arguments show in `ps`.
            let mut env = vec![(
                "ORDERFLOW_ADMIN_TOKEN",
                self.admin.token.expose().to_owned(),
            )];
            if let Some(replicas) = self.stream_replicas() {
                env.push(("ORDERFLOW_STREAM_REPLICAS", replicas.to_string()));
            }
            if let Some((user, password)) =
                self.nats_users.iter().find(|(user, _)| *user == command)
            {
                env.push(("ORDERFLOW_NATS_USER", (*user).to_owned()));
                env.push(("ORDERFLOW_NATS_PASSWORD", password.clone()));
            }
            ChildSpec {
                log_path: self.log_path(&name),
                name,
                role,
                program: exe.to_path_buf(),
                args: args.into_iter().map(OsString::from).collect(),
                env,
                ready: Readiness::Health { port },
            }
        };
        let service = |name: (&str, u16), store: &str, port: u16, extra: &[String]| {
            let database_url = self
                .database_url
                .clone()
                .unwrap_or_else(|| self.sqlite_url(store));
            let mut args = vec!["--nats-url".to_owned(), self.nats_url()];
            args.extend_from_slice(extra);
            child(name, Role::Service, port, database_url, args)
        };
        // The simulator stands in for a third party, not a service of ours: no NATS, and always
        // SQLite, whatever database the services use.
        let mut specs = vec![child(
            ("gateway-sim", 1),
            Role::Gateway,
            self.ports.gateway,
            self.sqlite_url("gateway"),
            Vec::new(),
        )];
        for instance in 1..=self.replicas {
            // Checked by `Plan::new`.
            let Ok([order, inventory, payment]) = self.ports.instance(instance) else {
                continue;
            };
            specs.extend([
                service(("inventory-service", instance), "inventory", inventory, &[]),
                service(
                    ("payment-service", instance),
                    "payment",
                    payment,
                    &["--gateway-url".to_owned(), local_url(self.ports.gateway)],
                ),
                service(("order-service", instance), "order", order, &[]),
            ]);
        }
        specs
    }
}

/// What a child is to the others, which decides when it stops: services first (they still need NATS
/// to flush their acks and the gateway to finish a charge), the gateway next, the broker last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Service,
    Gateway,
    Broker,
}

/// How to start one child. Kept apart from the running process so that starting it again (a restart)
/// needs nothing but the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChildSpec {
    /// `nats-server` (or `nats-1`, ... in a cluster), `gateway-sim`, `order-service` (or
    /// `order-service-2`, ... for further instances): also its log file's name.
    name: String,
    role: Role,
    program: PathBuf,
    args: Vec<OsString>,
    /// Set on top of `up`'s own environment.
    env: Vec<(&'static str, String)>,
    /// stdout and stderr of every run, appended.
    log_path: PathBuf,
    ready: Readiness,
}

/// How to tell that a started child can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// nats-server: it logged "ready" and accepts TCP connections on 127.0.0.1:`port`.
    Nats { port: u16 },
    /// A service: `GET http://127.0.0.1:<port>/health/ready` answers 200.
    Health { port: u16 },
}

impl Readiness {
    fn port(&self) -> u16 {
        match self {
            Readiness::Nats { port } | Readiness::Health { port } => *port,
        }
    }
}

impl ChildSpec {
    /// Starts one run. The child gets its own process group, so a Ctrl-C in the terminal reaches only
    /// `up`, which then stops the children in order; and it gets SIGTERM if `up` dies, so no child
    /// outlives a killed `up`.
    ///
    /// Must be called from the thread that runs `up` to the end (the runtime's main thread): the kernel
    /// sends the parent-death signal when the *thread* that forked the child exits.
    fn spawn(&self) -> Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        // Only what this run writes after this offset belongs to it (the file keeps earlier runs).
        let log_offset = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        let mut command = std::process::Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            // A schema name meant for one service would put all three into the same schema.
            .env_remove("ORDERFLOW_DB_SCHEMA")
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls
        // are allowed: prctl, getppid and reading errno are; nothing allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If `up` died before the prctl above, no signal will ever come: give up instead.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let process = tokio::process::Command::from(command)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        Ok(Child {
            spec: self.clone(),
            process,
            log_offset,
            started: Instant::now(),
        })
    }
}

/// One started child: its spec, its process, and where its current run's log begins.
struct Child {
    spec: ChildSpec,
    process: tokio::process::Child,
    log_offset: u64,
    /// When this run began, to tell a crash loop from a child that ran fine for a while.
    started: Instant,
}

impl Child {
    /// Fails if the child has exited, with its status and the end of its log.
    fn ensure_running(&mut self) -> Result<()> {
        match self.process.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited ({status})", self.spec.name),
            Err(error) => Err(error).with_context(|| format!("cannot check on {}", self.spec.name)),
        }
    }

    /// Waits until the child can be used, failing early if it exits.
    async fn wait_until_ready(&mut self, client: &reqwest::Client) -> Result<()> {
        match self.spec.ready {
            Readiness::Nats { port } => wait_for_nats(self, port).await,
            Readiness::Health { port } => {
                wait_for_health(self, client, &format!("{}/health/ready", local_url(port))).await
            }
        }
    }

    /// The last lines this run wrote, indented for the terminal.
    fn log_tail(&self) -> String {
        let text = read_from(&self.spec.log_path, self.log_offset);
        let tail = last_lines(&text, LOG_TAIL_LINES);
        if tail.is_empty() {
            return format!("    ({} is empty)", self.spec.log_path.display());
        }
        let mut shown = format!("  last lines of {}:\n", self.spec.log_path.display());
        for line in tail {
            shown.push_str("    ");
            shown.push_str(line);
            shown.push('\n');
        }
        shown
    }

    /// Asks the child to stop (graceful shutdown), unless it is already gone.
    fn terminate(&self) {
        // `id()` is None once the child was reaped; until then its pid cannot belong to anyone else.
        let Some(pid) = self
            .process
            .id()
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
        else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            eprintln!(
                "cannot send SIGTERM to {} (pid {pid}): {error}",
                self.spec.name
            );
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let admin = crate::admin::token_for_up(args.admin_token.clone(), &data_dir)?;
    let mut plan = Plan::new(&args, data_dir, admin)?;
    if matches!(plan.nats, Nats::Own { .. }) {
        plan.nats_users = crate::broker_config::USERS
            .into_iter()
            .map(|user| {
                Ok((
                    user,
                    crate::admin::nats_password_for_up(&plan.data_dir, user)?,
                ))
            })
            .collect::<Result<_>>()?;
    }
    fs::create_dir_all(&plan.logs_dir)
        .with_context(|| format!("cannot create {}", plan.logs_dir.display()))?;
    if let Nats::Own {
        binary,
        port,
        store,
        sync,
        servers,
    } = &plan.nats
    {
        let config = plan.nats_config_path();
        let rendered = crate::broker_config::render(*sync == NatsSync::Always, &plan.nats_users);
        fs::write(&config, rendered)
            .with_context(|| format!("cannot write {}", config.display()))?;
        if !binary.is_file() {
            bail!(
                "nats-server not found at {}; run `make up` (it installs it) or scripts/install-tools.sh",
                binary.display()
            );
        }
        fs::create_dir_all(store).with_context(|| format!("cannot create {}", store.display()))?;
        // Client ports, then (for a cluster) route ports.
        let used = if *servers > 1 { servers * 2 } else { 1 };
        for nats_port in (0..used).map(|n| port + n) {
            ensure_port_free(
                nats_port,
                "nats-server",
                &format!(
                    "`up` starts its own NATS and never attaches to one it did not start: choose a \
                     free port with --nats-port (a cluster of {servers} uses {used} ports from it), or \
                     use that server with --nats-url nats://127.0.0.1:{port}"
                ),
            )?;
        }
    }
    for (port, user) in plan.ports.all(plan.replicas)? {
        ensure_port_free(
            port,
            &user,
            "is orderflow already running? Choose other ports with --http-port-base N (it uses N to \
             N+3, and three more for each further instance)",
        )?;
    }
    let exe = std::env::current_exe().context("cannot find the orderflow binary itself")?;
    let client = http_client()?;

    let mut stop = Box::pin(platform::shutdown::signal());
    // The first poll installs the signal handlers: from here on a Ctrl-C, even during startup, stops
    // what already runs instead of killing `up` outright.
    if futures::FutureExt::now_or_never(&mut stop).is_some() {
        return Ok(());
    }
    let mut children = Vec::new();
    let outcome = run_until_stopped(&plan, &exe, &client, &mut children, &mut stop).await;
    if outcome.is_ok() {
        // After the terminal's "^C".
        println!();
    }
    stop_all(&mut children).await;
    outcome?;
    println!("stopped");
    Ok(())
}

/// Starts everything and supervises it. Returns Ok once `stop` fires, an error if a child fails to
/// start, or exits on its own while restarts are off. Either way the caller stops whatever is in
/// `children`, including a child that is being restarted (dropping the supervision ends its backoff or
/// readiness wait, and the slot then holds either the exited run or the new one).
async fn run_until_stopped(
    plan: &Plan,
    exe: &Path,
    client: &reqwest::Client,
    children: &mut Vec<Child>,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> Result<()> {
    let inventory = local_url(plan.ports.inventory);
    let start = async {
        start_all(plan, exe, client, children).await?;
        seed_catalog(&Catalog {
            client,
            inventory: &inventory,
            token: Some(plan.admin.token.expose()),
        })
        .await;
        anyhow::Ok(())
    };
    tokio::select! {
        started = start => started?,
        () = &mut *stop => return Ok(()),
    }
    print_endpoints(plan);
    tokio::select! {
        () = &mut *stop => Ok(()),
        failure = supervise_all(children, client, plan.restart) => Err(failure),
        () = show_service_logs(plan) => Ok(()),
    }
}

/// On a terminal, prints the services' lines as they write them, readable and coloured per service
/// (the files keep the JSON). Elsewhere (a pipe, the benchmark) the console stays quiet: the files are
/// there, and `orderflow logs` reads them.
async fn show_service_logs(plan: &Plan) {
    if !std::io::stdout().is_terminal() {
        return std::future::pending().await;
    }
    let mut reader = LogReader::new(&plan.logs_dir);
    // What the services wrote while starting was summed up by the lines above.
    reader.read_new();
    loop {
        tokio::time::sleep(crate::logs::FOLLOW_EVERY).await;
        for line in reader.read_new() {
            println!("{}", line.render(Colour::On));
        }
    }
}

/// Fails with a message naming the port, its intended user and `hint` if something already listens on
/// 127.0.0.1:`port`.
fn ensure_port_free(port: u16, user: &str, hint: &str) -> Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("port {port} (for {user}) on 127.0.0.1 is already in use; {hint}")
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot use port {port} (for {user}) on 127.0.0.1"))
        }
    }
}

/// Starts the children one after another, each once the ones before it are ready. Every started child
/// is pushed to `children` at once, so whoever stops the system stops it too.
async fn start_all(
    plan: &Plan,
    exe: &Path,
    client: &reqwest::Client,
    children: &mut Vec<Child>,
) -> Result<()> {
    for spec in plan.child_specs(exe) {
        progress(&format!(
            "starting {} on 127.0.0.1:{}",
            spec.name,
            spec.ready.port()
        ));
        let started = Instant::now();
        children.push(spec.spawn()?);
        let child = children.last_mut().context("a child was just started")?;
        if let Err(error) = child.wait_until_ready(client).await {
            println!("failed");
            eprintln!("{}", child.log_tail());
            return Err(error.context(format!("{} did not start", child.spec.name)));
        }
        println!("ready ({:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn progress(what: &str) {
    print!("{what} … ");
    let _ = std::io::stdout().flush();
}

/// Waits until our nats-server accepts connections. Its "ready" log line (tagged with its pid) and its
/// being alive afterwards prove that the port is served by the server we started, not by another one.
async fn wait_for_nats(child: &mut Child, port: u16) -> Result<()> {
    let pid = child.process.id().context("nats-server exited at once")?;
    let tag = format!("[{pid}] ");
    let deadline = Instant::now() + NATS_READY_TIMEOUT;
    loop {
        child.ensure_running()?;
        let logged = read_from(&child.spec.log_path, child.log_offset)
            .lines()
            .any(|line| line.starts_with(&tag) && line.ends_with(NATS_READY_LINE));
        if logged
            && tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
        {
            return child.ensure_running();
        }
        if Instant::now() >= deadline {
            bail!(
                "nats-server did not accept connections on port {port} within {NATS_READY_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `GET url` answers 200, failing early if the child exits.
async fn wait_for_health(child: &mut Child, client: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + SERVICE_READY_TIMEOUT;
    loop {
        child.ensure_running()?;
        let last = match client.get(url).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(response) => format!("it answered {}", response.status()),
            Err(error) => error_chain(&error),
        };
        if Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {SERVICE_READY_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Supervises every child at once (see [`supervise`]); resolves only when one of them gives up, which
/// happens only with restarts off.
///
/// The supervisors are polled right here rather than spawned as tasks: a restart must fork from the
/// thread that runs `up` (see [`ChildSpec::spawn`]).
async fn supervise_all(
    children: &mut [Child],
    client: &reqwest::Client,
    restart: bool,
) -> anyhow::Error {
    if children.is_empty() {
        return std::future::pending().await;
    }
    let supervisors = children
        .iter_mut()
        .map(|child| Box::pin(supervise(child, client, restart)));
    let (failure, _, _) = futures::future::select_all(supervisors).await;
    failure
}

/// Keeps one child running: each time it exits, waits out the backoff, starts it again from its spec
/// (same program, arguments and log file) and waits until it is ready, while the others carry on.
/// nats-server comes back on the same port with the same store, so the services' clients reconnect by
/// themselves. With restarts off, the first exit is returned as the reason to stop everything.
async fn supervise(child: &mut Child, client: &reqwest::Client, restart: bool) -> anyhow::Error {
    let name = child.spec.name.clone();
    let mut restarts = Retries::new(RESTART_BACKOFF, RESTART_BACKOFF_RESET);
    loop {
        let status = match child.process.wait().await {
            Ok(status) => status.to_string(),
            Err(error) => format!("cannot be waited for: {error}"),
        };
        if !restart {
            eprintln!("\n{name} exited on its own ({status})");
            eprintln!("{}", child.log_tail());
            return anyhow::anyhow!("{name} exited ({status}); stopped the rest");
        }
        let exited = Instant::now();
        let mut ran = child.started.elapsed();
        let mut what = format!("{name} exited unexpectedly ({status})");
        let restart_number = loop {
            let delay = restarts.failed(ran);
            let number = restarts.total();
            eprintln!(
                "{what}; restarting in {} ms (restart #{number})",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
            match child.spec.spawn() {
                Ok(run) => {
                    *child = run;
                    break number;
                }
                Err(error) => {
                    // Nothing ran: the next attempt backs off further, like after a crash at startup.
                    ran = Duration::ZERO;
                    what = format!("{name} could not be restarted ({error:#})");
                }
            }
        };
        match child.wait_until_ready(client).await {
            Ok(()) => println!(
                "{name} is ready again (restart #{restart_number}, {:.1} s after it exited)",
                exited.elapsed().as_secs_f64()
            ),
            // It exited again: the next turn of the loop reports that and restarts it.
            Err(_) if child.ensure_running().is_err() => {}
            Err(error) => eprintln!(
                "{name} was restarted (restart #{restart_number}) but is not ready: {error:#}; \
                 leaving it running"
            ),
        }
    }
}

/// Stops the children in dependency order (see [`Role`]): each stage gets SIGTERM and is waited for
/// before the next, all within [`STOP_TIMEOUT`]; whoever is still alive then is killed.
async fn stop_all(children: &mut [Child]) {
    if children.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    for role in [Role::Service, Role::Gateway, Role::Broker] {
        let stage: Vec<&mut Child> = children
            .iter_mut()
            .filter(|child| child.spec.role == role)
            .rev()
            .collect();
        if stage.is_empty() {
            continue;
        }
        let names: Vec<&str> = stage.iter().map(|child| child.spec.name.as_str()).collect();
        progress(&format!("stopping {}", names.join(", ")));
        for child in &stage {
            child.terminate();
        }
        let mut killed = Vec::new();
        for child in stage {
            let exited = tokio::time::timeout_at(deadline, child.process.wait()).await;
            if exited.is_err() {
                killed.push(child.spec.name.clone());
                let _ = child.process.kill().await;
            }
        }
        if killed.is_empty() {
            println!("done");
        } else {
            println!(
                "killed {} (not stopped within {STOP_TIMEOUT:?})",
                killed.join(", ")
            );
        }
    }
}

/// The demo catalog: enough for the curl example to confirm, and a scarce item to see a rejection.
const DEMO_CATALOG: [(&str, &str, i64, i64); 3] = [
    ("sku-1", "Widget", 1299, 100),
    ("sku-2", "Gadget", 2499, 25),
    ("sku-3", "Gizmo", 499, 5),
];

/// Seeds the demo catalog on a first start (an empty catalog), leaving an existing one alone. A failure
/// is only reported: the system runs fine without it.
async fn seed_catalog(catalog: &Catalog<'_>) {
    progress("seeding the demo catalog");
    match try_seed_catalog(catalog).await {
        Ok(Some(count)) => println!("kept the existing {count} products"),
        Ok(None) => println!("added sku-1, sku-2, sku-3"),
        Err(error) => println!("skipped: {error:#}"),
    }
}

/// Returns the size of an existing catalog, or None if it was empty and is now seeded.
async fn try_seed_catalog(catalog: &Catalog<'_>) -> Result<Option<usize>> {
    let products: serde_json::Value = catalog
        .client
        .get(format!("{}/products", catalog.inventory))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET /products failed")?
        .json()
        .await
        .context("GET /products did not answer JSON")?;
    let count = products
        .as_array()
        .context("GET /products did not answer a JSON array")?
        .len();
    if count > 0 {
        return Ok(Some(count));
    }
    for (id, name, price_cents, stock) in DEMO_CATALOG {
        catalog
            .put_product(
                id,
                &serde_json::json!({ "name": name, "price_cents": price_cents, "stock": stock }),
            )
            .await?;
    }
    Ok(None)
}

fn print_endpoints(plan: &Plan) {
    let ports = plan.ports;
    let order = local_url(ports.order);
    println!();
    println!("orderflow is up");
    println!("  order-service      {order}");
    println!("  inventory-service  {}", local_url(ports.inventory));
    println!("  payment-service    {}", local_url(ports.payment));
    println!("  gateway simulator  {}", local_url(ports.gateway));
    for instance in 2..=plan.replicas {
        if let Ok([order, inventory, payment]) = ports.instance(instance) {
            println!(
                "  instance {instance}         order {}, inventory {}, payment {}",
                local_url(order),
                local_url(inventory),
                local_url(payment)
            );
        }
    }
    println!(
        "  NATS               {}",
        platform::config::redact(&plan.nats_url())
    );
    println!("  data               {}", plan.data_dir.display());
    println!("  logs               {}", plan.logs_dir.display());
    let source = match &plan.admin.saved_in {
        Some(path) => format!(
            "saved in {}, where the orderflow commands find it",
            path.display()
        ),
        None => "from ORDERFLOW_ADMIN_TOKEN".to_owned(),
    };
    println!(
        "  admin token        {} ({source})",
        plan.admin.token.expose()
    );
    println!();
    println!("Place an order:");
    println!(
        "  curl -i -X POST {order}/orders -H 'Content-Type: application/json' \\\n    \
         -d '{{\"customer_id\":\"c-1\",\"items\":[{{\"product_id\":\"sku-1\",\"quantity\":2}}],\"payment_method\":\"tok_visa\"}}'"
    );
    println!("Follow it (order_id is in the answer):");
    println!("  curl {order}/orders/<order_id>");
    println!("  curl {order}/orders/<order_id>/events");
    let demo_args = if ports.order == DEFAULT_HTTP_PORT_BASE {
        String::new()
    } else {
        format!(" ARGS=\"--http-port-base {}\"", ports.order)
    };
    println!("Or place three demo orders and see how each ended: make demo{demo_args}");
    println!();
    println!("Ctrl-C to stop.");
}

/// What was appended to `path` from `offset` on; a note instead if it cannot be read (it only feeds
/// messages).
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => format!("<cannot read {}: {error}>", path.display()),
    }
}

fn last_lines(text: &str, count: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(count);
    lines.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            data_dir: PathBuf::from("/data"),
            http_port_base: 8080,
            nats_port: 4223,
            nats_url: None,
            nats_server: PathBuf::from("/bin/nats-server"),
            database_url: None,
            nats_sync: NatsSync::Default,
            no_restart: false,
            admin_token: None,
            replicas: 1,
            nats_cluster: 1,
        }
    }

    fn plan(args: &Args) -> Result<Plan> {
        let admin = UpToken {
            token: AdminToken::parse("test-admin-token-0123").unwrap(),
            saved_in: None,
        };
        Plan::new(args, args.data_dir.clone(), admin)
    }

    fn arg_after<'a>(spec: &'a ChildSpec, flag: &str) -> Option<&'a str> {
        let index = spec.args.iter().position(|arg| arg == flag)?;
        spec.args.get(index + 1)?.to_str()
    }

    #[test]
    fn ports_follow_the_base() {
        let ports = Ports::from_base(9080).expect("valid base");
        assert_eq!(
            ports,
            Ports {
                order: 9080,
                inventory: 9081,
                payment: 9082,
                gateway: 9083
            }
        );
        assert!(Ports::from_base(65532).is_ok());
        assert!(Ports::from_base(65533).is_err());
        assert!(Ports::from_base(0).is_err());
    }

    #[test]
    fn nats_port_must_not_be_an_http_port() {
        let mut args = args();
        args.nats_port = 8082;
        assert!(plan(&args).is_err());
        args.nats_url = Some("nats://127.0.0.1:8082".into());
        assert!(plan(&args).is_ok(), "an external NATS is not ours to place");
    }

    #[test]
    fn database_url_must_be_postgres() {
        let mut args = args();
        args.database_url = Some("sqlite://x.db".into());
        assert!(plan(&args).is_err());
        args.database_url = Some("postgres://postgres@127.0.0.1:5432/orderflow".into());
        assert!(plan(&args).is_ok());
    }

    #[test]
    fn services_get_their_own_sqlite_files_and_the_shared_nats() {
        let plan = plan(&args()).expect("valid plan");
        let specs = plan.service_specs(Path::new("/bin/orderflow"));
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway-sim",
                "inventory-service",
                "payment-service",
                "order-service"
            ]
        );
        let inventory = &specs[1];
        assert_eq!(inventory.ready, Readiness::Health { port: 8081 });
        assert_eq!(inventory.args[0], "inventory-service");
        assert_eq!(arg_after(inventory, "--listen"), Some("127.0.0.1:8081"));
        assert_eq!(
            arg_after(inventory, "--database-url"),
            Some("sqlite:///data/inventory.db?mode=rwc")
        );
        assert_eq!(
            arg_after(inventory, "--nats-url"),
            Some("nats://127.0.0.1:4223")
        );
        assert_eq!(
            inventory.log_path,
            Path::new("/data/logs/inventory-service.log")
        );
        let payment = &specs[2];
        assert_eq!(
            arg_after(payment, "--gateway-url"),
            Some("http://127.0.0.1:8083")
        );
        let gateway = &specs[0];
        assert_eq!(
            arg_after(gateway, "--database-url"),
            Some("sqlite:///data/gateway.db?mode=rwc")
        );
        assert_eq!(arg_after(gateway, "--nats-url"), None);
        assert_eq!(arg_after(gateway, "--log-format"), Some("json"));
    }

    #[test]
    fn postgres_is_shared_by_the_services_but_not_the_gateway() {
        let mut args = args();
        let url = "postgres://postgres@127.0.0.1:5432/orderflow";
        args.database_url = Some(url.into());
        let specs = plan(&args)
            .expect("valid plan")
            .service_specs(Path::new("orderflow"));
        for spec in &specs {
            let expected = if spec.role == Role::Gateway {
                "sqlite:///data/gateway.db?mode=rwc"
            } else {
                url
            };
            assert_eq!(
                arg_after(spec, "--database-url"),
                Some(expected),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn own_nats_stores_in_the_data_dir_and_external_nats_is_passed_on() {
        let mut args = args();
        let specs = plan(&args)
            .expect("valid plan")
            .child_specs(Path::new("orderflow"));
        let nats = &specs[0];
        assert_eq!(nats.ready, Readiness::Nats { port: 4223 });
        assert_eq!(arg_after(nats, "-sd"), Some("/data/nats"));
        assert_eq!(arg_after(nats, "-a"), Some("127.0.0.1"));
        assert_eq!(arg_after(nats, "-c"), Some("/data/nats-server.conf"));

        args.nats_sync = NatsSync::Always;
        let specs = plan(&args)
            .expect("valid plan")
            .child_specs(Path::new("orderflow"));
        assert_eq!(arg_after(&specs[0], "-c"), Some("/data/nats-server.conf"));

        args.nats_url = Some("nats://10.0.0.5:4222".into());
        let specs = plan(&args)
            .expect("valid plan")
            .child_specs(Path::new("orderflow"));
        assert_eq!(specs.len(), 4, "no nats-server of our own");
        assert_eq!(
            arg_after(&specs[3], "--nats-url"),
            Some("nats://10.0.0.5:4222")
        );
    }

    #[test]
    fn replicas_share_postgres_and_listen_after_the_gateway() {
        let mut args = args();
        args.replicas = 2;
        assert!(
            plan(&args)
                .unwrap_err()
                .to_string()
                .contains("--database-url"),
            "SQLite has one writer"
        );
        args.database_url = Some("postgres://postgres@127.0.0.1:5432/orderflow".into());
        let specs = plan(&args)
            .expect("valid plan")
            .service_specs(Path::new("orderflow"));
        let listening: Vec<(&str, Option<&str>, &str)> = specs
            .iter()
            .map(|spec| {
                let command = spec.args[0].to_str().unwrap_or_default();
                (spec.name.as_str(), arg_after(spec, "--listen"), command)
            })
            .collect();
        assert_eq!(
            listening[4..],
            [
                (
                    "inventory-service-2",
                    Some("127.0.0.1:8085"),
                    "inventory-service"
                ),
                (
                    "payment-service-2",
                    Some("127.0.0.1:8086"),
                    "payment-service"
                ),
                ("order-service-2", Some("127.0.0.1:8084"), "order-service"),
            ]
        );
        args.http_port_base = 65530;
        assert!(plan(&args).is_err(), "no room for the second instance");
    }

    #[test]
    fn a_nats_cluster_is_routed_and_replicates_the_streams() {
        let mut args = args();
        args.nats_cluster = 3;
        let specs = plan(&args)
            .expect("valid plan")
            .child_specs(Path::new("orderflow"));
        let nodes: Vec<&ChildSpec> = specs
            .iter()
            .filter(|spec| spec.role == Role::Broker)
            .collect();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[1].name, "nats-2");
        assert_eq!(arg_after(nodes[1], "-p"), Some("4224"));
        assert_eq!(arg_after(nodes[1], "-sd"), Some("/data/nats/n2"));
        assert_eq!(
            arg_after(nodes[1], "--cluster"),
            Some("nats://127.0.0.1:4227")
        );
        assert_eq!(
            arg_after(nodes[1], "--routes"),
            Some(
                "nats-route://127.0.0.1:4226,nats-route://127.0.0.1:4227,nats-route://127.0.0.1:4228"
            )
        );
        let order = specs
            .iter()
            .find(|spec| spec.name == "order-service")
            .unwrap();
        assert_eq!(
            arg_after(order, "--nats-url"),
            Some("nats://127.0.0.1:4223,nats://127.0.0.1:4224,nats://127.0.0.1:4225")
        );
        assert!(
            order
                .env
                .contains(&("ORDERFLOW_STREAM_REPLICAS", "3".to_owned()))
        );
        // The HTTP ports must not take the cluster's route ports.
        args.http_port_base = 4226;
        assert!(plan(&args).is_err());
    }

    #[test]
    fn restarts_back_off_exponentially_up_to_the_cap() {
        let mut restarts = Retries::new(RESTART_BACKOFF, RESTART_BACKOFF_RESET);
        let delays: Vec<(u128, u64)> = (0..7)
            .map(|_| {
                let delay = restarts.failed(Duration::from_secs(1));
                (delay.as_millis(), restarts.total())
            })
            .collect();
        assert_eq!(
            delays,
            [
                (250, 1),
                (500, 2),
                (1000, 3),
                (2000, 4),
                (4000, 5),
                (5000, 6),
                (5000, 7)
            ]
        );
    }

    #[test]
    fn a_long_run_resets_the_backoff_but_not_the_count() {
        let mut restarts = Retries::new(RESTART_BACKOFF, RESTART_BACKOFF_RESET);
        for _ in 0..4 {
            restarts.failed(Duration::ZERO);
        }
        assert_eq!(
            restarts.failed(RESTART_BACKOFF_RESET),
            RESTART_BACKOFF.min()
        );
        assert_eq!(restarts.total(), 5);
        assert_eq!(
            restarts.failed(RESTART_BACKOFF_RESET - Duration::from_secs(1)),
            RESTART_BACKOFF.min() * 2
        );
        assert_eq!(restarts.total(), 6);
    }

    #[test]
    fn no_restart_turns_restarts_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            up: Args,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["up", "--no-restart"]).expect("valid");
        assert!(cli.up.no_restart);
        assert!(!plan(&cli.up).expect("valid plan").restart);
        assert!(plan(&args()).expect("valid plan").restart);
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a", 5), ["a"]);
        assert!(last_lines("", 5).is_empty());
    }

    #[test]
    fn a_taken_port_is_reported_with_its_user() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("address").port();
        let error =
            ensure_port_free(port, "inventory-service", "try another").expect_err("port is taken");
        let message = error.to_string();
        assert!(message.contains(&port.to_string()), "{message}");
        assert!(message.contains("inventory-service"), "{message}");
    }
}
