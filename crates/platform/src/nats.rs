//! NATS: connecting (patiently), declaring the streams and consumers of `contracts::topology` on the
//! server, and building header values that the client library accepts whatever the text. Declarations
//! are idempotent, so every instance of every service declares at start (and again whenever something
//! it needs has gone missing), and the topology converges to what the code says.

use crate::backoff::Backoff;
use crate::config::redact;
use crate::telemetry::printable;
use async_nats::HeaderValue;
use async_nats::jetstream::{self, consumer, stream};
use contracts::topology::{ALL_STREAMS, ConsumerSpec, DLQ, StreamSpec, dead_letter_subject};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Holds the URL with its password masked.
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
    #[error("cannot read the state of consumer {consumer}")]
    ConsumerInfo {
        consumer: &'static str,
        #[source]
        source: jetstream::context::ConsumerInfoError,
    },
    #[error("cannot read the oldest waiting message of consumer {consumer}")]
    OldestMessage {
        consumer: &'static str,
        #[source]
        source: jetstream::stream::RawMessageError,
    },
    #[error("cannot count the dead letters in stream {}", DLQ.name)]
    DeadLetters(#[source] jetstream::stream::InfoError),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// How a consumer treats failures: how often a message is tried, and how long between tries. The
/// runtime enforces the delivery limit itself; the server is told never to give up (see
/// [`declare_consumer`]).
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Failed attempts before a message is dead-lettered. Only failures of the message count: an
    /// outage of the service's own database never does (see `consumer`).
    pub max_deliver: i64,
    /// Redelivery after this long without an ack; the runtime sends in-progress acks for slow handlers,
    /// so it bounds how long a crashed instance's messages wait, not how long a handler may take.
    pub ack_wait: Duration,
    /// The pause before a failed message is tried again, by the number of its failures so far.
    pub redelivery: Backoff,
    /// Unacknowledged messages the server lets this consumer hold at once.
    pub max_ack_pending: i64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_deliver: 5,
            ack_wait: Duration::from_secs(10),
            redelivery: Backoff::new(Duration::from_millis(200), Duration::from_secs(15)),
            max_ack_pending: crate::consumer::MAX_ACK_PENDING,
        }
    }
}

impl DeliveryPolicy {
    /// The pause before the next try after a message's `failures`-th failure.
    pub fn delay_after(&self, failures: i64) -> Duration {
        self.redelivery
            .delay(u32::try_from(failures).unwrap_or(u32::MAX))
    }
}

/// How long the service streams keep their messages (`DLQ` keeps its messages until they are
/// purged), and on how many servers of a cluster every stream is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_age: Duration,
    /// 1 on a single server; 3 in a 3-node cluster survives the loss of one node (writes need a
    /// majority of them).
    pub replicas: usize,
}

impl StreamLimits {
    /// How long the broker de-duplicates re-publishes by `Nats-Msg-Id`: two minutes, or the streams'
    /// age limit if that is shorter (the server requires the window to fit in it).
    pub fn duplicate_window(&self) -> Duration {
        DUPLICATE_WINDOW.min(self.max_age)
    }
}

/// The broker's de-duplication window. It only covers quick re-publishes; the inbox of every consumer
/// is what makes a late re-publish harmless (ADR 0003).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The NATS user a process connects as, where the server requires one: `orderflow up` gives each
/// service its own (allowed to publish only its events and to consume only its consumers) and the
/// operator tools `operator`.
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct NatsAuth {
    /// The NATS user to connect as; without it, no credentials are sent.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_NATS_USER",
        requires = "nats_password"
    )]
    pub nats_user: Option<String>,
    /// That user's password. Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// A PEM file with the certificate authority that signed the NATS servers' certificates: the
    /// connection then requires TLS and trusts only the servers it vouches for.
    #[arg(long, global = true, env = "ORDERFLOW_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// A PEM certificate to present to servers that verify their clients (mutual TLS), with
    /// --nats-client-key.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_NATS_CLIENT_CERT",
        requires = "nats_client_key"
    )]
    pub nats_client_cert: Option<PathBuf>,
    /// The PEM private key of --nats-client-cert.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_NATS_CLIENT_KEY",
        requires = "nats_client_cert"
    )]
    pub nats_client_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "***"))
            .field("nats_ca", &self.nats_ca)
            .field("nats_client_cert", &self.nats_client_cert)
            .field("nats_client_key", &self.nats_client_key)
            .finish()
    }
}

