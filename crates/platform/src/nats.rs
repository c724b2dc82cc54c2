//! NATS: connecting (patiently), and declaring the streams and consumers of `contracts::topology` on the
//! server. Declarations are idempotent, so every instance of every service declares at start and the
//! topology converges to what the code says.

use async_nats::jetstream::{self, consumer, stream};
use backon::{BackoffBuilder, ExponentialBuilder};
use contracts::topology::{ALL_STREAMS, ConsumerSpec, StreamSpec};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("NATS at {url} was not reachable within {waited:?}; is nats-server running there?")]
    Unreachable { url: String, waited: Duration },
    #[error("cannot declare stream {stream}")]
    Stream {
        stream: &'static str,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot find stream {stream} for consumer {consumer}")]
    GetStream {
        stream: &'static str,
        consumer: &'static str,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot declare consumer {consumer}")]
    Consumer {
        consumer: &'static str,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
}

/// How a consumer treats failures: how often a message is tried, and how long between tries.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Deliveries before a message is dead-lettered (the first delivery counts).
    pub max_deliver: i64,
    /// Redelivery after this long without an ack; the runtime sends in-progress acks for slow handlers,
    /// so it bounds how long a crashed instance's messages wait, not how long a handler may take.
    pub ack_wait: Duration,
    /// Redelivery delays after a nak, by attempt; the last entry repeats.
    pub backoff: Vec<Duration>,
    /// Unacknowledged messages the server lets this consumer hold at once.
    pub max_ack_pending: i64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_deliver: 5,
            ack_wait: Duration::from_secs(10),
            backoff: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(15),
            ],
            max_ack_pending: 1000,
        }
    }
}

impl DeliveryPolicy {
    /// The delay before the next try after delivery number `delivered` failed.
    pub fn delay_after(&self, delivered: i64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(0);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Connects to NATS, retrying with exponential backoff and full jitter for up to `patience`, logging
/// every failed try: services started before the broker wait for it instead of crash-looping. Once
/// connected, the client reconnects by itself, forever, and logs each disconnect and reconnect.
pub async fn connect(
    url: &str,
    client_name: &str,
    patience: Duration,
) -> Result<async_nats::Client, NatsError> {
    let started = Instant::now();
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connection restored"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting in the background")
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            });
        match options.connect(url).await {
            Ok(client) => {
                tracing::info!(url, "connected to NATS");
                return Ok(client);
            }
            Err(error) => {
                let waited = started.elapsed();
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if waited + delay > patience {
                    return Err(NatsError::Unreachable {
                        url: url.to_owned(),
                        waited,
                    });
                }
                tracing::warn!(url, %error, retry_in_ms = delay.as_millis() as u64, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Exponential backoff with full jitter between reconnect attempts (up to 5 s): replicas that lost the
/// same server do not all knock on its door at the same instant when it comes back.
fn reconnect_delay(attempts: usize) -> Duration {
    let ceiling_ms = 100u64.saturating_mul(1 << attempts.min(6)).min(5_000);
    Duration::from_millis(rand::random_range(0..=ceiling_ms))
}

/// Creates or updates every stream of the topology.
pub async fn declare_streams(js: &jetstream::Context) -> Result<(), NatsError> {
    for spec in ALL_STREAMS {
        declare_stream(js, spec).await?;
    }
    Ok(())
}

async fn declare_stream(js: &jetstream::Context, spec: StreamSpec) -> Result<(), NatsError> {
    js.create_or_update_stream(stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        // The broker's de-duplication window only covers quick re-publishes; the inbox of every
        // consumer is what makes a late re-publish harmless (ADR 0003).
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|source| NatsError::Stream {
        stream: spec.name,
        source,
    })?;
    Ok(())
}

/// Creates (or updates to the current policy) the durable pull consumer `spec`.
pub async fn declare_consumer(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    policy: &DeliveryPolicy,
) -> Result<consumer::PullConsumer, NatsError> {
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|source| NatsError::GetStream {
            stream: spec.stream,
            consumer: spec.name,
            source,
        })?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(spec.name.to_owned()),
            filter_subjects: spec
                .filter_subjects
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: policy.ack_wait,
            max_deliver: policy.max_deliver,
            max_ack_pending: policy.max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Consumer {
            consumer: spec.name,
            source,
        })
}

/// Readiness check for the NATS connection.
pub fn check_connected(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(format!("NATS is {state}")),
    }
}
