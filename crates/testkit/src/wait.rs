//! Polling helpers: tests wait for *conditions*, never for fixed sleeps.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
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
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and letting the kernel choose, then
/// releasing it for the caller's process to bind. Another process may grab
/// it in between, so callers that spawn a server must detect a failed bind
/// and retry with a new port (as [`crate::NatsServer::start`] does). Port 4222
/// is never returned so that a test can't accidentally reach a system
/// nats-server.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect(
            "binding 127.0.0.1:0 to find a free port failed; is the loopback interface up?",
        );
        let port = listener
            .local_addr()
            .expect("reading the local address of a bound listener failed")
            .port();
        if port != NATS_DEFAULT_PORT {
            return port;
        }
    }
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
