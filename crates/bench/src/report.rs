//! The results of one run, as JSON and as `BENCHMARKS.md`.

use crate::limits::Limits;
use crate::machine::Machine;
use crate::saga::MIX;
use crate::system::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Targets of issue 8 on a 2-core machine, everything co-located.
const TARGET_SQLITE: f64 = 2000.0;
const TARGET_POSTGRES: f64 = 1000.0;
const TARGET_SYNC_ALWAYS: f64 = 400.0;

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub duration_s: f64,
    /// The share of the machine's CPU time the hypervisor took during the whole suite.
    pub cpu_stolen: Option<f64>,
    pub limits: Limits,
    pub saga: Vec<SagaRun>,
    pub latency: Vec<LatencyRun>,
    /// Express orders alone and under a flood of normal ones (absent from runs before the lanes).
    #[serde(default)]
    pub lanes: Option<LanesRun>,
    /// orderflow flooded at several times its best sustained rate (absent before admission control).
    #[serde(default)]
    pub overload: Option<OverloadRun>,
    pub peers: Vec<PeerRun>,
}

/// A system flooded at `times_capacity` times its best sustained rate for `flood_s` (issue 12):
/// what it took, what it refused, and how what it took ended.
#[derive(Debug, Serialize, Deserialize)]
pub struct OverloadRun {
    /// The best sustained rate of the system's ramp above.
    pub capacity_per_s: f64,
    pub times_capacity: f64,
    pub flood_rate: u32,
    pub flood_s: f64,
    /// How long the load generator waited after the flood for the accepted orders to end (60 s in
    /// the runs that did not record it).
    #[serde(default = "OverloadRun::settle_before_recorded")]
    pub settle_s: f64,
    /// The load generator's report; it waited for the accepted orders to end.
    pub report: Value,
    /// Whether the system's books balanced once it was quiet. Books are only checked once every
    /// accepted order has ended: with orders still in flight they cannot balance.
    pub verified: bool,
}

impl OverloadRun {
    fn settle_before_recorded() -> f64 {
        60.0
    }

    fn count(&self, path: &[&str]) -> u64 {
        path.iter()
            .fold(&self.report, |value, key| &value[*key])
            .as_u64()
            .unwrap_or(0)
    }

    /// Requests that failed otherwise than by being refused, and orders that did not end in time.
    fn other_errors(&self) -> u64 {
        self.report["errors"].as_object().map_or(0, |errors| {
            errors
                .iter()
                .filter(|(kind, _)| kind.as_str() != "unfinished")
                .filter_map(|(_, count)| count.as_u64())
                .sum()
        })
    }

    /// One row of the overload table, for `system`.
    fn row(&self, system: &str) -> String {
        let confirmed = self.count(&["final_states", "confirmed"]);
        let accepted = self.count(&["accepted"]);
        format!(
            "| {system} | {:.0} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            self.capacity_per_s,
            self.flood_rate,
            self.count(&["placed"]),
            accepted,
            self.count(&["shed"]),
            confirmed,
            if accepted == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} %", 100.0 * confirmed as f64 / accepted as f64)
            },
            self.count(&["final_states", "cancelled:timeout"]),
            self.count(&["errors", "unfinished"]),
            self.other_errors(),
            ms(&self.report["end_to_end_ms"]["p99"]),
            if self.count(&["shed"]) == 0 {
                "-".to_owned()
            } else {
                ms(&self.report["shed_ms"]["p99"])
            },
            self.verdict(),
        )
    }

    /// Accepted orders that had not ended when the load generator stopped waiting.
    pub fn unfinished(&self) -> u64 {
        self.count(&["errors", "unfinished"])
    }

    fn verdict(&self) -> &'static str {
        match (self.unfinished(), self.verified) {
            (0, true) => "passed",
            (0, false) => "**FAILED**",
            _ => "not checked (orders still running)",
        }
    }
}

/// The express lane's latency on an idle system and under a flood of normal orders at
/// `flood_rate`, a multiple of the SQLite setup's best sustained rate.
#[derive(Debug, Serialize, Deserialize)]
pub struct LanesRun {
    pub setup: String,
    pub express_rate: u32,
    pub flood_rate: u32,
    /// The flood's rate over the best sustained rate.
    pub flood_times_capacity: f64,
    /// How far into the flood the express load started.
    pub flood_head_start_s: f64,
    /// The express load generator's report on the idle system.
    pub idle: Value,
    /// Its report with the flood running.
    pub flooded: Value,
    /// The flood's own report.
    pub flood: Value,
    /// Whether the flood's orders all ended and the books balanced: the flood is the overload
    /// section's. Absent in the runs whose lanes had a flood of their own, left unfinished on purpose.
    #[serde(default)]
    pub verified: Option<bool>,
}

impl LanesRun {
    pub fn p99(report: &Value) -> Option<f64> {
        report["end_to_end_ms"]["p99"].as_f64()
    }

    /// Express end-to-end p99 under the flood over idle: the issue's bound is 2.
    pub fn ratio(&self) -> Option<f64> {
        Some(Self::p99(&self.flooded)? / Self::p99(&self.idle)?)
    }
}

