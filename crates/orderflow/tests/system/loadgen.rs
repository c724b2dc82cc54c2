//! `orderflow loadgen` against a real system: it places the orders it was asked for, in the mix it was
//! asked for, sees every one of them end on NATS, and leaves a system that `verify` passes.

use crate::harness::{System, shown};
use serde_json::Value;
use std::process::Output;
use testkit::{Backend, on_both_backends};

on_both_backends!(an_open_loop_run_sees_every_order_end_as_its_kind_should);
on_both_backends!(a_closed_loop_run_keeps_its_clients_busy_until_the_orders_are_placed);

/// The load generator's report; every order of these runs must end within a minute.
async fn loadgen(system: &System, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--settle-timeout", "60s"]);
    system.loadgen(&args).await
}

fn report(system: &System, output: &Output) -> Value {
    assert!(
        output.status.success(),
        "loadgen failed: {}\n{}",
        shown(output),
        system.logs()
    );
    serde_json::from_slice(&output.stdout).expect("loadgen --json prints one JSON object")
}

async fn an_open_loop_run_sees_every_order_end_as_its_kind_should(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    let output = loadgen(
        &system,
        &[
            "--rate",
            "50",
            "--orders",
            "60",
            "--mix",
            "happy=8,out_of_stock=1,declined=1",
        ],
    )
    .await;
    let report = report(&system, &output);
    assert_eq!(report["mode"], "rate");
    assert_eq!(report["placed"], 60);
    assert_eq!(report["accepted"], 60);
    assert_eq!(report["finished"], 60);
    assert_eq!(report["final_states"]["confirmed"], 48);
    assert_eq!(report["final_states"]["cancelled:insufficient_stock"], 6);
    assert_eq!(report["final_states"]["cancelled:payment_declined"], 6);
    assert_eq!(report["errors"], serde_json::json!({}));
    for latency in ["accept_ms", "end_to_end_ms", "total_ms"] {
        assert_eq!(report[latency]["count"], 60, "{latency}");
        let (p50, max) = (
            report[latency]["p50"].as_f64().unwrap(),
            report[latency]["max"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= max, "{latency}: {}", report[latency]);
    }
    system.verified().await;
}

async fn a_closed_loop_run_keeps_its_clients_busy_until_the_orders_are_placed(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    let output = loadgen(&system, &["--concurrency", "4", "--orders", "20"]).await;
    let report = report(&system, &output);
    assert_eq!(report["mode"], "concurrency");
    assert_eq!(report["target"], 4);
    assert_eq!(report["placed"], 20);
    assert_eq!(report["final_states"]["confirmed"], 20);
    system.verified().await;
}
