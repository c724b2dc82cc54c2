//! What the machine can do without orderflow: the pinned nats-server's persisted publish and
//! consume-and-ack rates, a bare event pipeline shaped like the saga, and the single-row commit rate of
//! each database as the services configure it. The saga's figures are judged against these.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use platform::db::{Db, MigrationSql, SqlError, query};
use serde::{Deserialize, Serialize};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

/// Payload size of the broker benchmarks.
const MESSAGE_BYTES: usize = 256;
/// Unawaited publish acknowledgements at most (an unbounded number stalls the client: nats.rs #1285).
const PUBLISH_WINDOW: usize = 1024;
/// Messages a pull asks for at once in the consume and pipeline benchmarks.
const PULL_BATCH: usize = 512;
/// Hops of the bare pipeline: created → reserved → charged → confirmed → (sink), like the saga's.
const PIPELINE_HOPS: usize = 4;

/// How much to measure: the full suite, or the smoke variant that only proves each step works.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub messages: usize,
    pub pipeline_messages: usize,
    pub commit_time: Duration,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        messages: 200_000,
        pipeline_messages: 50_000,
        commit_time: Duration::from_secs(3),
    };
    pub const SMOKE: Sizes = Sizes {
        messages: 2_000,
        pipeline_messages: 500,
        commit_time: Duration::from_millis(300),
    };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Persisted publishes per second (R1 file store, async with bounded acks in flight).
    pub publish_per_s: f64,
    /// Messages pulled and acked per second.
    pub consume_ack_per_s: f64,
    /// Messages per second through 4 hops of consume → publish → ack (no database, no HTTP).
    pub pipeline_per_s: f64,
    /// Single-row transactions committed per second, one after another, as the services configure
    /// SQLite (WAL, synchronous=NORMAL, one connection).
    pub sqlite_commits_per_s: f64,
    /// Single-row reads by primary key per second, one after another in one transaction, through
    /// the services' own database layer: what every statement of the saga costs on SQLite beyond
    /// its own work.
    pub sqlite_statements_per_s: f64,
    /// The same on PostgreSQL, one connection; `None` when PostgreSQL is not reachable.
    pub postgres_commits_per_s: Option<f64>,
    /// PostgreSQL with 8 connections committing at once (group commit).
    pub postgres_commits_8_per_s: Option<f64>,
    /// Events decoded per second on one core, bytes to a typed event, the schema not checked: the
    /// seven events a happy order's consumers receive, in turn. `None` in results from before it was
    /// measured.
    #[serde(default)]
    pub event_decodes_per_s: Option<f64>,
    /// The same as the consumers run it: the envelope's and the payload's JSON Schema checked first.
    #[serde(default)]
    pub event_checks_per_s: Option<f64>,
}

pub async fn measure(
    nats_url: &str,
    sqlite_dir: &std::path::Path,
    postgres_url: Option<&str>,
    sizes: Sizes,
) -> Result<Limits> {
    let client = async_nats::connect(nats_url)
        .await
        .context("cannot connect to the benchmark's nats-server")?;
    let js = jetstream::new(client);
    let publish_per_s = publish(&js, sizes.messages).await?;
    let consume_ack_per_s = consume_and_ack(&js, sizes.messages).await?;
    let pipeline_per_s = pipeline(&js, sizes.pipeline_messages).await?;
    let sqlite_url = format!(
        "sqlite://{}?mode=rwc",
        sqlite_dir.join("commits.db").display()
    );
    let sqlite_commits_per_s = commits(&sqlite_url, 1, sizes.commit_time).await?;
    let sqlite_statements_per_s = statements(&sqlite_url, sizes.commit_time).await?;
    let (postgres_commits_per_s, postgres_commits_8_per_s) = match postgres_url {
        Some(url) => (
            Some(commits(url, 1, sizes.commit_time).await?),
            Some(commits(url, 8, sizes.commit_time).await?),
        ),
        None => (None, None),
    };
    let time = sizes.commit_time;
    let event_decodes_per_s = tokio::task::spawn_blocking(move || {
        decodes(time, |bytes| contracts::Envelope::from_json(bytes).is_ok())
    })
    .await??;
    let event_checks_per_s = tokio::task::spawn_blocking(move || {
        decodes(time, |bytes| platform::schema::decode(bytes).is_ok())
    })
    .await??;
    Ok(Limits {
        publish_per_s,
        consume_ack_per_s,
        pipeline_per_s,
        sqlite_commits_per_s,
        sqlite_statements_per_s,
        postgres_commits_per_s,
        postgres_commits_8_per_s,
        event_decodes_per_s: Some(event_decodes_per_s),
        event_checks_per_s: Some(event_checks_per_s),
    })
}

