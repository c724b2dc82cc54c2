//! The PostgreSQL connections of a service, kept by us instead of in sqlx's pool. sqlx checks every
//! connection given back to its pool with a round trip to the server, one per transaction and one per
//! statement on its own: on a busy machine each costs a backend a wake-up, as much as a statement.
//! Here a connection whose work finished cleanly goes back to the idle list without a word; one whose
//! work did not (an error, a transaction never ended, work dropped half-way) is rolled back first, in
//! a task of its own, and closed if that fails. That covers what sqlx's check was for.
//!
//! sqlx's pool still opens the connections (its `after_connect` sets up the service's schema), and
//! each is detached from it at once.

use super::SqlError;
use sqlx::postgres::PgPool;
use sqlx::{Connection, Executor as _, PgConnection};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections, and how many may be in use at once.
#[derive(Debug)]
pub(super) struct Connections {
    /// Opens the new ones, set up for the service's schema.
    opener: PgPool,
    idle: Mutex<Vec<PgConnection>>,
    /// One per connection in use; closed when the database is.
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

/// A connection taken for some work. Dropped, it goes back to the idle list if the work was marked
/// [`Checkout::finished`], and is rolled back first (or else closed) if it was not.
#[derive(Debug)]
pub(super) struct Checkout {
    conn: Option<PgConnection>,
    finished: bool,
    home: Arc<Connections>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Connections {
    pub(super) fn new(opener: PgPool, max: usize, acquire_timeout: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            opener,
            idle: Mutex::default(),
            permits: Arc::new(Semaphore::new(max)),
            acquire_timeout,
        })
    }

    /// A connection for some work, idle or new, once fewer than the maximum are in use; waits
    /// `acquire_timeout` at most for that, as sqlx's pool did.
    pub(super) async fn checkout(self: &Arc<Self>) -> Result<Checkout, SqlError> {
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| SqlError::Postgres(sqlx::Error::PoolTimedOut))?
                .map_err(|_| SqlError::Closed)?;
        let idle = self.idle().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.opener.acquire().await?.detach(),
        };
        Ok(Checkout {
            conn: Some(conn),
            finished: false,
            home: self.clone(),
            permit: Some(permit),
        })
    }

    /// A connection that never comes back: see [`super::Session`].
    pub(super) async fn detached(&self) -> Result<PgConnection, SqlError> {
        Ok(self.opener.acquire().await?.detach())
    }

    /// Refuses new work and closes the idle connections; those in use are closed when given back.
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle());
        for conn in idle {
            // Closing says goodbye to the server; one that fails was broken anyway.
            let _ = conn.close().await;
        }
        self.opener.close().await;
    }

    fn idle(&self) -> MutexGuard<'_, Vec<PgConnection>> {
        // Pushing and popping a Vec cannot leave it half-changed: a panic elsewhere does not spoil it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn give_back(&self, conn: PgConnection) {
        if !self.permits.is_closed() {
            self.idle().push(conn);
        }
    }
}

impl Checkout {
    pub(super) fn conn(&mut self) -> Result<&mut PgConnection, SqlError> {
        self.conn.as_mut().ok_or(SqlError::Closed)
    }

    /// The work on the connection ended cleanly: nothing is pending on it, no transaction is open.
    pub(super) fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.finished {
            self.home.give_back(conn);
            return;
        }
        // A transaction left open or a statement cut short: a ROLLBACK (which waits out whatever was
        // still in flight) makes the connection clean again. Its permit goes with it, so the
        // connection still counts as in use meanwhile. Without a runtime to run it on (the process
        // is ending), the connection is closed by being dropped, and the server rolls back.
        let (Ok(runtime), Some(permit)) =
            (tokio::runtime::Handle::try_current(), self.permit.take())
        else {
            return;
        };
        let home = self.home.clone();
        runtime.spawn(async move {
            if conn.execute("ROLLBACK").await.is_ok() {
                home.give_back(conn);
            }
            drop(permit);
        });
    }
}

/// Whether the connection is still in a known state after a statement failed this way: the server
/// answered with an error (the statement failed, the connection did not), or the rows could not be
/// read into their type. Anything else (a broken socket, a protocol error) closes it.
pub(super) fn leaves_connection_usable(error: &SqlError) -> bool {
    matches!(
        error,
        SqlError::Postgres(sqlx::Error::Database(_))
            | SqlError::NoRow
            | SqlError::Decode(_)
            | SqlError::Bind(_)
    )
}
