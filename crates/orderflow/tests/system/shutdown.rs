//! Graceful stop: SIGTERM to each service in turn while orders keep coming. Each turns its readiness
//! to 503 first, exits cleanly within its grace period, and leaves nothing behind: no order lost, and
//! no event waiting out its ack timeout for a process that is gone.

use crate::chaos::{self, Deadlines, ORDERS};
use crate::harness::{Options, SAGA_DEADLINE, System};
use futures::StreamExt;
use reqwest::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::{Backend, ChildProcess, on_both_backends, wait_until};

on_both_backends!(each_service_stopped_by_sigterm_mid_load);

/// Far longer than the whole test's sagas take: an event a stopping service left unacknowledged
/// would come back only after it, so every order final well before it shows none was left.
const ACK_WAIT: Duration = Duration::from_secs(90);

async fn each_service_stopped_by_sigterm_mid_load(backend: Backend) {
    let options = Options {
        service_args: vec![
            "--ack-wait".into(),
            "90s".into(),
            // Requests are still served for a moment while readiness already says 503.
            "--shutdown-delay".into(),
            "1s".into(),
        ],
        order_args: vec!["--saga-timeout".into(), "3m".into()],
        ..Options::default()
    };
    let Some(mut system) = chaos::start_with(backend, options).await else {
        return;
    };
    // The load runs on its own, paced, retrying each order with its Idempotency-Key while
    // order-service is away, as a shop's web servers would.
    let accepted = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let order_url = system.order_url.clone();
        let accepted = accepted.clone();
        async move {
            let http = reqwest::Client::new();
            futures::stream::iter(0..ORDERS)
                .map(|i| {
                    let (http, order_url, accepted) =
                        (http.clone(), order_url.clone(), accepted.clone());
                    async move {
                        // 25 orders a second: the load lasts while the three services are stopped.
                        tokio::time::sleep(Duration::from_millis(40) * i as u32).await;
                        let id = chaos::place(&order_url, &http, i, SAGA_DEADLINE).await;
                        accepted.fetch_add(1, Ordering::SeqCst);
                        id
                    }
                })
                .buffer_unordered(ORDERS)
                .collect::<Vec<String>>()
                .await
        }
    });

    let mut first_stop = None;
    for (turn, service) in ["order-service", "inventory-service", "payment-service"]
        .into_iter()
        .enumerate()
    {
        let threshold = 40 * (turn + 1);
        wait_until(
            &format!("{threshold} orders accepted"),
            SAGA_DEADLINE,
            || async { (accepted.load(Ordering::SeqCst) >= threshold).then_some(()) },
        )
        .await;
        let url = match service {
            "order-service" => system.order_url.clone(),
            "inventory-service" => system.inventory_url.clone(),
            _ => system.payment_url.clone(),
        };
        first_stop.get_or_insert_with(Instant::now);
        process(&mut system, service).request_stop();
        let ready = format!("{url}/health/ready");
        let body = wait_until(
            &format!("{service}'s readiness to turn 503 on SIGTERM"),
            SAGA_DEADLINE,
            || async {
                let (status, body) = system.get_json(&ready).await;
                (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
            },
        )
        .await;
        assert_ne!(body["checks"]["shutdown"], "ok", "{service}: {body}");
        let stopping = Instant::now();
        let status = tokio::task::block_in_place(|| process(&mut system, service).terminate());
        assert!(
            status.success(),
            "{service} did not stop cleanly: {status}\n{}",
            system.logs()
        );
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "{service} took {:?} to stop",
            stopping.elapsed()
        );
        process(&mut system, service).restart();
        system.wait_ready(&url).await;
    }

    let ids = load.await.expect("the load ran to its end");
    chaos::assert_all_final(&system, &ids, Deadlines::NeverMissed).await;
    let since_first_stop = first_stop.map(|at| at.elapsed()).unwrap_or_default();
    assert!(
        since_first_stop < ACK_WAIT,
        "the orders took {since_first_stop:?} after the first stop to end: an event waited out \
         its ack timeout\n{}",
        system.logs()
    );
    system.verified().await;
    for service in ["order-service", "inventory-service", "payment-service"] {
        let log = process(&mut system, service).log();
        assert!(log.contains("shutting down"), "{service}:\n{log}");
        assert!(
            !log.contains("longer than --shutdown-grace"),
            "{service}:\n{log}"
        );
    }
}

fn process<'a>(system: &'a mut System, service: &str) -> &'a mut ChildProcess {
    match service {
        "order-service" => &mut system.order,
        "inventory-service" => &mut system.inventory,
        _ => &mut system.payment,
    }
}
