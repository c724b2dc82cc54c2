//! Rows a transaction inserts together just before it commits ([`super::Tx::insert_at_commit`]). A
//! batch of events, or a group of orders accepted together, writes its rows of a table with one
//! statement (a few, for many rows) instead of one each: on PostgreSQL one round trip instead of one
//! per row, on SQLite one statement to step instead of many.

use super::{SqlError, Tx, Value, query, values_placeholders};
use std::sync::OnceLock;

/// The most rows one statement inserts: 576 values for the outbox's nine columns, far below either
/// backend's limit.
const MAX_ROWS_PER_INSERT: usize = 64;
/// Statement shapes per table: 1, 2, 4, … [`MAX_ROWS_PER_INSERT`] rows.
const SHAPES: usize = MAX_ROWS_PER_INSERT.ilog2() as usize + 1;

/// A table whose rows are inserted at commit, `COLUMNS` values a row. Declared as a `static`: its
/// statements are written on first use and kept.
#[derive(Debug)]
pub struct InsertAtCommit<const COLUMNS: usize> {
    table: &'static str,
    columns: [&'static str; COLUMNS],
    /// What follows the values, such as `ON CONFLICT DO NOTHING`; empty for nothing.
    tail: &'static str,
    statements: OnceLock<[String; SHAPES]>,
}

impl<const COLUMNS: usize> InsertAtCommit<COLUMNS> {
    pub const fn new(
        table: &'static str,
        columns: [&'static str; COLUMNS],
        tail: &'static str,
    ) -> Self {
        Self {
            table,
            columns,
            tail,
            statements: OnceLock::new(),
        }
    }
}

/// What the transaction needs of a table, whatever its number of columns.
pub(super) trait Table: Sync {
    fn columns(&self) -> usize;
    /// The insert of `2^shape` rows.
    fn statement(&'static self, shape: usize) -> &'static str;
}

impl<const COLUMNS: usize> Table for InsertAtCommit<COLUMNS> {
    fn columns(&self) -> usize {
        COLUMNS
    }

    fn statement(&'static self, shape: usize) -> &'static str {
        let statements = self.statements.get_or_init(|| {
            std::array::from_fn(|shape| {
                format!(
                    "INSERT INTO {} ({}) VALUES {} {}",
                    self.table,
                    self.columns.join(", "),
                    values_placeholders(1 << shape, COLUMNS),
                    self.tail
                )
                .trim_end()
                .to_owned()
            })
        });
        &statements[shape]
    }
}

/// The rows a transaction holds for one table, their values one row after the other.
pub(super) struct Pending {
    table: &'static dyn Table,
    values: Vec<Value>,
}

/// Adds a row to `pending`, with the rows already there for its table.
pub(super) fn add<const COLUMNS: usize>(
    pending: &mut Vec<Pending>,
    table: &'static InsertAtCommit<COLUMNS>,
    row: [Value; COLUMNS],
) {
    let held = pending.iter_mut().find(|held| {
        std::ptr::addr_eq(
            held.table as *const dyn Table,
            table as *const InsertAtCommit<COLUMNS>,
        )
    });
    match held {
        Some(held) => held.values.extend(row),
        None => pending.push(Pending {
            table,
            values: row.into(),
        }),
    }
}

/// Inserts the rows, table after table in the order each was first added, each table's rows in the
/// order they were added, as multi-row statements of a power of two rows each (37 rows as 32 + 4 + 1):
/// the connection's statement cache holds a few shapes per table instead of one per count.
pub(super) async fn insert(tx: &mut Tx, pending: Vec<Pending>) -> Result<(), SqlError> {
    for Pending { table, values } in pending {
        let columns = table.columns();
        let mut values = values.into_iter().peekable();
        while values.peek().is_some() {
            let rows_left = values.len() / columns;
            let shape = rows_left.min(MAX_ROWS_PER_INSERT).ilog2() as usize;
            let mut insert = query(table.statement(shape));
            for value in values.by_ref().take(columns << shape) {
                insert = insert.bind(value);
            }
            insert.execute(tx.conn()).await?;
        }
    }
    Ok(())
}