/// Events per second that `decode` turns into typed events on this thread, over `time`: the seven
/// events a happy order's consumers receive (`orders.created` and `orders.confirmed` twice each,
/// `inventory.reserved` twice, `payments.succeeded` once), as the services write them.
fn decodes(time: Duration, decode: impl Fn(&[u8]) -> bool) -> Result<f64> {
    use contracts::events::{
        InventoryReserved, OrderConfirmed, OrderCreated, OrderLine, PaymentSucceeded, PricedLine,
    };
    use contracts::{
        CorrelationId, CustomerId, Envelope, Event, Money, OrderId, PaymentMethod, ProductId,
        Quantity,
    };
    let price = Money::from_cents(1_250)?;
    let line = |sku: &str| -> Result<(ProductId, Quantity)> {
        Ok((ProductId::parse(sku)?, Quantity::new(2)?))
    };
    let lines = [line("sku-1")?, line("sku-2")?];
    let created = Envelope::first(
        OrderId::new(),
        CorrelationId::new(),
        Event::OrderCreated(OrderCreated {
            customer_id: CustomerId::parse("customer-1")?,
            currency: contracts::Currency::legacy(),
            items: lines
                .iter()
                .map(|(product_id, quantity)| OrderLine {
                    product_id: product_id.clone(),
                    quantity: *quantity,
                })
                .collect(),
            payment_method: PaymentMethod::parse("tok_visa")?,
            deadline_at: time::OffsetDateTime::now_utc(),
        }),
    );
    let total = Money::from_cents(5_000)?;
    let reserved = Envelope::caused_by(
        &created.meta,
        Event::InventoryReserved(InventoryReserved {
            lines: lines
                .iter()
                .map(|(product_id, quantity)| PricedLine {
                    product_id: product_id.clone(),
                    quantity: *quantity,
                    unit_price_cents: price,
                })
                .collect(),
            total_cents: total,
        }),
    );
    let succeeded = Envelope::caused_by(
        &reserved.meta,
        Event::PaymentSucceeded(PaymentSucceeded {
            amount_cents: total,
            charge_id: "ch_0123456789abcdef".into(),
        }),
    );
    let confirmed = Envelope::caused_by(
        &succeeded.meta,
        Event::OrderConfirmed(OrderConfirmed { total_cents: total }),
    );
    let consumed = [
        &created, &created, &reserved, &reserved, &succeeded, &confirmed, &confirmed,
    ]
    .map(|event| event.to_json());
    let started = Instant::now();
    let mut decoded = 0u64;
    while started.elapsed() < time {
        for bytes in &consumed {
            anyhow::ensure!(decode(bytes), "a sample event did not decode");
        }
        decoded += consumed.len() as u64;
    }
    Ok(decoded as f64 / started.elapsed().as_secs_f64())
}

async fn file_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) -> Result<()> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create stream {name}"))?;
    Ok(())
}

/// Publishes `count` messages to `subject`, keeping up to [`PUBLISH_WINDOW`] acks in flight.
async fn publish_all(js: &jetstream::Context, subject: &str, count: usize) -> Result<()> {
    let payload = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let mut acks = FuturesUnordered::new();
    for _ in 0..count {
        if acks.len() >= PUBLISH_WINDOW {
            acks.try_next().await.context("publish not acknowledged")?;
        }
        let ack = js
            .publish(subject.to_owned(), payload.clone())
            .await
            .context("cannot publish")?;
        acks.push(ack.into_future());
    }
    while acks
        .try_next()
        .await
        .context("publish not acknowledged")?
        .is_some()
    {}
    Ok(())
}

