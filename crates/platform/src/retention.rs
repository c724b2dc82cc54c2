//! Storage that stays bounded: rows that only mattered for a while are deleted once they are older than
//! their retention. Every service sweeps its published outbox rows, its inbox and its forgotten
//! failure counts; a service adds tables of its own (order-service: idempotency keys).
//!
//! Deletes go in batches of [`BATCH`] rows, each its own statement, with a yield in between: a sweep
//! never holds a lock for long, and on SQLite (one connection per process) the consumers get their turn
//! between two batches.

use crate::db::{Db, SqlError, now_us, query};
use crate::shutdown::Shutdown;
use crate::telemetry::OutageLog;
use std::time::Duration;

/// Rows deleted per statement.
pub const BATCH: i64 = 500;
/// The sweep runs at least this often, whatever the retentions.
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// One table whose rows expire: those whose `age_column` (Unix µs) is older than `keep`. `key` names
/// the primary key's columns, by which a batch is chosen and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiring {
    pub table: &'static str,
    pub key: &'static [&'static str],
    pub age_column: &'static str,
    pub keep: Duration,
}

impl Expiring {
    /// Deletes one batch of expired rows; returns how many went.
    async fn delete_batch(&self, db: &Db, now: i64) -> Result<u64, SqlError> {
        let cutoff = now.saturating_sub(crate::db::duration_us(self.keep));
        // The names are our own constants, never input; the row-value IN works on both backends.
        let columns = self.key.join(", ");
        let key = match self.key {
            [column] => (*column).to_owned(),
            _ => format!("({columns})"),
        };
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN \
             (SELECT {columns} FROM {table} WHERE {age} < $1 ORDER BY {age} LIMIT $2)",
            table = self.table,
            age = self.age_column,
        );
        query(sql).bind(cutoff).bind(BATCH).execute(db.pool()).await
    }
}

/// The platform's own expiring tables, given the service's retentions.
pub fn platform_tables(outbox: Duration, inbox: Duration) -> Vec<Expiring> {
    vec![
        Expiring {
            table: "outbox",
            key: &["sequence"],
            age_column: "published_at_us",
            keep: outbox,
        },
        Expiring {
            table: "inbox",
            key: &["consumer", "event_id"],
            age_column: "processed_at_us",
            keep: inbox,
        },
        // A failure count outlives its message only if the message left another way (a consumer
        // deleted and declared anew); it is as old as the inbox lets a redelivery be.
        Expiring {
            table: "consumer_failures",
            key: &["consumer", "stream_sequence"],
            age_column: "last_failed_at_us",
            keep: inbox,
        },
    ]
}

/// Deletes the expired rows of a service's tables, again and again until shutdown.
#[derive(Debug, Clone)]
pub struct Sweeper {
    db: Db,
    tables: Vec<Expiring>,
}

impl Sweeper {
    pub fn new(db: Db, tables: Vec<Expiring>) -> Self {
        Self { db, tables }
    }

    /// How often the sweep runs: as often as the shortest retention, and at least every minute.
    pub fn period(&self) -> Duration {
        self.tables
            .iter()
            .map(|t| t.keep)
            .min()
            .unwrap_or(MAX_PERIOD)
            .min(MAX_PERIOD)
    }

    /// One sweep over every table, batch after batch until a table has nothing expired left;
    /// returns how many rows went, per table.
    pub async fn sweep(&self) -> Result<Vec<(&'static str, u64)>, SqlError> {
        self.sweep_at(now_us()).await
    }

    /// [`Sweeper::sweep`] as if it were `now` (Unix µs): tests move time instead of waiting for it.
    pub async fn sweep_at(&self, now: i64) -> Result<Vec<(&'static str, u64)>, SqlError> {
        let mut deleted = Vec::with_capacity(self.tables.len());
        for table in &self.tables {
            let mut total = 0;
            loop {
                let n = table.delete_batch(&self.db, now).await?;
                total += n;
                if n < BATCH as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if total > 0 {
                metrics::counter!("orderflow_retention_deleted_total", "table" => table.table)
                    .increment(total);
            }
            deleted.push((table.table, total));
        }
        Ok(deleted)
    }

    /// Sweeps every [`Sweeper::period`] until shutdown.
    pub async fn run(&self, mut shutdown: Shutdown) {
        let period = self.period();
        let mut outage = OutageLog::new(
            "retention sweep",
            "expired rows stay until the database answers",
        );
        loop {
            match self.sweep().await {
                Ok(deleted) => {
                    outage.succeeded();
                    for (table, rows) in deleted.into_iter().filter(|(_, rows)| *rows > 0) {
                        tracing::debug!(table, rows, "expired rows deleted");
                    }
                }
                Err(error) => outage.failed(&error, period),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.requested() => return,
            }
        }
    }
}
