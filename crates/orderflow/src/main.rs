//! The `orderflow` command: every service, the gateway simulator, and the tools that run and inspect the
//! whole system, in one binary (one build, one artifact; see docs/adr/0002).

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orderflow::{demo, dlq, gateway, loadgen, logs, probe, schemas, status, trace, up, verify};
use platform::service::service_runtime;
use platform::telemetry::{self, LogFormat};
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Event-driven order processing on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the order service (HTTP API for orders; owns order state).
    OrderService(order_service::Config),
    /// Run the inventory service (catalog and stock; reserves, releases, commits).
    InventoryService(inventory_service::Config),
    /// Run the payment service (charges and refunds through the gateway).
    PaymentService(payment_service::Config),
    /// Run the payment gateway simulator (a Stripe-like HTTP API with a ledger).
    GatewaySim(gateway_sim::Config),
    /// Run the whole system locally: nats-server, the gateway simulator and the three services.
    Up(up::Args),
    /// Place three demo orders (confirmed, out of stock, declined) against a running system.
    Demo(demo::Args),
    /// Inspect, replay and delete dead letters (messages a consumer could never handle).
    Dlq(dlq::Args),
    /// Switch the gateway simulator's faults (down, slow, flaky, hang) and show its counters.
    Gateway(gateway::Args),
    /// Place orders against a running system at a fixed rate (open loop) or concurrency (closed loop)
    /// and report throughput, accept and end-to-end latency percentiles, and how every order ended.
    Loadgen(loadgen::Args),
    /// Work with the event contracts: generate the JSON Schemas and documents from the event types, and
    /// check that a change keeps each version compatible.
    Schemas(schemas::Args),
    /// Print the services' log lines under `orderflow up`, merged in time order: one order's
    /// (--order), one saga's (--correlation-id), or all, and follow them (--follow).
    Logs(logs::Args),
    /// Show a running system at a glance: each service's health, outbox backlog and own facts (orders
    /// of the last minute, breaker, stock), every consumer's backlog and the dead letters.
    Status(status::Args),
    /// Show one order's saga as a waterfall across the services: each event, when it was published
    /// and handled, and where the order waits now if it is stuck.
    Trace(trace::Args),
    /// GET a health endpoint and exit 0 on a 2xx answer, 1 otherwise: a container's health check.
    Probe(probe::Args),
    /// Check, once the system is quiet, that every order ended consistently across the services' data and
    /// the gateway ledger; prints each violation and exits 1 if there is one.
    Verify(verify::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // What no single flag can check is checked here, before anything connects, and refused the way
    // clap refuses a bad flag: a message naming the flags, and exit code 2.
    if let Err(reason) = cli.command.check() {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, reason)
            .exit();
    }
    // A service's normal lane runs below its express lane's thread in CPU priority (ADR 15).
    let runtime = match &cli.command {
        Command::OrderService(config) => service_runtime(config.common.normal_lane_nice)?,
        Command::InventoryService(config) => service_runtime(config.common.normal_lane_nice)?,
        Command::PaymentService(config) => service_runtime(config.common.normal_lane_nice)?,
        _ => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::OrderService(config) => {
                let (telemetry, shutdown) =
                    start(config.common.log_format, order_service::INFO.name);
                order_service::run(config, telemetry.metrics.clone(), shutdown).await?;
            }
            Command::InventoryService(config) => {
                let (telemetry, shutdown) =
                    start(config.common.log_format, inventory_service::INFO.name);
                inventory_service::run(config, telemetry.metrics.clone(), shutdown).await?;
            }
            Command::PaymentService(config) => {
                let (telemetry, shutdown) =
                    start(config.common.log_format, payment_service::INFO.name);
                payment_service::run(config, telemetry.metrics.clone(), shutdown).await?;
            }
            Command::GatewaySim(config) => {
                let (telemetry, shutdown) = start(config.log_format, gateway_sim::NAME);
                gateway_sim::run(config, telemetry.metrics.clone(), shutdown).await?;
            }
            Command::Up(args) => up::run(args).await?,
            Command::Demo(args) => return show_demo(args).await,
            Command::Dlq(args) => return Ok(show_dlq(args).await),
            Command::Gateway(args) => return Ok(show_gateway(args).await),
            Command::Verify(args) => return Ok(show_verify(args).await),
            Command::Loadgen(args) => return Ok(show_loadgen(args).await),
            Command::Probe(args) => return Ok(show_probe(args).await),
            Command::Schemas(args) => return Ok(show_schemas(args)),
            Command::Status(args) => return show_status(args).await,
            Command::Trace(args) => return Ok(show_trace(args).await),
            Command::Logs(args) => return Ok(show_logs(args).await),
        }
        Ok(ExitCode::SUCCESS)
    })
}

