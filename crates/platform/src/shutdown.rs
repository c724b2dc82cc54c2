//! One shutdown signal shared by every task of a process. Each task holds a [`Shutdown`], finishes the
//! message it holds when the signal comes, and returns; `main` waits for all of them.

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown has been requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The sending side: dropping it or calling [`ShutdownTrigger::trigger`] stops every [`Shutdown`] holder.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves when shutdown is requested (or the trigger is gone, which means the same).
    pub async fn requested(&mut self) {
        // An error means the trigger was dropped: nobody can keep us running any more.
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// [`Shutdown::requested`], owning the handle: a future to hand to a server.
    pub async fn stopped(mut self) {
        self.requested().await;
    }

    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow()
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, the two ways operators and supervisors ask us to stop.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
