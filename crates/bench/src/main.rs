//! `orderflow-bench` (run by `make bench`): one run on one machine, everything side by side. The
//! machine's limits first (broker, bare pipeline, database commits), then orderflow's saga throughput
//! on each storage (ramping the arrival rate until it cannot keep up), its latency at a fixed rate, and
//! the resources it used; every system must pass `orderflow verify` afterwards or its figures are marked
//! invalid. Then the same saga on the benchmark peers (`bench/peers/`: DBOS, Restate), side by side.
//! Writes `BENCHMARKS.md` and `bench/results/<date>.json` (an earlier run of the same day is kept as
//! `<date>-<commit>.json`).

mod limits;
mod machine;
mod peers;
mod report;
mod saga;
mod system;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "orderflow-bench",
    about = "Measure orderflow against the machine's limits; writes BENCHMARKS.md (run it with `make bench`)",
    after_help = "The full run takes about 15 minutes on 2 cores, half of it the peers (--no-peers \
                  leaves them out). --smoke checks in about a minute that every step still works \
                  (nothing lost, verify passes, the peers' books balance) and measures nothing."
)]
struct Args {
    /// The orderflow binary under test: a release build (`cargo build --release -p orderflow`).
    #[arg(long, default_value = "target/release/orderflow")]
    orderflow: PathBuf,
    /// A PostgreSQL server for the PostgreSQL runs: each run creates a database of its own there and
    /// drops it afterwards. Runs on PostgreSQL are skipped (and say so) when it cannot be reached.
    #[arg(
        long,
        env = "ORDERFLOW_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        value_parser = platform::config::DATABASE_URL
    )]
    postgres_url: String,
    /// Where the report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Folder for the machine-readable results: `<date>.json` for the day's latest run, an earlier
    /// one of the same day moved to `<date>-<commit>.json`.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// Every step once with a tiny load, asserting correctness only (for `make test`): exits 1 if an
    /// order was lost or verify fails. Writes no report.
    #[arg(long)]
    smoke: bool,
    /// Leave out the benchmark peers (bench/peers/: DBOS, Restate), which otherwise are installed from
    /// the package registries on first use and measured after orderflow.
    #[arg(long)]
    no_peers: bool,
    /// Seconds the release build took before this run (`make bench` measures it), for the report.
    #[arg(long)]
    build_seconds: Option<f64>,
    /// Measure nothing: write the report again from a run's saved results (`bench/results/<date>.json`),
    /// with `bench/analysis.md` as it is now, for when the analysis was written from that run's
    /// figures. The history is left as it is (the run is in it already).
    #[arg(long, value_name = "RESULTS_JSON", conflicts_with_all = ["smoke", "no_peers", "build_seconds"])]
    report_from: Option<PathBuf>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<ExitCode> {
    if let Some(saved) = &args.report_from {
        let results: report::Results = std::fs::read_to_string(saved)
            .map_err(anyhow::Error::from)
            .and_then(|json| Ok(serde_json::from_str(&json)?))
            .with_context(|| format!("cannot read the results in {}", saved.display()))?;
        write_report(&args, &results, &read_history(&args)?)?;
        progress(&format!(
            "wrote {} from {}",
            args.out.display(),
            saved.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        args.orderflow.is_file(),
        "{} does not exist: build it with `cargo build --release -p orderflow` (or run `make bench`)",
        args.orderflow.display()
    );
    let plan = if args.smoke {
        saga::Plan::SMOKE
    } else {
        saga::Plan::FULL
    };
    let started = *STARTED.get_or_init(std::time::Instant::now);
    let cpu_at_start = machine::CpuTimes::now();
    let machine = machine::Machine::read(&args.orderflow, args.build_seconds);
    progress(&format!(
        "machine: {} cores, {}, nats-server {}, commit {}",
        machine.cores, machine.cpu_model, machine.nats_server_version, machine.commit
    ));
    let postgres = saga::Postgres::reach(&args.postgres_url).await;
    if let Err(reason) = &postgres {
        progress(&format!(
            "PostgreSQL not reachable at {} ({reason}): its runs are skipped",
            platform::config::redact(&args.postgres_url)
        ));
    }
    let mut results = saga::run_all(
        &args.orderflow,
        machine,
        postgres.as_ref().ok(),
        plan,
        !args.no_peers,
    )
    .await?;
    results.duration_s = started.elapsed().as_secs_f64();
    results.cpu_stolen = machine::CpuTimes::now().and_then(|now| now.stolen_since(cpu_at_start));
    if args.smoke {
        // The smoke also keeps the peers' integration working, but a peer that cannot be installed
        // here (no registry) is left out rather than failing the tests of orderflow.
        let mut problems = results.problems();
        problems.extend(results.peer_problems());
        for problem in &problems {
            eprintln!("smoke: {problem}");
        }
        progress(&format!(
            "smoke run finished in {:.0} s: {}",
            started.elapsed().as_secs_f64(),
            if problems.is_empty() {
                "every step works"
            } else {
                "FAILED"
            }
        ));
        return Ok(if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("cannot create {}", args.results.display()))?;
    let json_path = args.results.join(format!("{}.json", results.machine.date));
    keep_earlier_run(&json_path)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let mut history = read_history(&args)?;
    history.push(results.headline());
    let lines: String = history
        .iter()
        .map(|run| serde_json::to_string(run).map(|line| line + "\n"))
        .collect::<Result<_, _>>()?;
    let history_file = history_path(&args);
    std::fs::write(&history_file, lines)
        .with_context(|| format!("cannot write {}", history_file.display()))?;
    write_report(&args, &results, &history)?;
    progress(&format!(
        "wrote {} and {} in {:.0} s",
        args.out.display(),
        json_path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(if results.problems().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// When the run started, for the time on each progress line.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// One line of progress on stderr, with the minutes and seconds since the run started, so a long run
/// shows where it is and where its time went.
pub fn progress(line: &str) {
    let elapsed = STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    eprintln!("bench {:>2}:{:02}: {line}", elapsed / 60, elapsed % 60);
}

fn history_path(args: &Args) -> PathBuf {
    args.results.join("history.jsonl")
}

/// The headline figures of every recorded run, oldest first.
fn read_history(args: &Args) -> Result<Vec<report::Headline>> {
    let path = history_path(args);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// Moves the results of a run earlier the same day out of the way, to `<date>-<its commit>.json`:
/// `<date>.json` is then the day's latest run, and no run's results are overwritten.
fn keep_earlier_run(json_path: &std::path::Path) -> Result<()> {
    let text = match std::fs::read_to_string(json_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", json_path.display()));
        }
    };
    let commit = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|saved| saved["machine"]["commit"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "earlier".to_owned());
    let stem = json_path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut kept = json_path.with_file_name(format!("{stem}-{commit}.json"));
    let mut nth = 2;
    while kept.exists() {
        kept = json_path.with_file_name(format!("{stem}-{commit}-{nth}.json"));
        nth += 1;
    }
    std::fs::rename(json_path, &kept)
        .with_context(|| format!("cannot move {} to {}", json_path.display(), kept.display()))?;
    progress(&format!("kept the day's earlier run as {}", kept.display()));
    Ok(())
}

/// Writes BENCHMARKS.md (or `--out`) from the results, the history and the hand-written analysis.
fn write_report(
    args: &Args,
    results: &report::Results,
    history: &[report::Headline],
) -> Result<()> {
    // The hand-written analysis lives beside the results, in the parent of the results folder.
    let analysis_path = args
        .results
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("analysis.md");
    let analysis = std::fs::read_to_string(&analysis_path).unwrap_or_default();
    std::fs::write(&args.out, report::markdown(results, history, &analysis))
        .with_context(|| format!("cannot write {}", args.out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_the_same_day_keeps_the_first_runs_results() {
        let dir = tempfile::tempdir().unwrap();
        let today = dir.path().join("2026-12-07.json");
        let run = |commit: &str| format!(r#"{{"machine": {{"commit": "{commit}"}}}}"#);
        std::fs::write(&today, run("00303f7")).unwrap();
        keep_earlier_run(&today).unwrap();
        assert!(!today.exists());
        let kept = dir.path().join("2026-12-07-00303f7.json");
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), run("00303f7"));

        // The same commit measured twice in a day: neither is lost.
        std::fs::write(&today, run("00303f7")).unwrap();
        keep_earlier_run(&today).unwrap();
        assert!(dir.path().join("2026-12-07-00303f7-2.json").exists());
        assert!(kept.exists());

        // Nothing to keep on a day's first run.
        keep_earlier_run(&today).unwrap();
    }
}
