//! Statements, written once for both backends: `query(sql).bind(…)…` and then `execute`, `fetch_one`,
//! `fetch_optional` or `fetch_all` on a transaction (`tx.conn()`) or on their own (`db.pool()`). The SQL
//! uses `$1`, `$2`, … placeholders; rows come back as any `serde::Deserialize` type (see `row`).

use super::row::{self, RowRef, ValueRef};
use super::sqlite::{self, RowSink, Statement};
use super::{Backend, Db, Session, SqlError, Store, Tx, TxInner};
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Column, Decode, Row, SqlSafeStr, TypeInfo, ValueRef as _};
use std::borrow::Cow;

/// A value bound to a placeholder. A NULL keeps its type, which PostgreSQL needs to plan the
/// statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Integer(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

macro_rules! value_from {
    ($($variant:ident: $($from:ty => $convert:expr),+;)+) => {
        $($(
            impl From<$from> for Value {
                fn from(value: $from) -> Self {
                    Value::$variant($convert(value))
                }
            }
        )+)+
    };
}

value_from! {
    Integer: i64 => Some, Option<i64> => std::convert::identity;
    Text: String => Some, &str => |text: &str| Some(text.to_owned()),
        Option<String> => std::convert::identity,
        Option<&str> => |text: Option<&str>| text.map(str::to_owned);
    Blob: Vec<u8> => Some, &[u8] => |bytes: &[u8]| Some(bytes.to_vec());
}

/// What a statement runs on: an open transaction, the pool (a statement on its own), or a session
/// of its own (a statement on its own, on that session's connection).
pub enum Executor<'a> {
    Tx(&'a mut Tx),
    Pool(&'a Db),
    Session(&'a mut Session),
}

impl Executor<'_> {
    /// The database kind the statement runs on, for the few statements whose SQL must differ.
    pub fn backend(&self) -> Backend {
        match self {
            Executor::Tx(tx) => match tx.inner {
                TxInner::Sqlite(_) => Backend::Sqlite,
                TxInner::Postgres(_) => Backend::Postgres,
            },
            Executor::Pool(db) => db.backend(),
            Executor::Session(_) => Backend::Postgres,
        }
    }
}

/// A statement and the values bound to it so far.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query {
    sql: Cow<'static, str>,
    values: Vec<Value>,
}

/// Starts a statement. The text may be built at run time (a table name, a multi-row `VALUES` list),
/// but only from our own constants: values are always bound.
pub fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        values: Vec::new(),
    }
}

impl Query {
    /// Binds the next placeholder (`$1` first).
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub async fn execute(self, on: Executor<'_>) -> Result<u64, SqlError> {
        self.run(on, Wanted::Count, &mut |_| Ok(true)).await
    }

    pub async fn fetch_all<T: DeserializeOwned + Send>(
        self,
        on: Executor<'_>,
    ) -> Result<Vec<T>, SqlError> {
        let mut rows = Vec::new();
        self.run(on, Wanted::Rows, &mut |row| {
            rows.push(row::decode(row)?);
            Ok(true)
        })
        .await?;
        Ok(rows)
    }

    pub async fn fetch_optional<T: DeserializeOwned + Send>(
        self,
        on: Executor<'_>,
    ) -> Result<Option<T>, SqlError> {
        let mut first = None;
        self.run(on, Wanted::FirstRow, &mut |row| {
            first = Some(row::decode(row)?);
            Ok(false)
        })
        .await?;
        Ok(first)
    }

    /// The first row; [`SqlError::NoRow`] when there is none.
    pub async fn fetch_one<T: DeserializeOwned + Send>(
        self,
        on: Executor<'_>,
    ) -> Result<T, SqlError> {
        self.fetch_optional(on).await?.ok_or(SqlError::NoRow)
    }