/// A benchmark peer (`bench/peers/`): the same ramp and latency run as orderflow, or why it could
/// not run.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerRun {
    pub name: String,
    /// The orderflow setup on the same kind of storage.
    pub compared_with: String,
    /// Why it could not run on this machine (its install failed, no PostgreSQL).
    pub unavailable: Option<String>,
    /// Why a run that started did not finish (the peer did not start, crashed, or the load failed).
    pub failed: Option<String>,
    pub throughput: Option<SagaRun>,
    pub latency: Option<LatencyRun>,
    /// The same flood as orderflow's, at the same multiple of the peer's own best rate.
    #[serde(default)]
    pub overload: Option<OverloadRun>,
}

impl PeerRun {
    /// Whether its books balanced after both runs.
    fn balanced(&self) -> bool {
        self.throughput.as_ref().is_some_and(|run| run.verified)
            && self.latency.as_ref().is_some_and(|run| run.verified)
    }
}

/// One step of a ramp: `orderflow loadgen --rate <rate>` for the step's time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub rate: u32,
    pub placed: u64,
    pub finished: u64,
    pub finished_per_s: f64,
    pub accept_p99_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub errors: BTreeMap<String, u64>,
    pub sustained: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaRun {
    pub setup: String,
    pub steps: Vec<Step>,
    pub verified: bool,
    pub verify_output: Option<String>,
    pub usage: BTreeMap<String, Usage>,
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// The share of the machine's CPU time the hypervisor took during the ramp.
    pub cpu_stolen: Option<f64>,
    pub log_bytes_per_order: f64,
    /// PostgreSQL only: transactions committed per finished order, from pg_stat_database.
    pub transactions_per_order: Option<f64>,
}

impl SagaRun {
    /// The sustained step that ended the most orders per second.
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|step| step.sustained)
            .max_by(|a, b| a.finished_per_s.total_cmp(&b.finished_per_s))
    }

    fn best_rate(&self) -> f64 {
        self.best().map_or(0.0, |step| step.finished_per_s)
    }

    fn services_cpu_ms(&self) -> f64 {
        self.cpu_ms_per_order
            .iter()
            .filter(|(process, _)| process.ends_with("-service"))
            .map(|(_, ms)| ms)
            .sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LatencyRun {
    pub setup: String,
    pub rate: u32,
    pub seconds: f64,
    /// The load generator's whole report.
    pub report: Value,
    pub errors: BTreeMap<String, u64>,
    pub verified: bool,
}

/// One run's headline figures, kept in `bench/results/history.jsonl` so each change's before and
/// after stay side by side in the report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Headline {
    pub date: String,
    pub commit: String,
    pub sqlite_per_s: f64,
    pub postgres_per_s: f64,
    pub sync_always_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub services_cpu_ms_per_order: f64,
    pub log_bytes_per_order: f64,
    pub verified: bool,
    /// The hypervisor's share of the CPU during the suite (not recorded before it was measured).
    #[serde(default)]
    pub cpu_stolen: Option<f64>,
}

impl Results {
    pub fn headline(&self) -> Headline {
        let best = |setup: &str| self.saga_run(setup).map_or(0.0, SagaRun::best_rate);
        let sqlite_latency = self.latency.iter().find(|run| run.setup == "sqlite");
        let latency = |quantile: &str| {
            sqlite_latency
                .and_then(|run| run.report["end_to_end_ms"][quantile].as_f64())
                .unwrap_or(f64::NAN)
        };
        let sqlite = self.saga_run("sqlite");
        Headline {
            date: self.machine.date.clone(),
            commit: self.machine.commit.clone(),
            sqlite_per_s: best("sqlite"),
            postgres_per_s: best("postgres"),
            sync_always_per_s: best("sqlite, nats sync always"),
            latency_p50_ms: latency("p50"),
            latency_p99_ms: latency("p99"),
            services_cpu_ms_per_order: sqlite.map_or(f64::NAN, SagaRun::services_cpu_ms),
            log_bytes_per_order: sqlite.map_or(f64::NAN, |run| run.log_bytes_per_order),
            verified: self.problems().is_empty(),
            cpu_stolen: self.cpu_stolen,
        }
    }

    /// What makes figures of this run not count: a system that failed verify, or lost orders.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for run in &self.saga {
            if !run.verified {
                problems.push(format!(
                    "{}: orderflow verify failed after the ramp:\n{}",
                    run.setup,
                    run.verify_output.as_deref().unwrap_or("")
                ));
            }
            if run.best().is_none() {
                let errors: Vec<_> = run
                    .steps
                    .iter()
                    .map(|step| (step.rate, &step.errors))
                    .collect();
                problems.push(format!(
                    "{}: no step was sustained, down to {}/s: {errors:?}",
                    run.setup,
                    run.steps.last().map_or(0, |step| step.rate)
                ));
            }
        }
        if let Some(run) = &self.overload
            && !(run.verified && run.unfinished() == 0)
        {
            problems.push(format!(
                "sqlite: after the flood {} accepted orders had not ended, or verify failed",
                run.unfinished()
            ));
        }
        for run in &self.latency {
            if !run.verified {
                problems.push(format!(
                    "{}: verify failed after the latency run",
                    run.setup
                ));
            }
            if !run.errors.is_empty() {
                problems.push(format!(
                    "{}: errors at {}/s: {:?}",
                    run.setup, run.rate, run.errors
                ));
            }
        }
        problems
    }

    /// What is wrong with a peer that could run: it failed, or its books did not balance. A peer
    /// that cannot be installed here is no problem of the suite (the report says why).
    pub fn peer_problems(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|peer| peer.unavailable.is_none())
            .filter_map(|peer| match &peer.failed {
                Some(why) => Some(format!("{}: {why}", peer.name)),
                None if !peer.balanced() => Some(format!(
                    "{}: its books did not balance: {}",
                    peer.name,
                    peer.throughput
                        .as_ref()
                        .and_then(|run| run.verify_output.as_deref())
                        .unwrap_or("after the latency run")
                )),
                None => None,
            })
            .collect()
    }

    fn saga_run(&self, setup: &str) -> Option<&SagaRun> {
        self.saga.iter().find(|run| run.setup == setup)
    }

    /// orderflow's latency run of `setup` at `rate` (the suite's fixed rate, or a peer's).
    fn latency_at(&self, setup: &str, rate: u32) -> Option<&LatencyRun> {
        self.latency
            .iter()
            .find(|run| run.setup == setup && run.rate == rate)
    }
}

