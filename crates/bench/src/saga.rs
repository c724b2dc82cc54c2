//! The suite's order: limits, then each setup's throughput ramp, then latency at a fixed rate.

use crate::limits::{self, Sizes};
use crate::machine::CpuTimes;
use crate::peers::{PEERS, Peer, PeerSpec, Storage};
use crate::progress;
use crate::report::{LanesRun, LatencyRun, OverloadRun, PeerRun, Results, SagaRun, Step};
use crate::system::{Setup, System, UnderTest, ticks_per_second};
use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The mix of every run: mostly confirmed orders, with both compensation paths exercised.
pub const MIX: &str = "happy=90,out_of_stock=5,declined=5";
/// A ramp step is sustained when p99 end-to-end stays under this...
const P99_LIMIT_MS: f64 = 1000.0;
/// ...and orders end at least this fraction of the offered rate (otherwise the backlog grew).
const KEPT_UP: f64 = 0.95;
/// Once a rate is not sustained, how many times the gap to the last sustained one is halved: the
/// ladders double, so three halvings find the best rate within an eighth of it, in fewer steps than
/// a finer ladder with fewer halvings.
const BISECTIONS: usize = 3;
/// How long orders in flight may take to end after a step; later ones count as unfinished.
const SETTLE: &str = "30s";

/// How much of everything to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub sizes: Sizes,
    /// Arrival rates tried in turn, until one is not sustained.
    pub rates: &'static [u32],
    /// The same for the peers, which start far lower (tens of orders per second here).
    pub peer_rates: &'static [u32],
    pub step: Duration,
    pub latency_rate: u32,
    pub latency_time: Duration,
    /// How long a peer's latency run lasts, and orderflow's at the same rate beside it.
    pub compare_time: Duration,
    /// Whether a ramp searches for the best rate (halving a first rate that is too much, bisecting
    /// past the last good one); the smoke only checks that each rate's orders end well.
    pub search: bool,
    /// Whether to flood each system at several times its capacity, and orderflow's express lane
    /// during its flood (the smoke has no capacity).
    pub overload: bool,
}

impl Plan {
    pub const FULL: Plan = Plan {
        sizes: Sizes::FULL,
        rates: &[100, 200, 400, 800, 1600, 3200, 6400],
        peer_rates: &[10, 20, 40, 80, 160, 320, 640, 1280, 2560],
        // 8 s at the rates that matter is over ten thousand orders a step; the suite fits in the
        // 15 minutes issue 8 gives it (10 s steps and 30 s comparisons took 17.5 minutes).
        step: Duration::from_secs(8),
        latency_rate: 200,
        latency_time: Duration::from_secs(30),
        compare_time: Duration::from_secs(20),
        search: true,
        overload: true,
    };
    pub const SMOKE: Plan = Plan {
        sizes: Sizes::SMOKE,
        rates: &[20],
        peer_rates: &[10],
        step: Duration::from_secs(2),
        latency_rate: 20,
        latency_time: Duration::from_secs(2),
        compare_time: Duration::from_secs(2),
        search: false,
        overload: false,
    };
}

/// A PostgreSQL server on which each run gets a fresh database.
pub struct Postgres {
    server_url: url::Url,
}

impl Postgres {
    pub async fn reach(url: &str) -> Result<Postgres, String> {
        let conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|error| error.to_string())?;
        let _ = conn.close().await;
        let server_url = url::Url::parse(url).map_err(|error| error.to_string())?;
        Ok(Postgres { server_url })
    }

    async fn admin(&self) -> Result<sqlx::PgConnection> {
        Ok(sqlx::PgConnection::connect(self.server_url.as_str()).await?)
    }

    async fn fresh_database(&self) -> Result<Database<'_>> {
        let name = format!(
            "orderflow_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut self.admin().await?)
            .await
            .context("cannot create a database for the benchmark")?;
        let mut url = self.server_url.clone();
        url.set_path(&name);
        Ok(Database {
            server: self,
            name,
            url: url.to_string(),
        })
    }
}