async fn publish(js: &jetstream::Context, count: usize) -> Result<f64> {
    file_stream(js, "BENCH", &["bench.>"]).await?;
    let started = Instant::now();
    publish_all(js, "bench.publish", count).await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn pull_config(name: &str, filter: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Pulls and acks every message the publish benchmark stored.
async fn consume_and_ack(js: &jetstream::Context, count: usize) -> Result<f64> {
    let stream = js.get_stream("BENCH").await?;
    let consumer = stream
        .create_consumer(pull_config("bench-consume", "bench.publish"))
        .await?;
    let started = Instant::now();
    drain(&consumer, count).await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Pulls and acks `count` messages of `consumer`.
async fn drain(consumer: &consumer::PullConsumer, count: usize) -> Result<()> {
    let mut seen = 0;
    while seen < count {
        let mut batch = consumer
            .fetch()
            .max_messages(PULL_BATCH)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
    }
    Ok(())
}

/// `count` messages through [`PIPELINE_HOPS`] stages, each pulling from its subject, publishing to the
/// next (acks awaited per batch) and only then acking what it pulled, as an ideal saga service would.
async fn pipeline(js: &jetstream::Context, count: usize) -> Result<f64> {
    file_stream(js, "PIPE", &["pipe.>"]).await?;
    let stream = js.get_stream("PIPE").await?;
    let mut stages = Vec::new();
    for hop in 0..PIPELINE_HOPS {
        let consumer = stream
            .create_consumer(pull_config(&format!("hop-{hop}"), &format!("pipe.{hop}")))
            .await?;
        let js = js.clone();
        stages.push(tokio::spawn(async move {
            relay_stage(js, consumer, hop, count).await
        }));
    }
    let sink = stream
        .create_consumer(pull_config("sink", &format!("pipe.{PIPELINE_HOPS}")))
        .await?;
    let started = Instant::now();
    publish_all(js, "pipe.0", count).await?;
    drain(&sink, count).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    for stage in stages {
        stage.await??;
    }
    Ok(rate)
}

async fn relay_stage(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    hop: usize,
    count: usize,
) -> Result<()> {
    let next = format!("pipe.{}", hop + 1);
    let mut relayed = 0;
    while relayed < count {
        let messages: Vec<_> = consumer
            .fetch()
            .max_messages(PULL_BATCH)
            .expires(Duration::from_secs(1))
            .messages()
            .await?
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut acks = Vec::with_capacity(messages.len());
        for message in &messages {
            acks.push(
                js.publish(next.clone(), message.payload.clone())
                    .await?
                    .into_future(),
            );
        }
        futures::future::try_join_all(acks).await?;
        for message in &messages {
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        relayed += messages.len();
    }
    Ok(())
}

const COMMITS_TABLE: MigrationSql = MigrationSql {
    version: 9001,
    description: "benchmark rows",
    sqlite: "CREATE TABLE bench_commits (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL);",
    postgres: "CREATE TABLE bench_commits (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL);",
};

/// Reads of one row by its key per second, one after another inside one transaction.
async fn statements(url: &str, time: Duration) -> Result<f64> {
    let db = Db::connect(url, "bench", &[COMMITS_TABLE])
        .await
        .with_context(|| format!("cannot open {}", platform::config::redact(url)))?;
    let measured = async {
        let mut tx = db.begin().await?;
        let id: i64 = query("INSERT INTO bench_commits (payload) VALUES ($1) RETURNING id")
            .bind("x".repeat(MESSAGE_BYTES))
            .fetch_one(tx.conn())
            .await?;
        let started = Instant::now();
        let mut executed = 0_u64;
        while started.elapsed() < time {
            let _: String = query("SELECT payload FROM bench_commits WHERE id = $1")
                .bind(id)
                .fetch_one(tx.conn())
                .await?;
            executed += 1;
        }
        tx.rollback().await?;
        Ok::<f64, SqlError>(executed as f64 / started.elapsed().as_secs_f64())
    };
    measured.await.context("benchmark statement failed")
}

/// Transactions of one 256-byte insert each, committed per second by `connections` writers at once.
async fn commits(url: &str, connections: usize, time: Duration) -> Result<f64> {
    let db = Db::connect(url, "bench", &[COMMITS_TABLE])
        .await
        .with_context(|| format!("cannot open {}", platform::config::redact(url)))?;
    let payload = "x".repeat(MESSAGE_BYTES);
    let started = Instant::now();
    let writers = (0..connections).map(|_| {
        let (db, payload) = (db.clone(), payload.clone());
        async move {
            let mut committed = 0_u64;
            while started.elapsed() < time {
                let mut tx = db.begin().await?;
                query("INSERT INTO bench_commits (payload) VALUES ($1)")
                    .bind(payload.clone())
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
                committed += 1;
            }
            Ok::<u64, SqlError>(committed)
        }
    });
    let committed: u64 = futures::future::try_join_all(writers)
        .await
        .context("benchmark transaction failed")?
        .into_iter()
        .sum();
    Ok(committed as f64 / started.elapsed().as_secs_f64())
}
