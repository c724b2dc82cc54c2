//! What the flood tests (`flood.rs`, `overload.rs`) share: reading the load generator's report, and
//! measuring what the system finishes before flooding it at a multiple of that.

use crate::harness::{System, shown};
use serde_json::Value;
use std::process::Output;

/// The report `orderflow loadgen --json` printed.
pub fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("loadgen --json prints one JSON object: {}", shown(output)))
}

/// Orders per second this build finishes on this machine: clients enough (64, closed loop) to keep
/// every service busy for 5 s.
pub async fn capacity(system: &System) -> f64 {
    let measured = report(
        &system
            .loadgen(&[
                "--concurrency",
                "64",
                "--duration",
                "5s",
                "--settle-timeout",
                "60s",
            ])
            .await,
    );
    measured["finished_per_s"].as_f64().expect("finished_per_s")
}