/// A database of one run; dropped by [`Database::drop_now`].
pub struct Database<'a> {
    server: &'a Postgres,
    name: String,
    pub url: String,
}

impl Database<'_> {
    /// Transactions committed in this database so far (PostgreSQL's own statistics).
    async fn commits(&self) -> Result<i64> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        // Backends report their counts at most once a second; a fresh snapshot sees them.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let commits: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await?;
        Ok(commits)
    }

    async fn drop_now(self) {
        let name = &self.name;
        if let Ok(mut admin) = self.server.admin().await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// What a run of one setup measures.
#[derive(Debug, Clone, Copy)]
enum Measure {
    /// The ramp of [`ramp`], with resources.
    Throughput,
    /// A fixed rate on a fresh system ([`fixed_rate`]).
    Latency,
}

/// Every system the suite starts, in order: (setup name, on PostgreSQL, nats sync always, measure).
const RUNS: [(&str, bool, bool, Measure); 5] = [
    ("sqlite", false, false, Measure::Throughput),
    ("postgres", true, false, Measure::Throughput),
    ("sqlite, nats sync always", false, true, Measure::Throughput),
    ("sqlite", false, false, Measure::Latency),
    ("postgres", true, false, Measure::Latency),
];

pub async fn run_all(
    orderflow: &Path,
    machine: crate::machine::Machine,
    postgres: Option<&Postgres>,
    plan: Plan,
    with_peers: bool,
) -> Result<Results> {
    progress("limits: JetStream publish, consume+ack and a 4-hop pipeline; database commits");
    let limits = {
        let nats = testkit::NatsServer::start().await;
        let sqlite_dir = tempfile::tempdir()?;
        let database = match postgres {
            Some(server) => Some(server.fresh_database().await?),
            None => None,
        };
        let measured = limits::measure(
            &nats.url(),
            sqlite_dir.path(),
            database.as_ref().map(|db| db.url.as_str()),
            plan.sizes,
        )
        .await;
        if let Some(database) = database {
            database.drop_now().await;
        }
        measured?
    };
    progress(&format!(
        "limits: publish {:.0}/s, consume+ack {:.0}/s, pipeline {:.0}/s, SQLite {:.0} commits/s and {:.0} statements/s, PostgreSQL {} commits/s, events decoded {}/s, with the schema checked {}/s",
        limits.publish_per_s,
        limits.consume_ack_per_s,
        limits.pipeline_per_s,
        limits.sqlite_commits_per_s,
        limits.sqlite_statements_per_s,
        shown_rate(limits.postgres_commits_per_s),
        shown_rate(limits.event_decodes_per_s),
        shown_rate(limits.event_checks_per_s),
    ));

    let mut saga = Vec::new();
    let mut latency = Vec::new();
    for (name, on_postgres, sync_always, measure) in RUNS {
        if on_postgres && postgres.is_none() {
            continue;
        }
        let (system, database) =
            start_orderflow(orderflow, postgres, (name, on_postgres, sync_always)).await?;
        let measured = match measure {
            Measure::Throughput => ramp(name, system, database.as_ref(), plan.rates, plan)
                .await
                .map(|run| saga.push(run)),
            Measure::Latency => fixed_rate(name, system, plan.latency_rate, plan.latency_time)
                .await
                .map(|run| latency.push(run)),
        };
        if let Some(database) = database {
            database.drop_now().await;
        }
        measured?;
    }
    let best_on_sqlite = saga
        .iter()
        .find(|run| run.setup == "sqlite")
        .and_then(SagaRun::best)
        .map_or(FALLBACK_CAPACITY, |step| step.finished_per_s);
    let (overload, lanes) = if plan.overload {
        let (system, _) = start_orderflow(orderflow, None, ("sqlite", false, false)).await?;
        let (overload, lanes) = overload("sqlite", system, best_on_sqlite, true).await?;
        (Some(overload), lanes)
    } else {
        (None, None)
    };
    let peers = if with_peers {
        run_peers(orderflow, postgres, plan).await
    } else {
        Vec::new()
    };
    // A peer's p99 is compared with orderflow's at the same rate: where a peer could not sustain the
    // suite's fixed rate, orderflow is measured again at the peer's.
    let mut wanted: Vec<(String, u32)> = peers
        .iter()
        .filter_map(|peer| Some((peer.compared_with.clone(), peer.latency.as_ref()?.rate)))
        .filter(|(_, rate)| *rate != plan.latency_rate)
        .collect();
    wanted.sort();
    wanted.dedup();
    for (setup, rate) in wanted {
        let Some(&(name, on_postgres, sync_always, _)) =
            RUNS.iter().find(|(name, ..)| *name == setup)
        else {
            continue;
        };
        let (system, database) =
            start_orderflow(orderflow, postgres, (name, on_postgres, sync_always)).await?;
        let measured = fixed_rate(name, system, rate, plan.compare_time).await;
        if let Some(database) = database {
            database.drop_now().await;
        }
        latency.push(measured?);
    }
    Ok(Results {
        machine,
        duration_s: 0.0,
        cpu_stolen: None,
        limits,
        saga,
        latency,
        lanes,
        overload,
        peers,
    })
}

/// The load generator's arguments for a flood at `rate` for `time`, waiting `settle` for the orders
/// it got accepted: open loop, on 256 connections (fewer than a server takes at once), each request
/// awaited as long as order-service lets one take (30 s).
fn flood_args(rate: u32, time: Duration, settle: Duration) -> Vec<String> {
    [
        "--rate",
        &rate.to_string(),
        "--duration",
        &format!("{}ms", time.as_millis()),
        "--settle-timeout",
        &format!("{}ms", settle.as_millis()),
        "--max-in-flight",
        "256",
        "--request-timeout",
        "30s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// How many times its best sustained rate each system is flooded with, for how long, and how long
/// the load generator then waits for the orders it got accepted: half as long again as the flood,
/// time enough for orderflow, whose admission limit keeps what it takes within 15 s (`up`'s saga
/// timeout of 30 s, halved), and for a system without admission control to work off some of what
/// it took.
const OVERLOAD_TIMES_CAPACITY: f64 = 5.0;
const OVERLOAD_FOR: Duration = Duration::from_secs(20);
const OVERLOAD_SETTLE: Duration = Duration::from_secs(30);
/// The capacity assumed when the ramp found none.
const FALLBACK_CAPACITY: f64 = 500.0;
/// Express orders per second, alone and during orderflow's flood.
const EXPRESS_RATE: u32 = 20;
const EXPRESS_FOR: Duration = Duration::from_secs(15);
/// The express load starts this long into the flood, once a backlog has formed, and the flood
/// outlasts it.
const FLOOD_HEAD_START: Duration = Duration::from_secs(3);

/// Floods `system` at [`OVERLOAD_TIMES_CAPACITY`] times `capacity` (its best sustained orders/s),
/// waits for the orders it accepted, checks its books and stops it. With `express` (orderflow), it
/// first measures express orders on the idle system, then again during the flood: the normal lane
/// is then held at its admission limit while most of the flood is refused (before admission control
/// the express flood had to stay at 1.5 times capacity, as beyond about twice the requests
/// themselves queued for seconds, the express ones with them).
async fn overload(
    name: &str,
    system: impl UnderTest,
    capacity: f64,
    express: bool,
) -> Result<(OverloadRun, Option<LanesRun>)> {
    let flood_rate = (capacity * OVERLOAD_TIMES_CAPACITY).round().max(1.0) as u32;
    let express_args = || {
        [
            "--priority",
            "express",
            "--rate",
            &EXPRESS_RATE.to_string(),
            "--duration",
            &format!("{}ms", EXPRESS_FOR.as_millis()),
            "--settle-timeout",
            SETTLE,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let idle = if express {
        progress(&format!(
            "{name}: express orders at {EXPRESS_RATE}/s for {} s on the idle system",
            EXPRESS_FOR.as_secs()
        ));
        Some(system.loadgen(&express_args()).await?)
    } else {
        None
    };
    progress(&format!(
        "{name}: flooded at {flood_rate}/s ({OVERLOAD_TIMES_CAPACITY}x its best sustained rate) for {} s{}",
        OVERLOAD_FOR.as_secs(),
        if express {
            format!(
                ", express orders again from {} s in",
                FLOOD_HEAD_START.as_secs()
            )
        } else {
            String::new()
        }
    ));
    let flood_args = flood_args(flood_rate, OVERLOAD_FOR, OVERLOAD_SETTLE);
    let flood = system.loadgen(&flood_args);
    let (report, flooded) = if express {
        let flooded = async {
            tokio::time::sleep(FLOOD_HEAD_START).await;
            system.loadgen(&express_args()).await.map(Some)
        };
        tokio::join!(flood, flooded)
    } else {
        (flood.await, Ok(None))
    };
    // Books balance only once every accepted order has ended.
    let verified = match &report {
        Ok(report) if report["errors"]["unfinished"].as_u64().unwrap_or(0) == 0 => {
            system.verify().await.map(|verdict| verdict.passed)
        }
        _ => Ok(false),
    };
    system.stop().await;
    let report = report?;
    let flooded = flooded?;
    let run = OverloadRun {
        capacity_per_s: capacity,
        times_capacity: OVERLOAD_TIMES_CAPACITY,
        flood_rate,
        flood_s: OVERLOAD_FOR.as_secs_f64(),
        settle_s: OVERLOAD_SETTLE.as_secs_f64(),
        verified: verified?,
        report,
    };
    let count = |value: &Value| value.as_u64().unwrap_or(0);
    progress(&format!(
        "  {} accepted, {} refused, {} confirmed, {} cancelled by timeout",
        count(&run.report["accepted"]),
        count(&run.report["shed"]),
        count(&run.report["final_states"]["confirmed"]),
        count(&run.report["final_states"]["cancelled:timeout"]),
    ));
    let lanes = match (idle, flooded) {
        (Some(idle), Some(flooded)) => {
            let lanes = LanesRun {
                setup: name.to_owned(),
                express_rate: EXPRESS_RATE,
                flood_rate,
                flood_times_capacity: OVERLOAD_TIMES_CAPACITY,
                flood_head_start_s: FLOOD_HEAD_START.as_secs_f64(),
                idle,
                flooded,
                flood: run.report.clone(),
                verified: Some(run.verified && run.unfinished() == 0),
            };
            progress(&format!(
                "  express end-to-end p99: idle {:.1} ms, during the flood {:.1} ms ({})",
                LanesRun::p99(&lanes.idle).unwrap_or(f64::NAN),
                LanesRun::p99(&lanes.flooded).unwrap_or(f64::NAN),
                lanes
                    .ratio()
                    .map_or("-".to_owned(), |ratio| format!("{ratio:.2}x"))
            ));
            Some(lanes)
        }
        _ => None,
    };
    Ok((run, lanes))
}

/// Starts a fresh orderflow system of `setup` (name, on PostgreSQL, nats sync always), on a database of
/// its own when on PostgreSQL; the caller drops the database once the system is stopped.
async fn start_orderflow<'p>(
    orderflow: &Path,
    postgres: Option<&'p Postgres>,
    (name, on_postgres, sync_always): (&'static str, bool, bool),
) -> Result<(System, Option<Database<'p>>)> {
    let database = match (on_postgres, postgres) {
        (true, Some(server)) => Some(server.fresh_database().await?),
        (true, None) => anyhow::bail!("{name} needs PostgreSQL"),
        (false, _) => None,
    };
    let setup = Setup {
        name,
        database_url: database.as_ref().map(|db| db.url.clone()),
        nats_sync_always: sync_always,
    };
    progress(&format!("{name}: starting orderflow up"));
    match System::start(orderflow, setup).await {
        Ok(system) => Ok((system, database)),
        Err(error) => {
            if let Some(database) = database {
                database.drop_now().await;
            }
            Err(error)
        }
    }
}

/// Each peer's throughput ramp and latency run, each on a fresh instance. A peer that cannot be
/// installed or started is reported with the reason, and the suite goes on.
async fn run_peers(orderflow: &Path, postgres: Option<&Postgres>, plan: Plan) -> Vec<PeerRun> {
    let mut runs = Vec::new();
    let mut installed: BTreeMap<&str, Result<(), String>> = BTreeMap::new();
    for spec in &PEERS {
        if !installed.contains_key(spec.folder) {
            progress(&format!(
                "{}: installing (bench/peers/{}/install)",
                spec.name, spec.folder
            ));
            installed.insert(spec.folder, spec.install().await);
        }
        let mut run = PeerRun {
            name: spec.name.to_owned(),
            compared_with: spec.compared_with.to_owned(),
            unavailable: None,
            failed: None,
            throughput: None,
            latency: None,
            overload: None,
        };
        if let Some(Err(reason)) = installed.get(spec.folder) {
            progress(&format!("{}: cannot run: {reason}", spec.name));
            run.unavailable = Some(reason.clone());
            runs.push(run);
            continue;
        }
        if spec.storage == Storage::Postgres && postgres.is_none() {
            run.unavailable = Some("PostgreSQL is not reachable".to_owned());
            runs.push(run);
            continue;
        }
        let measured = async {
            let throughput = with_peer(orderflow, spec, postgres, |peer| {
                ramp(spec.name, peer, None, plan.peer_rates, plan)
            })
            .await?;
            // Latency at the suite's rate, or at the best rate the peer sustained when that is lower:
            // beyond it the peer's backlog grows, and its latency with it, for as long as it runs.
            let sustained = throughput
                .best()
                .map_or(plan.peer_rates[0], |step| step.rate);
            let rate = plan.latency_rate.min(sustained);
            run.throughput = Some(throughput);
            run.latency = Some(
                with_peer(orderflow, spec, postgres, |peer| {
                    fixed_rate(spec.name, peer, rate, plan.compare_time)
                })
                .await?,
            );
            if plan.overload {
                let capacity = run
                    .throughput
                    .as_ref()
                    .and_then(SagaRun::best)
                    .map_or(f64::from(plan.peer_rates[0]), |step| step.finished_per_s);
                let (overload, _) = with_peer(orderflow, spec, postgres, |peer| {
                    overload(spec.name, peer, capacity, false)
                })
                .await?;
                run.overload = Some(overload);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = measured {
            progress(&format!("{}: failed: {error:#}", spec.name));
            run.failed = Some(format!("{error:#}"));
        }
        runs.push(run);
    }
    runs
}

/// Starts a fresh instance of the peer (on a fresh database when it uses PostgreSQL), measures it
/// with `measure` (which stops it), and drops the database.
async fn with_peer<T, F>(
    orderflow: &Path,
    spec: &'static PeerSpec,
    postgres: Option<&Postgres>,
    measure: impl FnOnce(Peer) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let database = match (spec.storage, postgres) {
        (Storage::Postgres, Some(server)) => Some(server.fresh_database().await?),
        _ => None,
    };
    progress(&format!(
        "{}: starting bench/peers/{}/run",
        spec.name, spec.folder
    ));
    let measured =
        match Peer::start(orderflow, spec, database.as_ref().map(|db| db.url.as_str())).await {
            Ok(peer) => measure(peer).await,
            Err(error) => Err(error),
        };
    if let Some(database) = database {
        database.drop_now().await;
    }
    measured
}

fn loadgen_args(rate: u32, time: Duration) -> Vec<String> {
    [
        "--rate",
        &rate.to_string(),
        "--duration",
        &format!("{}ms", time.as_millis()),
        "--mix",
        MIX,
        "--settle-timeout",
        SETTLE,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn step_of(rate: u32, report: &Value) -> Step {
    let number = |path: &[&str]| {
        path.iter()
            .fold(report, |value, key| &value[key])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let errors: BTreeMap<String, u64> = report["errors"]
        .as_object()
        .map(|errors| {
            errors
                .iter()
                .map(|(kind, count)| (kind.clone(), count.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let finished_per_s = number(&["finished_per_s"]);
    let p99 = number(&["end_to_end_ms", "p99"]);
    Step {
        rate,
        placed: report["placed"].as_u64().unwrap_or(0),
        finished: report["finished"].as_u64().unwrap_or(0),
        finished_per_s,
        accept_p99_ms: number(&["accept_ms", "p99"]),
        end_to_end_p50_ms: number(&["end_to_end_ms", "p50"]),
        end_to_end_p99_ms: p99,
        sustained: errors.is_empty()
            && p99 <= P99_LIMIT_MS
            && finished_per_s >= KEPT_UP * f64::from(rate),
        errors,
    }
}

/// Raises the arrival rate step by step until a step is not sustained; measures resources on the way,
/// and stops the system.
async fn ramp(
    name: &str,
    system: impl UnderTest,
    database: Option<&Database<'_>>,
    rates: &[u32],
    plan: Plan,
) -> Result<SagaRun> {
    progress(&format!("saga throughput on {name}"));
    let commits_before = match database {
        Some(db) => Some(db.commits().await?),
        None => None,
    };
    let usage_before = system.usage();
    let cpu_before = CpuTimes::now();
    let logs_before = system.log_bytes();
    let mut steps = Vec::new();
    let step = |rate: u32| {
        let system = &system;
        async move {
            let report = system.loadgen(&loadgen_args(rate, plan.step)).await?;
            let step = step_of(rate, &report);
            progress(&format!(
                "  {name} at {rate}/s: {:.0} ended/s, p99 end-to-end {:.1} ms{}",
                step.finished_per_s,
                step.end_to_end_p99_ms,
                if step.sustained {
                    ""
                } else {
                    " — not sustained"
                }
            ));
            anyhow::Ok(step)
        }
    };
    // Up the ladder until a rate is not sustained, then halve the gap to the last good one twice.
    let mut good = None;
    let mut bad = None;
    for &rate in rates {
        let measured = step(rate).await?;
        let sustained = measured.sustained;
        steps.push(measured);
        if sustained {
            good = Some(rate);
        } else {
            bad = Some(rate);
            break;
        }
    }
    // Already the first rate was too much (a slow peer, a starved machine): halve it until a rate is
    // sustained, so the result is a rate and not a zero.
    if good.is_none() && plan.search {
        let mut rate = bad.unwrap_or(1) / 2;
        while rate >= 1 {
            let measured = step(rate).await?;
            let sustained = measured.sustained;
            steps.push(measured);
            if sustained {
                good = Some(rate);
                break;
            }
            bad = Some(rate);
            rate /= 2;
        }
    }
    if let (Some(mut low), Some(mut high), true) = (good, bad, plan.search) {
        for _ in 0..BISECTIONS {
            let middle = (low + high) / 2;
            if middle == low {
                break;
            }
            let measured = step(middle).await?;
            if measured.sustained {
                low = middle;
            } else {
                high = middle;
            }
            steps.push(measured);
        }
    }
    let verdict = system.verify().await?;
    let finished: u64 = steps.iter().map(|step| step.finished).sum();
    let commits_after = match database {
        Some(db) => Some(db.commits().await?),
        None => None,
    };
    let usage = system.usage();
    let cpu_stolen = CpuTimes::now().and_then(|now| now.stolen_since(cpu_before));
    let per_order = |amount: f64| {
        if finished == 0 {
            f64::NAN
        } else {
            amount / finished as f64
        }
    };
    let cpu_ms_per_order = usage
        .iter()
        .map(|(process, after)| {
            let before = usage_before.get(process).map_or(0, |u| u.cpu_ticks);
            let ms = (after.cpu_ticks.saturating_sub(before)) as f64 / ticks_per_second() * 1000.0;
            (process.clone(), per_order(ms))
        })
        .collect();
    let log_bytes_per_order = per_order(system.log_bytes().saturating_sub(logs_before) as f64);
    let transactions_per_order = commits_before
        .zip(commits_after)
        .map(|(before, after)| per_order((after - before) as f64));
    if !verdict.passed {
        progress(&format!("  {name}: VERIFY FAILED\n{}", verdict.output));
    }
    system.stop().await;
    Ok(SagaRun {
        setup: name.to_owned(),
        steps,
        verified: verdict.passed,
        verify_output: (!verdict.passed).then_some(verdict.output),
        usage,
        cpu_ms_per_order,
        cpu_stolen,
        log_bytes_per_order,
        transactions_per_order,
    })
}

/// Latency at a fixed, modest rate for `time` on a fresh system; stops the system.
async fn fixed_rate(
    name: &str,
    system: impl UnderTest,
    rate: u32,
    time: Duration,
) -> Result<LatencyRun> {
    progress(&format!(
        "latency on {name}: {rate}/s for {} s",
        time.as_secs()
    ));
    let report = system.loadgen(&loadgen_args(rate, time)).await?;
    let verdict = system.verify().await?;
    system.stop().await;
    let step = step_of(rate, &report);
    progress(&format!(
        "  {name}: accept p99 {:.2} ms, end-to-end p50 {:.2} ms, p99 {:.2} ms",
        step.accept_p99_ms, step.end_to_end_p50_ms, step.end_to_end_p99_ms
    ));
    Ok(LatencyRun {
        setup: name.to_owned(),
        rate,
        seconds: time.as_secs_f64(),
        report,
        errors: step.errors,
        verified: verdict.passed,
    })
}

/// A rate that may not have been measured, for a progress line.
fn shown_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |rate| format!("{rate:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{Usage, Verdict};
    use std::sync::{Arc, Mutex};

    /// A system that ends at most `capacity` orders per second: beyond it, the backlog shows as p99.
    struct Capacity {
        capacity: u32,
        offered: Arc<Mutex<Vec<u32>>>,
    }

    impl UnderTest for Capacity {
        async fn loadgen(&self, args: &[String]) -> Result<Value> {
            let rate: u32 = args[1].parse()?;
            self.offered.lock().expect("not poisoned").push(rate);
            let kept_up = rate <= self.capacity;
            Ok(serde_json::json!({
                "placed": rate * 10,
                "finished": rate.min(self.capacity) * 10,
                "finished_per_s": rate.min(self.capacity),
                "accept_ms": { "p99": 1.0 },
                "end_to_end_ms": { "p50": 2.0, "p99": if kept_up { 10.0 } else { 5000.0 } },
                "errors": {},
            }))
        }

        async fn verify(&self) -> Result<Verdict> {
            Ok(Verdict {
                passed: true,
                output: String::new(),
            })
        }

        fn usage(&self) -> BTreeMap<String, Usage> {
            BTreeMap::new()
        }

        fn log_bytes(&self) -> u64 {
            0
        }

        async fn stop(self) {}
    }

    /// The rates a ramp over `rates` offers a system of `capacity`, and its best sustained rate.
    async fn ramp_over(capacity: u32, rates: &[u32]) -> (Vec<u32>, f64) {
        let offered = Arc::new(Mutex::new(Vec::new()));
        let system = Capacity {
            capacity,
            offered: offered.clone(),
        };
        let run = ramp("test", system, None, rates, Plan::FULL)
            .await
            .expect("ramp");
        let offered = offered.lock().expect("not poisoned").clone();
        (offered, run.best().map_or(0.0, |step| step.finished_per_s))
    }

    #[tokio::test]
    async fn the_ramp_climbs_until_a_rate_is_too_much_then_bisects_three_times() {
        let (offered, best) = ramp_over(250, &[100, 200, 400, 800]).await;
        assert_eq!(offered, [100, 200, 400, 300, 250, 275]);
        assert_eq!(best, 250.0);
    }

    #[tokio::test]
    async fn a_first_rate_already_too_much_is_halved_until_one_is_sustained() {
        let (offered, best) = ramp_over(30, &[100, 200]).await;
        assert_eq!(offered, [100, 50, 25, 37, 31, 28]);
        assert_eq!(best, 28.0);
    }
}
