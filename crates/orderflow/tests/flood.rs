//! Priority lanes under a flood (ADR 15): express orders placed while normal orders arrive faster than
//! the system finishes them end in milliseconds, while the normal lane's orders wait behind their
//! backlog for seconds. A test binary of its own, both backends one after the other: cargo runs test
//! binaries one at a time, so no other test's system shares the cores while this one measures.

// The system tests' harness; this test uses a part of it only.
mod flooding;
#[allow(dead_code)]
#[path = "system/harness.rs"]
mod harness;

use async_nats::jetstream::consumer::pull;
use contracts::Priority;
use contracts::topology::ALL_CONSUMERS;
use flooding::report;
use harness::System;
use testkit::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_orders_keep_their_latency_under_a_flood_of_normal_ones() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        express_under_a_flood(backend).await;
    }
}

/// Express orders per second while measuring: light, like the urgent few among many.
const EXPRESS_RATE: &str = "10";
/// Express orders per measurement: enough for a p99 that is not just the maximum of a handful.
const EXPRESS_ORDERS: u64 = 100;
/// The flood's rate over what the system finishes: the normal lane's backlog grows all along, and
/// the HTTP front still takes every order (beyond about twice, without admission control, it
/// queues the requests themselves for seconds, the express ones with them).
const FLOOD_TIMES_CAPACITY: f64 = 1.5;
/// The flood counts as one once the normal lane holds this long's worth of work (at the measured
/// capacity) waiting.
const BACKLOG_SECONDS: f64 = 2.0;

async fn express_under_a_flood(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    let express_orders = EXPRESS_ORDERS.to_string();
    let express = [
        "--priority",
        "express",
        "--rate",
        EXPRESS_RATE,
        "--orders",
        &express_orders,
        "--settle-timeout",
        "60s",
    ];
    // The yardstick: express orders on the idle system.
    let idle = report(&system.loadgen(&express).await);
    assert_eq!(idle["finished"], EXPRESS_ORDERS, "{idle}");
    let idle_p99 = idle["end_to_end_ms"]["p99"].as_f64().expect("p99");

    let finished_per_s = flooding::capacity(&system).await;
    let flood_rate = ((finished_per_s * FLOOD_TIMES_CAPACITY).round() as u64).max(1);
    let backlog = ((finished_per_s * BACKLOG_SECONDS).round() as u64).max(50);

    // The flood: normal orders faster than the system finishes them, until the normal lane holds
    // a backlog, and on while the express orders are measured again.
    let flood_rate = flood_rate.to_string();
    let flood_args = [
        "--rate",
        &flood_rate,
        "--duration",
        "30s",
        "--settle-timeout",
        "1s",
    ];
    let flood = system.loadgen(&flood_args);
    let measured = async {
        testkit::wait_until(
            &format!("a backlog of {backlog} normal events"),
            std::time::Duration::from_secs(60),
            || async { (normal_backlog(&system).await >= backlog).then_some(()) },
        )
        .await;
        let during = report(&system.loadgen(&express).await);
        (during, normal_backlog(&system).await)
    };
    let (flood, (during, still_waiting)) = tokio::join!(flood, measured);
    let flood = report(&flood);
    assert_eq!(during["finished"], EXPRESS_ORDERS, "{during}");
    let during_p99 = during["end_to_end_ms"]["p99"].as_f64().expect("p99");
    let normal_p50 = flood["end_to_end_ms"]["p50"].as_f64().expect("p50");
    eprintln!(
        "capacity {finished_per_s:.0}/s, flood {flood_rate}/s; express end-to-end p99: idle \
         {idle_p99:.1} ms, under the flood {during_p99:.1} ms ({:.1}x); normal lane p50 \
         {normal_p50:.0} ms, {still_waiting} events waiting when the express orders had ended",
        during_p99 / idle_p99
    );
    // It was a flood all along: the normal lane still had a backlog when the last express order
    // ended, and its orders waited seconds.
    assert!(
        still_waiting >= backlog / 4,
        "the flood was worked off before the express orders ended ({still_waiting} waiting)"
    );
    // No express order waited behind that backlog.
    assert!(
        during_p99 * 10.0 <= normal_p50,
        "express p99 {during_p99:.1} ms is not far below the normal lane's p50 {normal_p50:.0} ms\n{during}"
    );
}

/// Events waiting for the normal lane's consumers, across the streams.
async fn normal_backlog(system: &System) -> u64 {
    let js = system.jetstream().await;
    let mut waiting = 0;
    for spec in ALL_CONSUMERS
        .iter()
        .filter(|spec| spec.priority == Priority::Normal)
    {
        let Ok(stream) = js.get_stream(spec.stream).await else {
            continue;
        };
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>(spec.name).await else {
            continue;
        };
        if let Ok(info) = consumer.info().await {
            waiting += info.num_pending + info.num_ack_pending as u64;
        }
    }
    waiting
}