impl LatencyRun {
    fn p99(&self) -> Option<f64> {
        self.report["end_to_end_ms"]["p99"].as_f64()
    }
}

fn ms(value: &Value) -> String {
    value.as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"))
}

fn rate(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0}")
    } else {
        "-".to_owned()
    }
}

fn share(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{:.0} %", v * 100.0))
}

/// RSS idle, RSS peak and CPU ms per order of one process, as table cells.
fn usage_cells(run: &SagaRun, process: &str, usage: &Usage) -> String {
    format!(
        "{} | {} | {:.3}",
        mib(usage.rss_idle_kb),
        mib(usage.rss_peak_kb),
        run.cpu_ms_per_order
            .get(process)
            .copied()
            .unwrap_or(f64::NAN)
    )
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Opens a `<details>` block titled `title` with a row per ramp step; the caller closes it.
fn steps_table(out: &mut String, title: &str, steps: &[Step]) {
    let _ = writeln!(
        out,
        "\n<details><summary>{title}</summary>\n\n| offered/s | ended/s | accept p99 ms | e2e p50 ms | e2e p99 ms | errors | sustained |\n|---:|---:|---:|---:|---:|---|---|"
    );
    for step in steps {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
            step.rate,
            rate(step.finished_per_s),
            step.accept_p99_ms,
            step.end_to_end_p50_ms,
            step.end_to_end_p99_ms,
            if step.errors.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", step.errors)
            },
            if step.sustained { "yes" } else { "no" }
        );
    }
}

/// The peers' own figures beside orderflow's, from the same run.
fn lanes_section(out: &mut String, lanes: &LanesRun) {
    let flood = match lanes.verified {
        Some(verified) => format!(
            "the flood of normal orders in \"Overload\" below, at {}/s ({}× the best sustained rate \
             above), which outlasts them; {}",
            lanes.flood_rate,
            lanes.flood_times_capacity,
            if verified {
                "every order of that system ended and verify passed"
            } else {
                "**not every order of that system ended, or verify failed** (see \"Overload\")"
            }
        ),
        None => format!(
            "a flood of normal orders at {}/s ({}× the best sustained rate above), which the flood \
             outlasts. The flood's orders are left unfinished on purpose, so this run is not verified",
            lanes.flood_rate, lanes.flood_times_capacity,
        ),
    };
    let _ = writeln!(
        out,
        "\n## Express lane under a flood\n\nExpress orders (`loadgen --priority express --rate {}`) \
         on the idle {} system, then again {} s into {flood}.\n\n| express orders | end-to-end p50 / p90 / p99 / max ms | finished |\n|---|---|---:|",
        lanes.express_rate, lanes.setup, lanes.flood_head_start_s,
    );
    for (label, report) in [("idle", &lanes.idle), ("under the flood", &lanes.flooded)] {
        let e = &report["end_to_end_ms"];
        let _ = writeln!(
            out,
            "| {label} | {} / {} / {} / {} | {} of {} |",
            ms(&e["p50"]),
            ms(&e["p90"]),
            ms(&e["p99"]),
            ms(&e["max"]),
            report["finished"],
            report["placed"],
        );
    }
    let flood = &lanes.flood;
    let _ = writeln!(
        out,
        "\nExpress p99 under the flood / idle: **{}** (bound: 2). The flood placed {} normal orders: \
         {} were refused by admission control (503), and of those accepted {} had ended when it \
         stopped waiting (end-to-end p50 {} ms).",
        lanes
            .ratio()
            .map_or("-".to_owned(), |ratio| format!("{ratio:.2}")),
        flood["placed"],
        flood["shed"].as_u64().unwrap_or(0),
        flood["finished"],
        ms(&flood["end_to_end_ms"]["p50"]),
    );
}