impl NatsAuth {
    /// `options` with these credentials and TLS settings, where there are any.
    pub fn apply(&self, mut options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.nats_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.nats_client_cert, &self.nats_client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }
}

/// Retries of the first connection: services started before the broker wait for it.
const CONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Connects to NATS, retrying with the shared backoff for up to `patience`, logging every failed try:
/// services started before the broker wait for it instead of crash-looping. Once connected, the
/// client reconnects by itself, forever, with the same backoff (so replicas that lost the same server
/// do not all knock on its door at the same instant when it comes back), and logs each disconnect and
/// reconnect.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    client_name: &str,
    patience: Duration,
) -> Result<async_nats::Client, NatsError> {
    let started = Instant::now();
    let shown = redact(url);
    let mut delays = CONNECT_BACKOFF.delays();
    loop {
        let options = auth
            .apply(async_nats::ConnectOptions::new())
            .name(client_name)
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                CONNECT_BACKOFF.delay(u32::try_from(attempts).unwrap_or(u32::MAX))
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connection restored"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting in the background")
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            });
        match options.connect(crate::config::nats_servers(url)).await {
            Ok(client) => {
                tracing::info!(url = %shown, "connected to NATS");
                return Ok(client);
            }
            Err(error) => {
                let waited = started.elapsed();
                let delay = delays.next().unwrap_or(CONNECT_BACKOFF.max());
                if waited + delay > patience {
                    return Err(NatsError::Unreachable { url: shown, waited });
                }
                tracing::warn!(url = %shown, %error, retry_in_ms = delay.as_millis() as u64, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Creates or updates every stream of the topology.
pub async fn declare_streams(
    js: &jetstream::Context,
    limits: StreamLimits,
) -> Result<(), NatsError> {
    for spec in ALL_STREAMS {
        declare_stream(js, spec, limits).await?;
    }
    Ok(())
}

/// [`declare_streams`], retried with backoff for up to `patience`: a cluster that has just started
/// (or lost a node) answers before it can place replicated streams.
pub async fn declare_streams_patiently(
    js: &jetstream::Context,
    limits: StreamLimits,
    patience: Duration,
) -> Result<(), NatsError> {
    let started = Instant::now();
    let mut delays = CONNECT_BACKOFF.delays();
    loop {
        match declare_streams(js, limits).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let delay = delays.next().unwrap_or(CONNECT_BACKOFF.max());
                if started.elapsed() + delay > patience {
                    return Err(error);
                }
                tracing::warn!(error = %crate::telemetry::error_chain(&error),
                    retry_in_ms = delay.as_millis() as u64, "cannot declare the streams yet; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Creates or updates one stream. The service streams get the age limit of `limits`; `DLQ` keeps
/// everything until an operator purges it, since a dead letter is work nobody has done yet. All get
/// its replicas.
pub async fn declare_stream(
    js: &jetstream::Context,
    spec: StreamSpec,
    limits: StreamLimits,
) -> Result<(), NatsError> {
    let (max_age, duplicate_window) = if spec == DLQ {
        (Duration::ZERO, DUPLICATE_WINDOW)
    } else {
        (limits.max_age, limits.duplicate_window())
    };
    js.create_or_update_stream(stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window,
        num_replicas: limits.replicas,
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
///
/// The server's own delivery limit is off (`max_deliver: -1`): if it equalled the runtime's, a message
/// whose last delivery could not be dead-lettered (the DLQ stream missing or full, a publish timing
/// out, the process killed) would be dropped by the server for good, with only an advisory that
/// nobody persists as a trace. The runtime alone decides when to give up (ADR 0009).
pub async fn declare_consumer(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    policy: &DeliveryPolicy,
) -> Result<consumer::PullConsumer, NatsError> {
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(stream_not_found(&spec))?;
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
            max_deliver: -1,
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

/// The longest header value orderflow writes; longer text is cut (and says so).
pub const MAX_HEADER_VALUE: usize = 1024;

/// `raw` as a header value the client library accepts: it panics on CR and LF, so control
/// characters are escaped and the text is cut to [`MAX_HEADER_VALUE`] bytes (see
/// [`printable`]). Every header orderflow writes from text it did not choose itself goes through
/// here: an error message quoting a message, a correlation id read back from a table.
pub fn header_value(raw: &str) -> HeaderValue {
    // Cannot fail: no CR or LF is left.
    HeaderValue::from_str(&printable(raw, MAX_HEADER_VALUE)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_hold_line_breaks_and_stay_bounded() {
        assert_eq!(header_value("plain").as_str(), "plain");
        assert_eq!(
            header_value("unknown type 'a\r\nX: 1'").as_str(),
            "unknown type 'a\\r\\nX: 1'"
        );
        assert_eq!(header_value("bell\u{7}").as_str(), "bell\\u{7}");
        let long = header_value(&"é".repeat(5000));
        assert!(
            long.as_str().len() <= MAX_HEADER_VALUE,
            "{}",
            long.as_str().len()
        );
        assert!(long.as_str().ends_with("..."));
    }

    #[test]
    fn the_duplicate_window_fits_in_the_streams_age() {
        let week = StreamLimits {
            max_age: Duration::from_secs(7 * 86_400),
            replicas: 1,
        };
        assert_eq!(week.duplicate_window(), Duration::from_secs(120));
        let seconds = StreamLimits {
            max_age: Duration::from_secs(5),
            replicas: 1,
        };
        assert_eq!(seconds.duplicate_window(), Duration::from_secs(5));
    }

    proptest::proptest! {
        #[test]
        fn any_text_makes_a_valid_header_value(raw in "\\PC*|[\\x00-\\x1f\\x7f]{0,64}") {
            let value = header_value(&raw);
            proptest::prop_assert!(!value.as_str().contains(['\r', '\n']));
            proptest::prop_assert!(value.as_str().len() <= MAX_HEADER_VALUE);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Orderflow-Test", value);
        }
    }
}

/// What the broker holds for one durable consumer: the backlog an operator looks at first when a saga
/// is stuck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsumerBacklog {
    pub consumer: String,
    pub stream: String,
    /// Whether the consumer exists on the broker (its service declares it at start); the counts are
    /// 0 when it does not.
    pub declared: bool,
    /// Messages in its stream not yet delivered to it.
    pub pending: u64,
    /// Messages delivered to it and not yet acknowledged.
    pub ack_pending: u64,
    /// Of those, the ones delivered more than once: a handler failing or a service dying mid-message.
    pub redelivered: u64,
    /// Its messages set aside in the `DLQ` stream, waiting for an operator.
    pub dead_letters: u64,
}

/// The backlog of each of `specs`, read from the broker, within `timeout` (an operator's command or a
/// scrape must not hang on a broker that does not answer).
pub async fn consumer_backlogs(
    js: &jetstream::Context,
    specs: &[ConsumerSpec],
    timeout: Duration,
) -> Result<Vec<ConsumerBacklog>, NatsError> {
    tokio::time::timeout(timeout, read_backlogs(js, specs))
        .await
        .map_err(|_| NatsError::Timeout(timeout))?
}

async fn read_backlogs(
    js: &jetstream::Context,
    specs: &[ConsumerSpec],
) -> Result<Vec<ConsumerBacklog>, NatsError> {
    use futures::StreamExt;
    let dead_letters = match js.get_stream(DLQ.name).await {
        Ok(dlq) => {
            let mut subjects = dlq
                .info_with_subjects(DLQ.subjects[0])
                .await
                .map_err(NatsError::DeadLetters)?;
            let mut counts = std::collections::HashMap::new();
            while let Some(subject) = subjects.next().await {
                let (subject, count) = subject.map_err(NatsError::DeadLetters)?;
                counts.insert(subject, count as u64);
            }
            counts
        }
        // No DLQ stream yet: nothing was ever dead-lettered.
        Err(_) => Default::default(),
    };
    let mut backlogs = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut backlog = ConsumerBacklog {
            consumer: spec.name.to_owned(),
            stream: spec.stream.to_owned(),
            declared: false,
            pending: 0,
            ack_pending: 0,
            redelivered: 0,
            dead_letters: dead_letters
                .get(&dead_letter_subject(spec.name))
                .copied()
                .unwrap_or(0),
        };
        if let Ok(stream) = js.get_stream_no_info(spec.stream).await {
            match stream.consumer_info(spec.name).await {
                Ok(info) => {
                    backlog.declared = true;
                    backlog.pending = info.num_pending;
                    backlog.ack_pending = info.num_ack_pending as u64;
                    backlog.redelivered = info.num_redelivered as u64;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        jetstream::context::ConsumerInfoErrorKind::NotFound
                            | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
                    ) => {}
                Err(source) => {
                    return Err(NatsError::ConsumerInfo {
                        consumer: spec.name,
                        source,
                    });
                }
            }
        }
        backlogs.push(backlog);
    }
    Ok(backlogs)
}

/// The error of not finding the stream `spec` consumes.
fn stream_not_found(
    spec: &ConsumerSpec,
) -> impl FnOnce(jetstream::context::GetStreamError) -> NatsError + use<> {
    let (stream, consumer) = (spec.stream, spec.name);
    move |source| NatsError::GetStream {
        stream,
        consumer,
        source,
    }
}

/// How far a durable consumer has come through its messages: what admission control estimates the
/// wait of a new order's event from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// Messages in its stream not yet delivered to it.
    pub undelivered: u64,
    /// Messages delivered to it and not yet acknowledged (being handled, or waiting to be tried again).
    pub unacknowledged: u64,
    /// Deliveries made to it since it was created, redeliveries included: a counter whose rate, less
    /// the unacknowledged, is the consumer's pace.
    pub delivered: u64,
    /// When the oldest message it has still to finish was stored in its stream; `None` without a
    /// backlog.
    pub oldest_waiting_since: Option<time::OffsetDateTime>,
}

impl ConsumerProgress {
    /// Messages it has still to finish.
    pub fn backlog(&self) -> u64 {
        self.undelivered + self.unacknowledged
    }

    /// Deliveries it has finished with (acknowledged, or given up on to be tried again).
    pub fn finished(&self) -> u64 {
        self.delivered.saturating_sub(self.unacknowledged)
    }
}

/// `spec`'s progress, read from the broker with two requests (the consumer's state, then the first
/// message past its ack floor that it receives). A consumer not declared yet has done nothing and
/// has nothing waiting.
pub async fn consumer_progress(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<ConsumerProgress, NatsError> {
    let stream = js
        .get_stream_no_info(spec.stream)
        .await
        .map_err(stream_not_found(spec))?;
    let info = match stream.consumer_info(spec.name).await {
        Ok(info) => info,
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::ConsumerInfoErrorKind::NotFound
                    | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            return Ok(ConsumerProgress {
                undelivered: 0,
                unacknowledged: 0,
                delivered: 0,
                oldest_waiting_since: None,
            });
        }
        Err(source) => {
            return Err(NatsError::ConsumerInfo {
                consumer: spec.name,
                source,
            });
        }
    };
    let mut progress = ConsumerProgress {
        undelivered: info.num_pending,
        unacknowledged: info.num_ack_pending as u64,
        delivered: info.delivered.consumer_sequence,
        oldest_waiting_since: None,
    };
    if progress.backlog() > 0 {
        // Our consumers filter on one subject (pattern); the first message past the ack floor on it
        // is the oldest one the consumer has not finished with.
        let filter = spec.filter_subjects.first().copied().unwrap_or(">");
        match stream
            .raw_message_builder()
            .sequence(info.ack_floor.stream_sequence + 1)
            .next_by_subject(filter)
            .send()
            .await
        {
            Ok(message) => progress.oldest_waiting_since = Some(message.time),
            // Acknowledged meanwhile: nothing old is waiting.
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) => {}
            Err(source) => {
                return Err(NatsError::OldestMessage {
                    consumer: spec.name,
                    source,
                });
            }
        }
    }
    Ok(progress)
}
