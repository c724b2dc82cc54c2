//! A fault-injecting TCP proxy: the services talk to a real server (PostgreSQL, nats-server) through
//! it, and a test cuts and restores their connections, which is what a failover or a network
//! partition does to them. Hermetic: it listens on a free port of its own and forwards to the real
//! server's address.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A proxy from a free local port to `target`, alive until dropped.
pub struct FaultProxy {
    port: u16,
    /// `true` while the connections are cut.
    cut: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding connections on a free port to `target`. Panics if no port can be bound.
    /// The port is the one the system hands out when binding: asking for a free port first and
    /// binding it afterwards lost it now and then to a test starting at the same moment.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|error| panic!("the proxy cannot listen on a free port: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("the proxy's listener has no address: {error}"))
            .port();
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let task = tokio::spawn(accept(listener, target, cut.clone()));
        FaultProxy { port, cut, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection at once and refuses new ones (each is accepted and closed
    /// straight away, as a host whose server is gone answers) until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the acceptor drops its set of connections, which aborts them too.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, cut: Arc<watch::Sender<bool>>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            drop(client);
            continue;
        }
        connections.spawn(forward(client, target, cut.subscribe()));
        // Reap finished connections so the set does not grow with every one ever made.
        while connections.try_join_next().is_some() {}
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4];
        stream.write_all(b"ping").await.is_ok()
            && matches!(stream.read_exact(&mut buf).await, Ok(4))
            && &buf == b"ping"
    }

    #[tokio::test]
    async fn a_cut_closes_connections_and_refuses_new_ones_until_restored() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let addr = (Ipv4Addr::LOCALHOST, proxy.port());
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert!(round_trip(&mut open).await);

        proxy.cut();
        assert!(
            !round_trip(&mut open).await,
            "an open connection survived the cut"
        );
        let mut refused = TcpStream::connect(addr).await.unwrap();
        assert!(
            !round_trip(&mut refused).await,
            "a new connection got through"
        );

        proxy.restore();
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert!(round_trip(&mut again).await);
    }
}