/// orderflow and each peer under the same flood, each at the same multiple of its own capacity.
fn overload_section(out: &mut String, results: &Results) {
    let peers = results
        .peers
        .iter()
        .filter_map(|peer| Some((peer.name.as_str(), peer.overload.as_ref()?)));
    let runs: Vec<(&str, &OverloadRun)> = results
        .overload
        .iter()
        .map(|run| ("orderflow (sqlite)", run))
        .chain(peers)
        .collect();
    let Some((_, first)) = runs.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n## Overload: {}× capacity for {:.0} s\n\nEach system is flooded at {}× the best rate it \
         sustained above (`loadgen --rate`, open loop, 256 connections, answers awaited up to 30 s), \
         then the load generator waits up to {settle:.0} s for the orders it got a 202 for. orderflow \
         refuses what it cannot finish in time (503 with Retry-After, ADR 16); a system without \
         admission control takes everything and finishes what it can. Refused requests are not \
         errors; \"unfinished\" are accepted orders that had not ended {settle:.0} s after the \
         flood.\n\n| system | \
         capacity /s | offered /s | requests | accepted | refused (503) | confirmed (of accepted) | \
         cancelled: timeout | unfinished | other errors | accepted end-to-end p99 ms | refusal p99 ms | \
         verify |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        first.times_capacity,
        first.flood_s,
        first.times_capacity,
        settle = first.settle_s,
    );
    for (system, run) in runs {
        let _ = writeln!(out, "{}", run.row(system));
    }
}

fn peers_section(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "\n## Peers\n\nThe same saga (accept durably → reserve all-or-nothing → charge the same gateway \
         simulator with the order id as idempotency key → confirm, or cancel and release) built on each \
         peer as its documentation recommends: [`bench/peers/`](bench/peers/) has the code, how each is \
         tuned and why. Each peer gets the same ramp and latency run as orderflow, from the same load \
         generator, on the same machine, in this run. A peer has no `orderflow verify`, so its books are \
         balanced instead: every product's stock adds up with nothing left reserved, units sold equal \
         confirmed orders, and the gateway holds one charge per confirmed order (keyed by the order id) \
         and none for a cancelled one.\n"
    );
    if results.peers.is_empty() {
        let _ = writeln!(out, "Not run (`--no-peers`).\n");
        return;
    }
    let _ = writeln!(
        out,
        "| peer | best sustained /s | orderflow /s (same storage) | latency run | e2e p50 / p99 ms | orderflow e2e p50 / p99 ms, same rate | accept p99 ms | books |\n|---|---:|---:|---|---|---|---:|---|"
    );
    for peer in &results.peers {
        let absent = match (&peer.unavailable, &peer.failed) {
            (Some(reason), _) => Some(format!("could not run here: {reason}")),
            (None, Some(why)) => Some(format!("**failed**: {why}")),
            (None, None) => None,
        };
        if let Some(absent) = absent {
            let _ = writeln!(
                out,
                "| {} | {} | | | | | | |",
                peer.name,
                absent.replace('|', "\\|").replace('\n', " ")
            );
            continue;
        }
        let ours = results.saga_run(&peer.compared_with);
        let ours_latency = peer
            .latency
            .as_ref()
            .and_then(|run| results.latency_at(&peer.compared_with, run.rate));
        let latency = |run: Option<&LatencyRun>| {
            run.map_or("-".to_owned(), |run| {
                let e = &run.report["end_to_end_ms"];
                format!("{} / {}", ms(&e["p50"]), ms(&e["p99"]))
            })
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            peer.name,
            peer.throughput
                .as_ref()
                .map_or("-".to_owned(), |run| rate(run.best_rate())),
            ours.map_or("-".to_owned(), |run| rate(run.best_rate())),
            peer.compared_with,
            peer.latency.as_ref().map_or("-".to_owned(), |run| format!(
                "{}/s for {:.0} s",
                run.rate, run.seconds
            )),
            latency(peer.latency.as_ref()),
            latency(ours_latency),
            peer.latency
                .as_ref()
                .map_or("-".to_owned(), |run| ms(&run.report["accept_ms"]["p99"])),
            if peer.balanced() {
                "balanced"
            } else {
                "**UNBALANCED**"
            }
        );
    }
    for peer in &results.peers {
        let Some(run) = &peer.throughput else {
            continue;
        };
        steps_table(
            out,
            &format!("{} steps, resources and checks", peer.name),
            &run.steps,
        );
        let _ = writeln!(
            out,
            "\n| process | RSS idle MiB | RSS peak MiB | CPU ms per order |\n|---|---:|---:|---:|"
        );
        for (process, usage) in &run.usage {
            let _ = writeln!(out, "| {process} | {} |", usage_cells(run, process, usage));
        }
        let _ = writeln!(
            out,
            "\nLog bytes per order (its default level): {:.0}. CPU stolen by the hypervisor during the ramp: {}.",
            run.log_bytes_per_order,
            share(run.cpu_stolen)
        );
        let mut checks: Vec<&str> = run.verify_output.iter().map(String::as_str).collect();
        if peer.latency.as_ref().is_some_and(|run| !run.verified) {
            checks.push("the books did not balance after the latency run");
        }
        if !checks.is_empty() {
            let _ = writeln!(out, "\nBooks:\n\n```\n{}\n```", checks.join("\n"));
        }
        let _ = writeln!(out, "\n</details>");
    }
    out.push('\n');
}