impl Command {
    /// The checks across flags of the services' configurations.
    fn check(&self) -> Result<(), String> {
        match self {
            Command::OrderService(config) => config.check(),
            Command::InventoryService(config) => config.common.check(),
            Command::PaymentService(config) => config.check(),
            _ => Ok(()),
        }
    }
}

/// Logs, metrics, span export (kept until the service ends: dropping it flushes the last spans),
/// and a shutdown signal that fires on SIGINT or SIGTERM.
fn start(format: LogFormat, service: &'static str) -> (telemetry::Telemetry, platform::Shutdown) {
    let telemetry = telemetry::init(format, service);
    let (trigger, shutdown) = platform::shutdown::channel();
    tokio::spawn(async move {
        platform::shutdown::signal().await;
        tracing::info!("shutdown requested");
        trigger.trigger();
    });
    (telemetry, shutdown)
}

/// `orderflow status`: the report once (exit 1 unless every service is ready), or refreshed in place
/// with `--watch` until Ctrl-C.
async fn show_status(args: status::Args) -> anyhow::Result<ExitCode> {
    let targets = status::Targets::from_args(&args.system)?;
    let terminal = std::io::stdout().is_terminal();
    let colour = if terminal {
        status::Colour::On
    } else {
        status::Colour::Off
    };
    loop {
        let report = status::gather(&targets).await;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if args.watch && terminal {
                // Clear the screen and go home: the new report replaces the old one in place.
                print!("\x1b[2J\x1b[H");
            }
            for line in report.text_lines(colour) {
                println!("{line}");
            }
        }
        if !args.watch {
            return Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        if !terminal && !args.json {
            println!();
        }
    }
}

