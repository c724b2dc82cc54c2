//! Polling helpers: tests wait for *conditions*, never for fixed sleeps.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How often [`wait_until`] re-runs its probe.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The conventional NATS port; a system nats-server may be listening there.
const NATS_DEFAULT_PORT: u16 = 4222;

/// Polls `probe` every 25 ms until it returns `Some`, and returns that value.
///
/// Asynchronous systems converge eventually; a fixed sleep is either too short
/// (flaky) or too long (slow). Polling against a generous deadline is both
/// robust and fast. On timeout it panics with `what`, so the failure says which
/// condition never became true rather than just "timed out".
///
/// The deadline is measured on the real clock (`std::time::Instant`) because
/// the things being waited for are real processes, unaffected by a paused
/// tokio clock.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, timeout, || {
        let attempt = probe();
        async move { attempt.await.ok_or_else(String::new) }
    })
    .await
}

/// [`wait_until`] for a probe that says why the condition does not hold yet (`Err(why)`): on timeout
/// the panic shows the last answer, so a failure seen once in CI can be read without rerunning it.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            if last.is_empty() {
                panic!("timed out after {timeout:?}: {what}");
            }
            panic!("timed out after {timeout:?}: {what}; last seen:\n{last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Ports handed out by [`free_ports`] lie below the kernel's ephemeral range (32768–60999 by default),
/// where the kernel never picks ports on its own: an outgoing connection or a `bind(0)` elsewhere
/// cannot take a port between the moment we choose it and the moment a server binds it.
const FIRST_PORT: u16 = 20_000;
const PORTS: u16 = 12_000;

/// The next candidate, as an offset from [`FIRST_PORT`]; starts at a per-process random point so that
/// test processes running side by side rarely walk the same ports.
static NEXT_PORT: OnceLock<AtomicU16> = OnceLock::new();

/// Returns `count` consecutive TCP ports on 127.0.0.1 that are free now and that no other caller in
/// this process will get. Port 4222 (a system nats-server's) is never among them.
pub fn free_ports(count: u16) -> u16 {
    let next = NEXT_PORT.get_or_init(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        AtomicU16::new((seed % u32::from(PORTS)) as u16)
    });
    loop {
        let offset = next.fetch_add(count, Ordering::Relaxed) % PORTS;
        if offset + count > PORTS {
            continue;
        }
        let first = FIRST_PORT + offset;
        let ports = first..first + count;
        if !ports.contains(&NATS_DEFAULT_PORT)
            && ports
                .clone()
                .all(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        {
            return first;
        }
    }
}

/// Returns a TCP port on 127.0.0.1 that is free now and that no other caller in this process will get
/// (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, NATS_DEFAULT_PORT);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be free");
    }

    #[test]
    fn free_ports_never_hands_out_a_port_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let first = free_ports(4);
            for port in first..first + 4 {
                assert!(seen.insert(port), "port {port} handed out twice");
                assert!((FIRST_PORT..FIRST_PORT + PORTS).contains(&port));
            }
        }
    }

    #[tokio::test]
    async fn wait_until_returns_probe_value() {
        let mut calls = 0;
        let value = wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            let current = calls;
            async move { (current >= 3).then_some(current) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms: never")]
    async fn wait_until_panics_on_timeout() {
        wait_until("never", Duration::from_millis(100), || async { None::<()> }).await;
    }
}