/// `analysis`: the hand-written section on where the time goes (`bench/analysis.md`), copied in as is.
pub fn markdown(results: &Results, history: &[Headline], analysis: &str) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let l = &results.limits;
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Generated by `make bench` (`crates/bench`); do not edit by hand. Every figure below comes from one \
         run on one machine, side by side, so compare the ratios rather than the absolute numbers across \
         machines. No figure counts unless `orderflow verify` passed on the system afterwards (each run \
         says so).\n"
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", m.date);
    let _ = writeln!(out, "| commit | `{}` |", m.commit);
    let _ = writeln!(out, "| cores | {} |", m.cores);
    let _ = writeln!(out, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(out, "| memory | {:.0} GiB |", m.memory_gib);
    let _ = writeln!(out, "| kernel | {} |", m.kernel);
    let _ = writeln!(out, "| nats-server | {} |", m.nats_server_version);
    let _ = writeln!(
        out,
        "| placement | everything on this machine: nats-server, the three services, the gateway simulator, the load generator |"
    );
    let _ = writeln!(out, "| suite time | {:.0} s |", results.duration_s);
    let _ = writeln!(
        out,
        "| CPU time taken by the hypervisor (steal) during the suite | {} |\n",
        share(results.cpu_stolen)
    );

    let _ = writeln!(out, "## Reproduce\n");
    let _ = writeln!(
        out,
        "```sh\nmake bench                      # everything below, about 15 minutes on 2 cores\n\
         make up                         # or by hand: a system on :8080 ...\n\
         ./target/release/orderflow loadgen --rate 200 --duration 30s --mix {MIX}\n\
         ./target/release/orderflow loadgen --concurrency 200 --duration 30s\n\
         ./target/release/orderflow-bench --smoke   # each step once, correctness only (part of make test)\n\
         ./target/release/orderflow-bench --no-peers   # orderflow only, about 6 minutes\n\
         ./target/release/orderflow-bench --report-from bench/results/DATE.json   # this page again, after editing bench/analysis.md\n\
         # a peer by hand: bench/peers/dbos/README.md, bench/peers/restate/README.md\n```\n"
    );

    let _ = writeln!(out, "## Limits of this machine (same pinned nats-server)\n");
    let _ = writeln!(out, "| what | rate |\n|---|---:|");
    let optional = |value: Option<f64>| value.map_or("-".to_owned(), rate);
    // Results saved before the decoding rates were measured lack them.
    const NOT_MEASURED: &str = "not measured in this run";
    let limits = [
        (
            "JetStream persisted publish (R1 file store, 256 B, ≤1024 acks in flight)",
            format!("{} msg/s", rate(l.publish_per_s)),
        ),
        (
            "JetStream pull consume + ack",
            format!("{} msg/s", rate(l.consume_ack_per_s)),
        ),
        (
            "bare pipeline, 4 hops of consume → publish → ack (no database, no HTTP)",
            format!("{} msg/s", rate(l.pipeline_per_s)),
        ),
        (
            "SQLite single-row commits, one connection (WAL, synchronous=NORMAL, as the services)",
            format!("{} /s", rate(l.sqlite_commits_per_s)),
        ),
        (
            "SQLite single-row reads in one transaction, one after another, as the services run them",
            format!("{} /s", rate(l.sqlite_statements_per_s)),
        ),
        (
            "PostgreSQL single-row commits, one connection",
            format!("{} /s", optional(l.postgres_commits_per_s)),
        ),
        (
            "PostgreSQL single-row commits, 8 connections",
            format!("{} /s", optional(l.postgres_commits_8_per_s)),
        ),
        (
            "events decoded, bytes to typed event, one core (the 7 a happy order's consumers receive)",
            l.event_decodes_per_s
                .map_or(NOT_MEASURED.to_owned(), |decodes| {
                    format!("{} /s", rate(decodes))
                }),
        ),
        (
            "the same with the envelope's and the payload's JSON Schema checked first, as the consumers run it",
            match (l.event_decodes_per_s, l.event_checks_per_s) {
                (Some(decodes), Some(checks)) if decodes > 0.0 && checks > 0.0 => format!(
                    "{} /s ({:.1} µs more per event, {:.0} µs per order)",
                    rate(checks),
                    1e6 / checks - 1e6 / decodes,
                    7.0 * (1e6 / checks - 1e6 / decodes)
                ),
                _ => NOT_MEASURED.to_owned(),
            },
        ),
    ];
    for (what, value) in limits {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    out.push('\n');

    let _ = writeln!(
        out,
        "## Saga throughput\n\nOpen-loop load (`orderflow loadgen --rate R`, mix `{MIX}`), raised step by \
         step until p99 end-to-end exceeds 1 s, an error occurs or orders end slower than 95 % of the \
         offered rate (the backlog grows). The best sustained step counts.\n"
    );
    let _ = writeln!(
        out,
        "| setup | best sustained (ended orders/s) | target | | verify | CPU stolen during the ramp |\n|---|---:|---:|---|---|---:|"
    );
    for run in &results.saga {
        let target = match run.setup.as_str() {
            "sqlite" => TARGET_SQLITE,
            "postgres" => TARGET_POSTGRES,
            _ => TARGET_SYNC_ALWAYS,
        };
        let _ = writeln!(
            out,
            "| {} | {} | ≥ {} | {} | {} | {} |",
            run.setup,
            rate(run.best_rate()),
            target,
            verdict(run.best_rate() >= target),
            if run.verified { "passed" } else { "**FAILED**" },
            share(run.cpu_stolen)
        );
    }
    for run in &results.saga {
        steps_table(&mut out, &format!("{} steps", run.setup), &run.steps);
        let _ = writeln!(out, "\n</details>");
    }

    let _ = writeln!(
        out,
        "\n## Latency at a fixed rate\n\n| setup | rate | accept p50 / p99 / max ms | end-to-end p50 / p90 / p99 / p99.9 / max ms | errors | verify |\n|---|---:|---|---|---|---|"
    );
    for run in &results.latency {
        let a = &run.report["accept_ms"];
        let e = &run.report["end_to_end_ms"];
        let _ = writeln!(
            out,
            "| {} | {}/s for {:.0} s | {} / {} / {} | {} / {} / {} / {} / {} | {} | {} |",
            run.setup,
            run.rate,
            run.seconds,
            ms(&a["p50"]),
            ms(&a["p99"]),
            ms(&a["max"]),
            ms(&e["p50"]),
            ms(&e["p90"]),
            ms(&e["p99"]),
            ms(&e["p999"]),
            ms(&e["max"]),
            if run.errors.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", run.errors)
            },
            if run.verified { "passed" } else { "**FAILED**" }
        );
    }
    let _ = writeln!(
        out,
        "\nTargets at 200 orders/s: end-to-end p50 ≤ 5 ms and p99 ≤ 20 ms, accept p99 ≤ 5 ms."
    );
    if let Some(lanes) = &results.lanes {
        lanes_section(&mut out, lanes);
    }
    overload_section(&mut out, results);

    let _ = writeln!(
        out,
        "\n## Resources (over each setup's whole ramp)\n\n| setup | process | RSS idle MiB | RSS peak MiB | CPU ms per order |\n|---|---|---:|---:|---:|"
    );
    for run in &results.saga {
        for (process, usage) in &run.usage {
            let _ = writeln!(
                out,
                "| {} | {process} | {} |",
                run.setup,
                usage_cells(run, process, usage)
            );
        }
        let _ = writeln!(
            out,
            "| {} | **three services together** | | | **{:.3}** (target ≤ 0.5) |",
            run.setup,
            run.services_cpu_ms()
        );
    }
    let _ = writeln!(out, "\n| | |\n|---|---|");
    for run in &results.saga {
        let _ = writeln!(
            out,
            "| log bytes per order, {} (default level, all processes) | {:.0} (target ≤ 300) |",
            run.setup, run.log_bytes_per_order
        );
    }
    let _ = writeln!(
        out,
        "| release binary | {:.1} MiB ({} stripped; target ≤ 20 MiB) |",
        m.binary_bytes as f64 / 1048576.0,
        m.stripped_binary_bytes.map_or("-".to_owned(), |b| format!(
            "{:.1} MiB",
            b as f64 / 1048576.0
        ))
    );
    let _ = writeln!(
        out,
        "| release build before this run | {} |",
        m.build_seconds
            .map_or("not measured".to_owned(), |s| format!("{s:.0} s"))
    );

    let _ = writeln!(out, "\n## Ratios\n\n| ratio | value |\n|---|---:|");
    if let Some(sqlite) = results.saga_run("sqlite") {
        let _ = writeln!(
            out,
            "| saga on SQLite (orders/s) ÷ bare pipeline (msg/s) | {:.3} |",
            sqlite.best_rate() / l.pipeline_per_s
        );
    }
    let transactions = results
        .saga_run("postgres")
        .and_then(|run| run.transactions_per_order);
    if let Some(per_order) = transactions {
        let _ = writeln!(
            out,
            "| database transactions per order (measured on PostgreSQL) | {per_order:.1} |"
        );
        if let Some(sqlite) = results.saga_run("sqlite") {
            let _ = writeln!(
                out,
                "| SQLite: orders/s × transactions per order ÷ commit rate | {:.2} |",
                sqlite.best_rate() * per_order / l.sqlite_commits_per_s
            );
        }
        if let (Some(pg), Some(commits)) =
            (results.saga_run("postgres"), l.postgres_commits_8_per_s)
        {
            let _ = writeln!(
                out,
                "| PostgreSQL: orders/s × transactions per order ÷ commit rate (8 connections) | {:.2} |",
                pg.best_rate() * per_order / commits
            );
        }
    }
    for peer in &results.peers {
        let (Some(throughput), Some(latency)) = (&peer.throughput, &peer.latency) else {
            continue;
        };
        let ours = results.saga_run(&peer.compared_with);
        let _ = writeln!(
            out,
            "| orderflow on {} ÷ {} (throughput; above 1 means orderflow is faster) | {} |",
            peer.compared_with,
            peer.name,
            ours.map_or("-".to_owned(), |run| match throughput.best() {
                Some(_) => format!("{:.2}", run.best_rate() / throughput.best_rate()),
                None => "no ratio: the peer sustained none of its steps".to_owned(),
            })
        );
        let _ = writeln!(
            out,
            "| orderflow on {} ÷ {} (end-to-end p99 at {}/s; below 1 means orderflow is faster) | {} |",
            peer.compared_with,
            peer.name,
            latency.rate,
            results
                .latency_at(&peer.compared_with, latency.rate)
                .and_then(LatencyRun::p99)
                .zip(latency.p99())
                .map_or("-".to_owned(), |(ours, theirs)| format!(
                    "{:.2}",
                    ours / theirs
                ))
        );
    }

    peers_section(&mut out, results);
    if !analysis.is_empty() {
        let _ = writeln!(out, "{}", analysis.trim_end());
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "## History\n\nThe headline figures of every recorded run (`bench/results/history.jsonl`), oldest \
         first: each change's before and after, measured by this suite on this machine kind.\n\n\
         | date | commit | SQLite /s | PostgreSQL /s | sync always /s | e2e p50 / p99 ms at 200/s | CPU ms per order | log B per order | CPU stolen | valid |\n\
         |---|---|---:|---:|---:|---|---:|---:|---:|---|"
    );
    for run in history {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {:.2} / {:.2} | {:.2} | {:.0} | {} | {} |",
            run.date,
            run.commit,
            rate(run.sqlite_per_s),
            rate(run.postgres_per_s),
            rate(run.sync_always_per_s),
            run.latency_p50_ms,
            run.latency_p99_ms,
            run.services_cpu_ms_per_order,
            run.log_bytes_per_order,
            share(run.cpu_stolen),
            if run.verified { "yes" } else { "**no**" }
        );
    }
    let problems = results.problems();
    if !problems.is_empty() {
        let _ = writeln!(out, "## Problems in this run\n");
        for problem in problems {
            let _ = writeln!(out, "- {}", problem.lines().next().unwrap_or(""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: u32, finished_per_s: f64, sustained: bool) -> Step {
        Step {
            rate,
            placed: u64::from(rate) * 10,
            finished: u64::from(rate) * 10,
            finished_per_s,
            accept_p99_ms: 1.0,
            end_to_end_p50_ms: 2.0,
            end_to_end_p99_ms: if sustained { 10.0 } else { 2000.0 },
            errors: BTreeMap::new(),
            sustained,
        }
    }

    fn results() -> Results {
        Results {
            machine: Machine {
                cores: 2,
                cpu_model: "a CPU".into(),
                memory_gib: 24.0,
                kernel: "6.1".into(),
                nats_server_version: "v2.15.1".into(),
                date: "2026-12-01".into(),
                commit: "abc1234".into(),
                binary_bytes: 19_000_000,
                stripped_binary_bytes: Some(19_000_000),
                build_seconds: Some(42.0),
            },
            duration_s: 300.0,
            cpu_stolen: None,
            limits: Limits {
                publish_per_s: 200_000.0,
                consume_ack_per_s: 250_000.0,
                pipeline_per_s: 20_000.0,
                sqlite_commits_per_s: 6000.0,
                sqlite_statements_per_s: 40_000.0,
                postgres_commits_per_s: None,
                postgres_commits_8_per_s: None,
                event_decodes_per_s: Some(700_000.0),
                event_checks_per_s: Some(140_000.0),
            },
            saga: vec![SagaRun {
                setup: "sqlite".into(),
                steps: vec![step(100, 100.0, true), step(200, 150.0, false)],
                verified: true,
                verify_output: None,
                usage: BTreeMap::new(),
                cpu_ms_per_order: BTreeMap::from([("order-service".to_owned(), 0.5)]),
                cpu_stolen: Some(0.1),
                log_bytes_per_order: 250.0,
                transactions_per_order: None,
            }],
            latency: Vec::new(),
            lanes: None,
            overload: None,
            peers: Vec::new(),
        }
    }

    fn latency(setup: &str, p99: f64) -> LatencyRun {
        LatencyRun {
            setup: setup.into(),
            rate: 200,
            seconds: 30.0,
            report: serde_json::json!({
                "accept_ms": { "p99": 1.0 },
                "end_to_end_ms": { "p50": p99 / 2.0, "p99": p99 },
            }),
            errors: BTreeMap::new(),
            verified: true,
        }
    }

    #[test]
    fn the_best_sustained_step_counts_and_missing_figures_show_as_dashes() {
        let mut results = results();
        results.saga[0].usage.insert(
            "order-service".to_owned(),
            Usage {
                rss_idle_kb: 1024,
                rss_peak_kb: 2048,
                cpu_ticks: 0,
            },
        );
        assert_eq!(results.saga[0].best_rate(), 100.0);
        assert!(results.problems().is_empty());
        let page = markdown(
            &results,
            &[results.headline()],
            "## Where the time goes\n\nhere",
        );
        assert!(
            page.contains("| sqlite | 100 | ≥ 2000 | **missed** | passed | 10 % |"),
            "{page}"
        );
        assert!(page.contains("| PostgreSQL single-row commits, one connection | - /s |"));
        assert!(page.contains("| bare pipeline, 4 hops of consume → publish → ack (no database, no HTTP) | 20000 msg/s |"));
        // 700,000 and 140,000 events/s: 1.4 and 7.1 µs per event, 5.7 µs more, 40 µs per order.
        assert!(
            page.contains(
                "as the consumers run it | 140000 /s (5.7 µs more per event, 40 µs per order) |"
            ),
            "{page}"
        );
        assert!(page.contains("## Where the time goes\n\nhere"));
        assert!(page.contains("| 2026-12-01 | `abc1234` | 100 |"));
        assert!(
            page.contains("| sqlite | order-service | 1.0 | 2.0 | 0.500 |"),
            "{page}"
        );
    }

    #[test]
    fn peers_are_compared_with_orderflow_on_the_same_storage_and_an_absent_one_says_why() {
        let mut results = results();
        results.latency.push(latency("sqlite", 10.0));
        let mut peer_run = results.saga[0].clone();
        peer_run.setup = "Peer".into();
        peer_run.steps = vec![step(20, 25.0, true), step(50, 30.0, false)];
        results.peers = vec![
            PeerRun {
                name: "Peer".into(),
                compared_with: "sqlite".into(),
                unavailable: None,
                failed: None,
                throughput: Some(peer_run),
                latency: Some(latency("Peer", 40.0)),
                overload: Some(OverloadRun {
                    capacity_per_s: 25.0,
                    times_capacity: 5.0,
                    flood_rate: 125,
                    flood_s: 30.0,
                    settle_s: 60.0,
                    report: serde_json::json!({"placed": 3750, "accepted": 3750, "shed": 0,
                        "final_states": {"confirmed": 1500, "cancelled:timeout": 250},
                        "errors": {"unfinished": 2000},
                        "end_to_end_ms": {"p99": 59000.0}, "shed_ms": {"p99": 0.0}}),
                    verified: true,
                }),
            },
            PeerRun {
                name: "Other".into(),
                compared_with: "sqlite".into(),
                unavailable: Some("npm install failed | offline".into()),
                failed: None,
                throughput: None,
                latency: None,
                overload: None,
            },
        ];
        let page = markdown(&results, &[], "");
        assert!(
            page.contains("| orderflow on sqlite ÷ Peer (throughput; above 1 means orderflow is faster) | 4.00 |"),
            "{page}"
        );
        assert!(page.contains(
            "÷ Peer (end-to-end p99 at 200/s; below 1 means orderflow is faster) | 0.25 |"
        ));
        assert!(
            page.contains(
                "| Peer | 25 | 100 (sqlite) | 200/s for 30 s | 20.00 / 40.00 | 5.00 / 10.00 | 1.00 | balanced |"
            ),
            "{page}"
        );
        assert!(page.contains("| Other | could not run here: npm install failed \\| offline |"));
        results.overload = Some(OverloadRun {
            capacity_per_s: 100.0,
            times_capacity: 5.0,
            flood_rate: 500,
            flood_s: 30.0,
            settle_s: 60.0,
            report: serde_json::json!({"placed": 15000, "accepted": 3100, "shed": 11899,
                "final_states": {"confirmed": 3100}, "errors": {"timeout": 1},
                "end_to_end_ms": {"p99": 14000.0}, "shed_ms": {"p99": 2.5}}),
            verified: true,
        });
        let page = markdown(&results, &[], "");
        assert!(page.contains("## Overload: 5× capacity for 30 s"), "{page}");
        assert!(page.contains("waits up to 60 s for the orders"), "{page}");
        let express = |p99: f64| {
            serde_json::json!({"placed": 300, "finished": 300,
                "end_to_end_ms": {"p50": 4.0, "p90": 6.0, "p99": p99, "max": 20.0}})
        };
        results.lanes = Some(LanesRun {
            setup: "sqlite".into(),
            express_rate: 20,
            flood_rate: 500,
            flood_times_capacity: 5.0,
            flood_head_start_s: 3.0,
            idle: express(10.0),
            flooded: express(15.0),
            flood: results.overload.as_ref().expect("set above").report.clone(),
            verified: Some(true),
        });
        let page = markdown(&results, &[], "");
        assert!(
            page.contains("again 3 s into the flood of normal orders in \"Overload\" below, at 500/s (5× the best sustained rate above), which outlasts them; every order of that system ended and verify passed."),
            "{page}"
        );
        assert!(
            page.contains("Express p99 under the flood / idle: **1.50** (bound: 2)"),
            "{page}"
        );
        assert!(
            page.contains("| orderflow (sqlite) | 100 | 500 | 15000 | 3100 | 11899 | 3100 (100.0 %) | 0 | 0 | 1 | 14000.00 | 2.50 | passed |"),
            "{page}"
        );
        assert!(
            page.contains("| Peer | 25 | 125 | 3750 | 3750 | 0 | 1500 (40.0 %) | 250 | 2000 | 0 | 59000.00 | - | not checked (orders still running) |"),
            "{page}"
        );
        assert!(
            results.peer_problems().is_empty(),
            "one that cannot run here is no problem"
        );
        // A peer's books are its own: orderflow's figures stay valid whatever they say.
        results.peers[0].latency.as_mut().expect("ran").verified = false;
        assert!(results.problems().is_empty());
        assert!(markdown(&results, &[], "").contains("**UNBALANCED**"));
        assert_eq!(results.peer_problems().len(), 1);

        // A peer measured below the fixed rate is compared with orderflow's run at its rate.
        results.peers[0].latency.as_mut().expect("ran").rate = 30;
        let mut slower = latency("sqlite", 4.0);
        slower.rate = 30;
        results.latency.push(slower);
        let page = markdown(&results, &[], "");
        assert!(
            page.contains(
                "÷ Peer (end-to-end p99 at 30/s; below 1 means orderflow is faster) | 0.10 |"
            ),
            "{page}"
        );
    }

    /// `--report-from` renders a saved run: what was written must read back into the same report.
    #[test]
    fn saved_results_render_the_same_report_again() {
        let mut saved = results();
        saved.latency.push(latency("sqlite", 7.0));
        let history = [saved.headline()];
        let json = serde_json::to_string_pretty(&saved).unwrap();
        let read_back: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(
            markdown(&read_back, &history, "analysis"),
            markdown(&saved, &history, "analysis")
        );
    }

    #[test]
    fn a_system_that_failed_verify_is_a_problem() {
        let mut results = results();
        results.saga[0].verified = false;
        results.saga[0].verify_output = Some("order x: lost".into());
        let problems = results.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("verify failed"));
    }
}