/// `orderflow trace`: the waterfall, or why there is none (exit 1).
async fn show_trace(args: trace::Args) -> ExitCode {
    match trace::trace(&args).await {
        Ok(waterfall) if args.json => match serde_json::to_string(&waterfall) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("orderflow trace: {error}");
                ExitCode::FAILURE
            }
        },
        Ok(waterfall) => {
            let colour = if std::io::stdout().is_terminal() {
                status::Colour::On
            } else {
                status::Colour::Off
            };
            for line in waterfall.text_lines(colour) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("orderflow trace: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `orderflow logs`: the matching lines so far, then (with --follow) new ones until Ctrl-C.
async fn show_logs(args: logs::Args) -> ExitCode {
    let dir = args.data_dir.join("logs");
    let mut reader = logs::LogReader::new(&dir);
    if !reader.exists() {
        eprintln!(
            "orderflow logs: no logs in {}; point --data-dir at the folder `orderflow up` runs with",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let filter = logs::Filter::from_args(&args);
    let colour = if std::io::stdout().is_terminal() && !args.json {
        status::Colour::On
    } else {
        status::Colour::Off
    };
    loop {
        for line in reader
            .read_new()
            .into_iter()
            .filter(|line| filter.matches(line))
        {
            if args.json {
                println!("{}", line.raw);
            } else {
                println!("{}", line.render(colour));
            }
        }
        if !args.follow {
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            _ = tokio::time::sleep(logs::FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// `orderflow verify`: each violation and the summary (or one JSON object); exit 0 consistent, 1
/// violations, 2 the data could not be read.
async fn show_verify(args: verify::Args) -> ExitCode {
    let verdict = match verify::verify(&args).await {
        Ok(verdict) => verdict,
        Err(unreadable) => {
            eprintln!("orderflow verify: {unreadable}");
            return ExitCode::from(verify::EXIT_UNREADABLE);
        }
    };
    if let Some(note) = verdict.allowed_dead_letters() {
        eprintln!("{note}");
    }
    if args.json {
        println!("{}", verdict.to_json());
    } else {
        for line in verdict.text_lines() {
            println!("{line}");
        }
    }
    if verdict.is_consistent() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `orderflow demo`: each scenario's steps as they happen, then the summary; exit 1 unless every order
/// ended as expected, or if the system is not there (said on stderr).
async fn show_demo(args: demo::Args) -> anyhow::Result<ExitCode> {
    let mut print_progress = |progress: demo::Progress| print_lines(progress.text_lines());
    match demo::run(args, &mut print_progress).await? {
        demo::Outcome::Played(summary) => {
            print_lines(summary.text_lines());
            Ok(if summary.all_as_expected() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        demo::Outcome::NotStarted(reason) => {
            eprintln!("{reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `orderflow dlq`: the list, one dead letter, or what a replay or purge did, as text or (pretty) JSON;
/// warnings and each failure on stderr. Exit 1 if anything failed.
async fn show_dlq(args: dlq::Args) -> ExitCode {
    let json = args.json();
    let outcome = match dlq::execute(args, confirm_deletion).await {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // `{:#}` is serde_json's pretty form, two-space indented; it cannot fail for a `Value`.
    match outcome {
        dlq::Outcome::Listed(listing) if json => println!("{:#}", listing.to_json()),
        dlq::Outcome::Listed(listing) => print_lines(listing.text_lines()),
        dlq::Outcome::Shown(letter) if json => println!("{:#}", letter.to_json()),
        dlq::Outcome::Shown(letter) => print_lines(letter.text_lines()),
        dlq::Outcome::Replayed(replays) => {
            for warning in replays.warnings() {
                eprintln!("warning: {warning}");
            }
            // In the order they happened: each replay's line on stdout, each failure's on stderr.
            for batch in replays.batches() {
                match batch {
                    Ok(replay) if !json => println!("{}", replay.describe()),
                    Ok(_) => {}
                    Err(error) => eprintln!("error: {error:#}"),
                }
            }
            if json {
                println!("{:#}", replays.to_json());
            } else if let Some(line) = replays.closing_line() {
                println!("{line}");
            }
            if !replays.all_replayed() {
                return ExitCode::FAILURE;
            }
        }
        dlq::Outcome::Purged(purge) => {
            for failure in purge.failures() {
                eprintln!("error: {failure}");
            }
            println!("{}", purge.text_line());
            if !purge.failures().is_empty() {
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Asks on the terminal before `orderflow dlq purge` deletes; never guesses "yes" for a script.
fn confirm_deletion(letters: usize) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "refusing to delete {} without confirmation: stdin is not a terminal; pass --yes",
            dlq::count(letters)
        );
    }
    eprint!("Delete {}? [y/N] ", dlq::count(letters));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(dlq::is_yes(&answer))
}

/// `orderflow gateway`: the simulator's answer as one line or its (pretty) JSON; a failure on stderr,
/// exit 1.
async fn show_gateway(args: gateway::Args) -> ExitCode {
    let json = args.json();
    match gateway::execute(args).await {
        // `{:#}` is serde_json's pretty form; it cannot fail for a `Value`.
        Ok(answer) if json => println!("{:#}", answer.json()),
        Ok(answer) => println!("{}", answer.text_line()),
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `orderflow loadgen`: the run's first line and, on a terminal, a progress line redrawn in place; then
/// the report as a table or JSON. Exit 0 all went well, 1 some order did not, 2 the load could not
/// start (why, on stderr).
async fn show_loadgen(args: loadgen::Args) -> ExitCode {
    let json = args.json;
    let bar = if std::io::stdout().is_terminal() && !json {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut show_progress = |progress: loadgen::Progress| match progress {
        loadgen::Progress::Starting(start) if !json => println!("{}", start.text_line()),
        loadgen::Progress::Starting(_) => {}
        loadgen::Progress::Running(snapshot) => bar.set_message(snapshot.text_line()),
        loadgen::Progress::Done => bar.finish_and_clear(),
    };
    let report = match loadgen::load(args, &mut show_progress).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("orderflow loadgen: {error:#}");
            return ExitCode::from(loadgen::EXIT_CANNOT_START);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("orderflow loadgen: {error}");
                return ExitCode::from(loadgen::EXIT_CANNOT_START);
            }
        }
    } else {
        print_lines(report.text_lines());
    }
    if report.all_went_well() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `orderflow probe`: exit 0 on a 2xx answer, else why not on stderr and exit 1.
async fn show_probe(args: probe::Args) -> ExitCode {
    match probe::probe(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("probe: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// `orderflow schemas`: what was written and deleted, or each breaking change and the verdict. Exit 0
/// done or compatible, 1 breaking changes, 2 it could not be done (why, on stderr).
fn show_schemas(args: schemas::Args) -> ExitCode {
    let outcome = match schemas::execute(args) {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(schemas::EXIT_UNABLE);
        }
    };
    print_lines(outcome.text_lines());
    if let Some(error) = outcome.stopped_by() {
        eprintln!("error: {error:#}");
        return ExitCode::from(schemas::EXIT_UNABLE);
    }
    if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}