    /// Runs the statement, handing its rows to `each_row` until it answers `false`; returns the number
    /// of rows it changed when that is what is wanted.
    async fn run(
        self,
        on: Executor<'_>,
        wanted: Wanted,
        each_row: &mut RowSink<'_>,
    ) -> Result<u64, SqlError> {
        let statement = Statement {
            sql: &self.sql,
            values: &self.values,
        };
        match on {
            Executor::Tx(tx) => match &mut tx.inner {
                TxInner::Sqlite(held) => {
                    sqlite::run(sqlite::connection(&mut held.0)?, &statement, each_row)
                }
                TxInner::Postgres(checkout) => {
                    postgres(self, checkout.conn()?, wanted, each_row).await
                }
            },
            Executor::Pool(db) => match &db.store {
                Store::Sqlite(conn) => {
                    let turn = db.turn().await;
                    let held = conn.hold().await?;
                    drop(turn);
                    sqlite::run_alone(held, &statement, each_row).await
                }
                Store::Postgres(connections) => {
                    let turn = db.turn().await;
                    let mut checkout = connections.checkout().await?;
                    drop(turn);
                    let result = postgres(self, checkout.conn()?, wanted, each_row).await;
                    if result
                        .as_ref()
                        .err()
                        .is_none_or(super::postgres::leaves_connection_usable)
                    {
                        checkout.finished();
                    }
                    result
                }
            },
            Executor::Session(session) => postgres(self, &mut session.0, wanted, each_row).await,
        }
    }
}

/// What a caller reads of a statement's result. SQLite computes all of it anyway; PostgreSQL is told.
#[derive(Debug, Clone, Copy)]
enum Wanted {
    Count,
    FirstRow,
    Rows,
}

async fn postgres(
    query: Query,
    conn: &mut sqlx::PgConnection,
    wanted: Wanted,
    each_row: &mut RowSink<'_>,
) -> Result<u64, SqlError> {
    let mut arguments = PgArguments::default();
    for value in query.values {
        let added = match value {
            Value::Integer(n) => arguments.add(n),
            Value::Text(text) => arguments.add(text),
            Value::Blob(bytes) => arguments.add(bytes),
        };
        added.map_err(|error| SqlError::Bind(error.to_string()))?;
    }
    let sql = match query.sql {
        Cow::Borrowed(sql) => sql.into_sql_str(),
        Cow::Owned(sql) => sqlx::AssertSqlSafe(sql).into_sql_str(),
    };
    let statement = sqlx::query_with(sql, arguments);
    match wanted {
        Wanted::Count => Ok(statement.execute(conn).await?.rows_affected()),
        Wanted::FirstRow => {
            if let Some(row) = statement.fetch_optional(conn).await? {
                each_row(pg_row(&row)?)?;
            }
            Ok(0)
        }
        Wanted::Rows => {
            for row in statement.fetch_all(conn).await? {
                if !each_row(pg_row(&row)?)? {
                    break;
                }
            }
            Ok(0)
        }
    }
}

/// A PostgreSQL row as column values; the types are those our migrations use.
fn pg_row(row: &PgRow) -> Result<RowRef<'_>, SqlError> {
    let columns = row.columns();
    let mut values = Vec::with_capacity(columns.len());
    for column in columns {
        let raw = row.try_get_raw(column.ordinal())?;
        if raw.is_null() {
            values.push(ValueRef::Null);
            continue;
        }
        let type_name = raw.type_info().name().to_owned();
        let value = match type_name.as_str() {
            "INT8" => decode::<i64>(raw).map(ValueRef::Integer),
            "INT4" => decode::<i32>(raw).map(|n| ValueRef::Integer(n.into())),
            "INT2" => decode::<i16>(raw).map(|n| ValueRef::Integer(n.into())),
            "BOOL" => decode::<bool>(raw).map(|b| ValueRef::Integer(b.into())),
            "FLOAT8" => decode::<f64>(raw).map(ValueRef::Real),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => decode::<&str>(raw).map(ValueRef::Text),
            "BYTEA" => decode::<&[u8]>(raw).map(ValueRef::Blob),
            other => Err(format!(
                "it is of type {other}, which orderflow does not read: cast it to BIGINT or TEXT"
            )
            .into()),
        };
        values.push(
            value
                .map_err(|error| SqlError::Decode(format!("column {}: {error}", column.name())))?,
        );
    }
    Ok(RowRef {
        names: columns.iter().map(|column| column.name()).collect(),
        values,
    })
}

fn decode<'r, T: Decode<'r, sqlx::Postgres>>(
    raw: sqlx::postgres::PgValueRef<'r>,
) -> Result<T, sqlx::error::BoxDynError> {
    T::decode(raw)
}
