//! The HTTP server of every process: axum's router on hyper's HTTP/1 connections, with the limits a
//! server on an open network needs. `axum::serve` has none of them: no cap on connections, and no
//! timer, so a client that sends its request head one byte at a time (slowloris) holds a connection,
//! and with enough of them the server, forever.
//!
//! - At most `--http-max-connections` connections are served at once; beyond that the server stops
//!   accepting and new ones wait in the kernel's backlog.
//! - A request head (request line and headers) must arrive within `--http-header-timeout`, which also
//!   closes a kept-alive connection idle that long; heads over [`MAX_HEAD_BYTES`] or with more than
//!   [`MAX_HEADERS`] headers get 431.
//! - The request timeout and the body limit apply per request ([`crate::http::with_common_routes`]).
//! - At shutdown it stops accepting, lets each connection finish the request in flight, and closes
//!   idle ones.

use crate::config::duration_between;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Request heads above this size are refused with 431 (hyper's read buffer limit, which is at least
/// 8 KiB). Our routes need a few hundred bytes of headers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Requests with more headers are refused with 431.
pub const MAX_HEADERS: usize = 64;
/// After an accept error that is not one connection's (out of file descriptors, say), a pause
/// instead of a spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub const HTTP_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const HTTP_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The connection limits of a server, as flags or environment variables.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ServerArgs {
    /// Connections served at once (1 to 100,000). Beyond it the server stops accepting; new
    /// connections wait in the kernel's backlog until one closes.
    #[arg(long, env = "ORDERFLOW_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http_max_connections: u32,
    /// How long a client may take to send a request's head (request line and headers), which is
    /// also how long a kept-alive connection may sit idle (100ms to 10m). A client slower than
    /// that, such as one trickling its headers to hold the connection, is cut off.
    #[arg(long, env = "ORDERFLOW_HTTP_HEADER_TIMEOUT", default_value = "10s",
        value_parser = duration_between(HTTP_TIMEOUT_MIN, HTTP_TIMEOUT_MAX))]
    pub http_header_timeout: Duration,
    /// How long a request may take from its head to its answer, reading its body included (100ms
    /// to 10m); it is answered 408 and its connection closed after that.
    #[arg(long, env = "ORDERFLOW_HTTP_REQUEST_TIMEOUT", default_value = "30s",
        value_parser = duration_between(HTTP_TIMEOUT_MIN, HTTP_TIMEOUT_MAX))]
    pub http_request_timeout: Duration,
}

impl Default for ServerArgs {
    fn default() -> Self {
        ServerArgs {
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` resolves, then stops accepting and
/// waits for the connections to finish their requests in flight. Each request carries its peer's
/// address (`ConnectInfo<SocketAddr>`), which the per-client rate limit goes by.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerArgs,
    stop: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.http_max_connections as usize));
    let connections = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small answers go out at once instead of waiting for more to send.
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = connections
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            // How a connection ends (closed, cut off for being slow, broken) is the client's
            // business; the slot is free again either way.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}
