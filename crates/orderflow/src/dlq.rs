//! `orderflow dlq`: look at, replay and delete dead letters. A dead letter is a message that a consumer
//! could never handle (undecodable, a permanent failure, or out of retries); the consumer runtime copied
//! it to the `DLQ` stream (subject `dlq.<consumer>`) with the original payload bytes and headers plus
//! `Orderflow-Dlq-*` headers saying why, and terminated the original. Its ID here is its sequence in the
//! `DLQ` stream: stable, unique, and what the broker needs to delete it.

use anyhow::{Context as _, Result, anyhow, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use clap::builder::PossibleValuesParser;
use contracts::topology::{self, dead_letter_subject};
use platform::nats::NatsAuth;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
// Written by the consumer runtime (platform::consumer) when it dead-letters a message.
use contracts::topology::dead_letter_headers as dlq_headers;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where `orderflow up` runs NATS.
pub(crate) const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4223";
/// An operator waits for this command: an unreachable server should fail fast, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Broker instructions for one particular publish (e.g. `Nats-Expected-Last-Sequence`): they described
/// the stream as it was then, so a replay must not carry them.
const EXPECTATION_HEADER_PREFIX: &str = "Nats-Expected-";

/// Longest error shown in the table; `show` prints it whole.
const TABLE_ERROR_WIDTH: usize = 60;

/// Every durable consumer, so `--consumer` can be checked (and listed in --help) before connecting.
fn consumer_names() -> [&'static str; topology::ALL_CONSUMERS.len()] {
    topology::ALL_CONSUMERS.map(|consumer| consumer.name)
}

/// Inspect, replay and delete dead letters: messages a consumer could never handle.
///
/// When a consumer cannot decode a message, fails permanently on it, or runs out of retries, the message
/// is copied unchanged to the DLQ stream with headers saying which consumer failed, why, and when, and
/// the original is terminated, so it no longer blocks anything. Use `list` to see them, `show` to read
/// one, `replay` to send one again once the cause is fixed, and `purge` to delete the ones you give up on.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NATS server of the system (`orderflow up` runs one on port 4223).
    #[arg(long, global = true, env = "ORDERFLOW_NATS_URL", default_value = DEFAULT_NATS_URL,
        value_parser = platform::config::NATS_URLS)]
    nats_url: String,
    /// [default: the `operator` user `orderflow up` saved in $ORDERFLOW_DATA_DIR, if any]
    #[command(flatten)]
    nats_auth: NatsAuth,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List dead letters, oldest first.
    ///
    /// Shows, for each: its ID (what `show`, `replay` and `purge` take), the consumer that gave up, the
    /// original subject, how many deliveries were tried, when it failed, the event id (when the payload
    /// is an envelope) and the start of the error.
    List {
        /// Only this consumer's dead letters.
        #[arg(long, value_parser = PossibleValuesParser::new(consumer_names()))]
        consumer: Option<String>,
        /// Print a JSON array with every field (all headers and the payload too), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: every field, every header, and the payload.
    Show {
        /// The dead letter's ID (the first column of `orderflow dlq list`).
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters again to their original subject, then delete them from the DLQ.
    ///
    /// The original payload bytes and headers are published to the original subject and, once JetStream
    /// has stored them, the dead letter is deleted. Do it after fixing what made the consumer fail.
    /// A replay reaches every consumer of that subject, not only the one that failed: consumers that
    /// already applied the event skip it (their inbox knows its event id). With --all, identical dead
    /// letters of several consumers are published once. A message that still cannot be handled is
    /// dead-lettered again, under a new ID.
    ///
    /// With --payload, one dead letter is replayed with a fixed payload instead of its own (same subject
    /// and headers). Keep its event_id: consumers that already applied the event then still skip it.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Publish the JSON in this file (`-`: stdin) instead of the dead letter's own payload.
        /// Only with one ID.
        #[arg(long, value_name = "FILE", conflicts_with = "all")]
        payload: Option<PathBuf>,
        /// Print what was replayed as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    ///
    /// Asks for confirmation unless --yes is given; when stdin is not a terminal, --yes is required.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Delete without asking.
        #[arg(long, short)]
        yes: bool,
    },
}

/// Which dead letters `replay` and `purge` act on: one ID or --all.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "all"])))]
struct Selection {
    /// The dead letter's ID (the first column of `orderflow dlq list`).
    #[arg(
        value_name = "ID",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    id: Option<u64>,
    /// Every dead letter (of --consumer, if given) instead of one.
    #[arg(long)]
    all: bool,
    /// With --all: only this consumer's dead letters.
    #[arg(long, conflicts_with = "id", value_parser = PossibleValuesParser::new(consumer_names()))]
    consumer: Option<String>,
}

impl Args {
    /// Whether the answer is wanted as JSON (`--json`; `purge` has no JSON form).
    pub fn json(&self) -> bool {
        match self.action {
            Action::List { json, .. } | Action::Show { json, .. } | Action::Replay { json, .. } => {
                json
            }
            Action::Purge { .. } => false,
        }
    }
}

/// What one `orderflow dlq` command found or did.
#[derive(Debug)]
pub enum Outcome {
    Listed(Listing),
    Shown(Box<DeadLetter>),
    Replayed(Replays),
    Purged(Purge),
}

/// Runs one `orderflow dlq` command. `confirm_deletion` is asked, with the number of dead letters,
/// before `purge` without --yes deletes anything; its error ends the command. An error says what to do.
pub async fn execute(
    args: Args,
    confirm_deletion: impl FnOnce(usize) -> Result<bool>,
) -> Result<Outcome> {
    // Read before connecting: a bad file must fail before anything is published.
    let replacement = match &args.action {
        Action::Replay {
            payload: Some(path),
            ..
        } => Some(read_replacement(path)?),
        _ => None,
    };
    let auth = crate::admin::operator_nats_auth(&args.nats_auth, None);
    let dlq = Dlq::open(&args.nats_url, &auth).await?;
    match args.action {
        Action::List { consumer, .. } => {
            let letters = dlq.list(consumer.as_deref()).await?;
            Ok(Outcome::Listed(Listing { consumer, letters }))
        }
        Action::Show { id, .. } => Ok(Outcome::Shown(Box::new(dlq.get(id).await?))),
        Action::Replay { selection, .. } => Ok(Outcome::Replayed(
            dlq.replay(&selection, replacement).await?,
        )),
        Action::Purge { selection, yes } => Ok(Outcome::Purged(
            dlq.purge(&selection, yes, confirm_deletion).await?,
        )),
    }
}

/// The dead letters `list` found (of one consumer, when it was given), oldest first.
#[derive(Debug)]
pub struct Listing {
    consumer: Option<String>,
    letters: Vec<DeadLetter>,
}

impl Listing {
    /// Every dead letter with every field, for scripts.
    pub fn to_json(&self) -> Value {
        Value::Array(self.letters.iter().map(DeadLetter::to_json).collect())
    }

    /// The table and how many there are, or that there are none.
    pub fn text_lines(&self) -> Vec<String> {
        if self.letters.is_empty() {
            return vec![match &self.consumer {
                Some(consumer) => format!("No dead letters for {consumer}."),
                None => "No dead letters: every message was handled.".to_owned(),
            }];
        }
        let mut lines = format_table(&self.letters);
        lines.push(String::new());
        lines.push(format!(
            "{}. `orderflow dlq show ID` shows one in full.",
            count(self.letters.len())
        ));
        lines
    }
}

/// What `replay` did: a warning per fixed payload that changed the event, and each publish (a batch
/// of identical dead letters) in order, replayed or why not.
#[derive(Debug)]
pub struct Replays {
    warnings: Vec<String>,
    batches: Vec<Result<Replay>>,
}

impl Replays {
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn batches(&self) -> &[Result<Replay>] {
        &self.batches
    }

    /// The replays that JetStream stored, for scripts.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.batches
                .iter()
                .filter_map(|batch| batch.as_ref().ok())
                .map(Replay::to_json)
                .collect(),
        )
    }

    /// The line after the batches' own: that there was nothing to replay, or what a replay reaches.
    pub fn closing_line(&self) -> Option<&'static str> {
        if self.batches.is_empty() {
            Some("No dead letters to replay.")
        } else if self.batches.iter().any(Result::is_ok) {
            Some(
                "A replay reaches every consumer of its subject; those that already applied the event skip it.",
            )
        } else {
            None
        }
    }

    pub fn all_replayed(&self) -> bool {
        self.batches.iter().all(Result::is_ok)
    }
}

/// What `purge` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Purge {
    NothingToDelete,
    /// The operator did not confirm.
    Declined,
    /// `failures` says, per dead letter the server did not delete, why not.
    Deleted {
        deleted: usize,
        failures: Vec<String>,
    },
}

impl Purge {
    pub fn failures(&self) -> &[String] {
        match self {
            Purge::Deleted { failures, .. } => failures,
            Purge::NothingToDelete | Purge::Declined => &[],
        }
    }

    pub fn text_line(&self) -> String {
        match self {
            Purge::NothingToDelete => "No dead letters to delete.".to_owned(),
            Purge::Declined => "Nothing deleted.".to_owned(),
            Purge::Deleted { deleted, .. } => format!("Deleted {}.", count(*deleted)),
        }
    }
}

/// The DLQ stream of one NATS server.
struct Dlq {
    js: jetstream::Context,
    stream: Stream,
}

impl Dlq {
    async fn open(url: &str, auth: &NatsAuth) -> Result<Dlq> {
        let client = auth
            .apply(async_nats::ConnectOptions::new())
            .name("orderflow-dlq")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(platform::config::nats_servers(url))
            .await
            .map_err(|error| {
                anyhow!(
                    "cannot reach NATS at {url} ({error}); is `orderflow up` running? \
                     For another system pass --nats-url (or set ORDERFLOW_NATS_URL)"
                )
            })?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(topology::DLQ.name)
            .await
            .map_err(|error| match error.kind() {
                GetStreamErrorKind::JetStream(cause)
                    if cause.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    anyhow!(
                        "NATS at {url} has no {} stream: no orderflow service has run against it yet \
                         (services declare the streams when they start). Is --nats-url the system's NATS?",
                        topology::DLQ.name
                    )
                }
                _ => anyhow!(error).context(format!(
                    "cannot open the {} stream on NATS at {url}; is JetStream enabled there?",
                    topology::DLQ.name
                )),
            })?;
        Ok(Dlq { js, stream })
    }

    /// Every dead letter (of one consumer), oldest first.
    async fn list(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>> {
        let filter = dead_letter_subject(consumer.unwrap_or(">"));
        let mut letters = Vec::new();
        // Ask for "the next one from here" rather than walking every sequence: replayed and purged
        // letters leave gaps.
        let mut from = 1;
        loop {
            match self
                .stream
                .get_first_raw_message_by_subject(&filter, from)
                .await
            {
                Ok(message) => {
                    from = message.sequence + 1;
                    letters.push(DeadLetter::from_message(message));
                }
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => {
                    return Ok(letters);
                }
                Err(error) => {
                    return Err(error).context(format!(
                        "cannot read the {} stream (at sequence {from})",
                        topology::DLQ.name
                    ));
                }
            }
        }
    }

    async fn get(&self, id: u64) -> Result<DeadLetter> {
        match self.stream.get_raw_message(id).await {
            Ok(message) => Ok(DeadLetter::from_message(message)),
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => bail!(
                "no dead letter with ID {id}: it was replayed or purged, or never existed; \
                 `orderflow dlq list` shows the current IDs"
            ),
            Err(error) => Err(error).context(format!("cannot read dead letter {id}")),
        }
    }

    async fn select(&self, selection: &Selection) -> Result<Vec<DeadLetter>> {
        match selection.id {
            Some(id) => Ok(vec![self.get(id).await?]),
            None => self.list(selection.consumer.as_deref()).await,
        }
    }

    /// Replays each batch in turn; one that fails does not stop the others.
    async fn replay(
        &self,
        selection: &Selection,
        replacement: Option<Replacement>,
    ) -> Result<Replays> {
        let mut letters = self.select(selection).await?;
        let mut warnings = Vec::new();
        if let Some(replacement) = replacement {
            letters = letters
                .into_iter()
                .map(|letter| {
                    let fixed = letter.with_payload(&replacement);
                    warnings.extend(changed_event_warning(&letter, &fixed));
                    fixed
                })
                .collect();
        }
        let mut batches = Vec::new();
        for batch in replay_batches(letters) {
            batches.push(self.replay_batch(&batch).await);
        }
        Ok(Replays { warnings, batches })
    }

    /// Publishes the first letter of the batch (they are all the same message) and, once JetStream has
    /// stored it, deletes every letter of the batch.
    async fn replay_batch(&self, batch: &[DeadLetter]) -> Result<Replay> {
        let Some(letter) = batch.first() else {
            bail!("nothing to replay");
        };
        let ids = batch.iter().map(|l| l.id).collect::<Vec<_>>();
        if let Some(size) = letter.truncated_from {
            let original = match (
                letter.headers.get(dlq_headers::STREAM),
                letter.headers.get(dlq_headers::STREAM_SEQUENCE),
            ) {
                (Some(stream), Some(sequence)) => format!(
                    "the original is in stream {} at sequence {} until the stream's age limit",
                    stream.as_str(),
                    sequence.as_str()
                ),
                _ => "where the original is was not recorded".to_owned(),
            };
            bail!(
                "dead letter {} holds only the beginning of a {size}-byte message ({original}); \
                 replay it with --payload FILE holding the whole message, or purge it",
                letter.id
            );
        }
        let Some(subject) = letter.subject.clone() else {
            bail!(
                "dead letter {} has no {} header, so its original subject is unknown and it \
                 cannot be replayed; delete it with `orderflow dlq purge {} --yes`",
                letter.id,
                dlq_headers::SUBJECT,
                letter.id
            );
        };
        let message_id = replay_message_id(letter);
        let ack = self
            .js
            .publish_with_headers(
                subject.clone(),
                replay_headers(&letter.headers, &message_id),
                letter.payload.clone().into(),
            )
            .await
            .with_context(|| format!("cannot replay dead letter {} to {subject}", letter.id))?
            .await
            .with_context(|| {
                format!(
                    "JetStream did not store the replay of dead letter {} on {subject}; \
                     the dead letter is kept, try again",
                    letter.id
                )
            })?;
        for id in &ids {
            let deleted = self.stream.delete_message(*id).await;
            if !matches!(deleted, Ok(true)) {
                let reason = match deleted {
                    Err(error) => format!("{error}"),
                    Ok(_) => "the server did not delete it".to_owned(),
                };
                bail!(
                    "dead letter {id} was replayed to {subject} ({} sequence {}) but cannot be deleted \
                     from the DLQ ({reason}); delete it with `orderflow dlq purge {id} --yes`",
                    ack.stream,
                    ack.sequence
                );
            }
        }
        Ok(Replay {
            ids,
            payload_from: letter.payload_from.clone(),
            consumers: distinct(batch.iter().map(|l| l.consumer.clone())),
            subject,
            event_id: letter.event_id.clone(),
            message_id,
            stream: ack.stream,
            stream_sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Deletes each selected dead letter in turn; one the server does not delete does not stop the
    /// others.
    async fn purge(
        &self,
        selection: &Selection,
        yes: bool,
        confirm_deletion: impl FnOnce(usize) -> Result<bool>,
    ) -> Result<Purge> {
        let letters = self.select(selection).await?;
        if letters.is_empty() {
            return Ok(Purge::NothingToDelete);
        }
        if !yes && !confirm_deletion(letters.len())? {
            return Ok(Purge::Declined);
        }
        let mut deleted = 0;
        let mut failures = Vec::new();
        for letter in &letters {
            match self.stream.delete_message(letter.id).await {
                Ok(true) => deleted += 1,
                Ok(false) => failures.push(format!(
                    "the server did not delete dead letter {}",
                    letter.id
                )),
                Err(error) => {
                    failures.push(format!("cannot delete dead letter {}: {error}", letter.id));
                }
            }
        }
        Ok(Purge::Deleted { deleted, failures })
    }
}

/// Whether an answer to "Delete …? [y/N]" confirms: only y or yes, in any case.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// "1 dead letter", "3 dead letters".
pub fn count(n: usize) -> String {
    if n == 1 {
        "1 dead letter".to_owned()
    } else {
        format!("{n} dead letters")
    }
}

/// One message in the DLQ stream, with what its headers and payload say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its sequence in the DLQ stream.
    id: u64,
    consumer: String,
    /// Where it was first published, and where a replay sends it. `None`: the header is missing.
    subject: Option<String>,
    deliveries: Option<u64>,
    /// When the first of those deliveries failed; `failed_at` is when the last one did.
    first_failed_at: Option<String>,
    failed_at: Option<String>,
    error: Option<String>,
    /// From the payload's envelope: the runtime replaced the original `Nats-Msg-Id` (the event id) with
    /// the dead letter's own.
    event_id: Option<String>,
    event_type: Option<String>,
    order_id: Option<String>,
    correlation_id: Option<String>,
    /// The original payload's size when it was too large to be dead-lettered whole: `payload` then
    /// holds only its beginning, and the original stays in its stream at the sequence the headers
    /// name, until the stream's age limit.
    truncated_from: Option<u64>,
    headers: HeaderMap,
    payload: Vec<u8>,
    /// Where `payload` came from when an operator replaced the stored one (`replay --payload`).
    payload_from: Option<String>,
}

impl DeadLetter {
    fn from_message(message: StreamMessage) -> DeadLetter {
        DeadLetter::parse(
            message.sequence,
            message.subject.as_str(),
            message.headers,
            message.payload.to_vec(),
        )
    }

    /// Never fails: a dead letter with missing headers or an unreadable payload is exactly the kind an
    /// operator needs to see.
    fn parse(id: u64, dlq_subject: &str, headers: HeaderMap, payload: Vec<u8>) -> DeadLetter {
        let header = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
        let consumer = header(dlq_headers::CONSUMER).unwrap_or_else(|| {
            dlq_subject
                .strip_prefix("dlq.")
                .unwrap_or(dlq_subject)
                .to_owned()
        });
        DeadLetter {
            id,
            consumer,
            subject: header(dlq_headers::SUBJECT),
            deliveries: header(dlq_headers::DELIVERIES).and_then(|d| d.trim().parse().ok()),
            first_failed_at: header(dlq_headers::FIRST_FAILED_AT),
            failed_at: header(dlq_headers::FAILED_AT),
            error: header(dlq_headers::ERROR),
            truncated_from: header(dlq_headers::TRUNCATED).and_then(|n| n.trim().parse().ok()),
            event_id: None,
            event_type: None,
            order_id: None,
            correlation_id: None,
            payload: Vec::new(),
            payload_from: None,
            headers,
        }
        .with_envelope_of(payload)
    }

    /// Sets the payload and what its envelope says (nothing, if it is not one).
    fn with_envelope_of(self, payload: Vec<u8>) -> DeadLetter {
        let envelope = serde_json::from_slice::<Value>(&payload).ok();
        let field = |name: &str| {
            envelope
                .as_ref()
                .and_then(|envelope| envelope.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        DeadLetter {
            event_id: field("event_id"),
            event_type: field("type"),
            order_id: field("order_id"),
            correlation_id: field("correlation_id"),
            payload,
            ..self
        }
    }

    /// The same dead letter carrying an operator's fixed payload: a replay publishes it, and takes its
    /// message id from its event id.
    fn with_payload(&self, replacement: &Replacement) -> DeadLetter {
        DeadLetter {
            payload_from: Some(replacement.source.clone()),
            truncated_from: None,
            ..self.clone().with_envelope_of(replacement.payload.clone())
        }
    }

    /// Everything about it for a person: fields, headers, and the payload.
    pub fn text_lines(&self) -> Vec<String> {
        format_details(self)
    }

    /// Every field, for scripts. `payload` is the JSON itself when it parses (`payload_format` "json"),
    /// else the text ("text"), else the text with undecodable bytes as `\xNN` ("escaped").
    pub fn to_json(&self) -> Value {
        let (payload, format) = match serde_json::from_slice::<Value>(&self.payload) {
            Ok(value) => (value, "json"),
            Err(_) => match std::str::from_utf8(&self.payload) {
                Ok(text) => (Value::String(text.to_owned()), "text"),
                Err(_) => (Value::String(escaped_text(&self.payload)), "escaped"),
            },
        };
        json!({
            "id": self.id,
            "consumer": self.consumer,
            "subject": self.subject,
            "deliveries": self.deliveries,
            "first_failed_at": self.first_failed_at,
            "failed_at": self.failed_at,
            "error": self.error,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "order_id": self.order_id,
            "correlation_id": self.correlation_id,
            "headers": sorted_headers(&self.headers),
            "payload": payload,
            "payload_format": format,
            "payload_bytes": self.payload.len(),
            "truncated_from": self.truncated_from,
        })
    }
}

fn sorted_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    headers
        .iter()
        .map(|(name, values)| {
            let values = values.iter().map(|v| v.as_str().to_owned()).collect();
            (name.to_string(), values)
        })
        .collect()
}

/// An operator's fixed payload for `replay --payload`, checked to be JSON and kept byte for byte.
#[derive(Debug, Clone, PartialEq)]
struct Replacement {
    payload: Vec<u8>,
    /// The file it was read from, or "stdin".
    source: String,
}

impl Replacement {
    fn parse(payload: Vec<u8>, source: String) -> Result<Replacement> {
        if let Err(error) = serde_json::from_slice::<Value>(&payload) {
            bail!("the payload in {source} is not valid JSON ({error}); nothing was replayed");
        }
        Ok(Replacement { payload, source })
    }
}

/// Blocking reads: nothing else runs yet when the command reads its input.
fn read_replacement(path: &Path) -> Result<Replacement> {
    if path == Path::new("-") {
        let mut payload = Vec::new();
        std::io::stdin()
            .read_to_end(&mut payload)
            .context("cannot read the payload from stdin")?;
        return Replacement::parse(payload, "stdin".to_owned());
    }
    let payload = std::fs::read(path)
        .with_context(|| format!("cannot read the payload file {}", path.display()))?;
    Replacement::parse(payload, path.display().to_string())
}

/// A fixed payload under another event id is a new event to every consumer: those that applied the
/// original will apply it again. Worth saying, though it can be what is meant.
fn changed_event_warning(original: &DeadLetter, fixed: &DeadLetter) -> Option<String> {
    let original_id = original.event_id.as_deref()?;
    if fixed.event_id.as_deref() == Some(original_id) {
        return None;
    }
    let now = match &fixed.event_id {
        Some(event_id) => format!("event_id {event_id}"),
        None => "no event_id".to_owned(),
    };
    Some(format!(
        "dead letter {} held event {original_id}, the new payload has {now}: consumers that already \
         applied {original_id} will not recognise it as the same event",
        original.id
    ))
}

/// The `Nats-Msg-Id` of a replay. Not the event id itself: JetStream drops a publish whose id it saw in
/// its duplicate window (2 minutes), so a replay soon after the original publish would vanish. Nothing
/// else needs it to be the event id: the consumers' inboxes de-duplicate by the `event_id` inside the
/// payload. Keyed on the dead letter, so retrying a replay whose delete failed is caught by that same
/// window instead of being delivered twice.
fn replay_message_id(letter: &DeadLetter) -> String {
    match &letter.event_id {
        Some(event_id) => format!("{event_id}-replay-{}", letter.id),
        None => format!("dlq-{}-replay", letter.id),
    }
}

/// The original headers minus the dead-letter bookkeeping and the original publish's broker
/// instructions, with the replay's own message id.
fn replay_headers(original: &HeaderMap, message_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let text: &str = name.as_ref();
        let message_id_header: &str = async_nats::header::NATS_MESSAGE_ID.as_ref();
        let dropped = starts_with_ignore_case(text, dlq_headers::PREFIX)
            || starts_with_ignore_case(text, EXPECTATION_HEADER_PREFIX)
            || text.eq_ignore_ascii_case(message_id_header);
        if !dropped {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    headers
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Groups dead letters that are the same message (same subject, same bytes), keeping the oldest first:
/// one publish reaches every consumer of the subject, so publishing it once per consumer that failed
/// would only make the others skip it again.
fn replay_batches(letters: Vec<DeadLetter>) -> Vec<Vec<DeadLetter>> {
    let mut batches: Vec<Vec<DeadLetter>> = Vec::new();
    for letter in letters {
        let same = batches.iter_mut().find(|batch| {
            batch.first().is_some_and(|first| {
                first.subject.is_some()
                    && first.subject == letter.subject
                    && first.payload == letter.payload
            })
        });
        match same {
            Some(batch) => batch.push(letter),
            None => batches.push(vec![letter]),
        }
    }
    batches
}

/// The values in their first-seen order, each once.
fn distinct(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen
}

/// What one publish of a replay did.
#[derive(Debug)]
pub struct Replay {
    ids: Vec<u64>,
    /// Where the published payload came from when it was not the stored one.
    payload_from: Option<String>,
    /// Each consumer once, though several of its letters may have been the same message.
    consumers: Vec<String>,
    subject: String,
    event_id: Option<String>,
    message_id: String,
    stream: String,
    stream_sequence: u64,
    /// JetStream had this message id in its window already: an earlier try of the same replay.
    duplicate: bool,
}

impl Replay {
    /// One line for a person.
    pub fn describe(&self) -> String {
        let ids = self
            .ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let letters = if self.ids.len() == 1 {
            format!("dead letter {ids}")
        } else {
            format!("dead letters {ids}")
        };
        let event = match &self.event_id {
            Some(event_id) => format!("event {event_id}"),
            None => "a message without an event id".to_owned(),
        };
        let stored = if self.duplicate {
            format!(
                "already stored by an earlier try as {} #{}, not sent again",
                self.stream, self.stream_sequence
            )
        } else {
            format!("stored as {} #{}", self.stream, self.stream_sequence)
        };
        let fixed = match &self.payload_from {
            Some(source) => format!(" with the payload from {source}"),
            None => String::new(),
        };
        format!(
            "Replayed {letters} ({}){fixed}: {event} to {} ({stored}); removed from the DLQ.",
            self.consumers.join(", "),
            self.subject
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "ids": self.ids,
            "consumers": self.consumers,
            "subject": self.subject,
            "event_id": self.event_id,
            "payload_from": self.payload_from,
            "message_id": self.message_id,
            "stream": self.stream,
            "stream_sequence": self.stream_sequence,
            "duplicate": self.duplicate,
        })
    }
}

/// The list as an aligned table, header first.
fn format_table(letters: &[DeadLetter]) -> Vec<String> {
    let unknown = || "?".to_owned();
    let header = [
        "ID",
        "CONSUMER",
        "SUBJECT",
        "DELIVERIES",
        "FAILED AT",
        "EVENT ID",
        "ERROR",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|letter| {
            [
                letter.id.to_string(),
                letter.consumer.clone(),
                letter.subject.clone().unwrap_or_else(unknown),
                letter
                    .deliveries
                    .map(|d| d.to_string())
                    .unwrap_or_else(unknown),
                letter
                    .failed_at
                    .as_deref()
                    .map(short_time)
                    .unwrap_or_else(unknown),
                letter.event_id.clone().unwrap_or_else(|| "-".to_owned()),
                truncate(letter.error.as_deref().unwrap_or("?"), TABLE_ERROR_WIDTH),
            ]
        })
        .collect();
    let width = |column: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: [usize; 6] = std::array::from_fn(width);
    std::iter::once(&header)
        .chain(&rows)
        .map(|[id, consumer, subject, deliveries, failed_at, event_id, error]| {
            format!(
                "{id:>w0$}  {consumer:<w1$}  {subject:<w2$}  {deliveries:>w3$}  {failed_at:<w4$}  {event_id:<w5$}  {error}",
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
                w5 = widths[5],
            )
        })
        .collect()
}

/// Everything about one dead letter, for a person.
fn format_details(letter: &DeadLetter) -> Vec<String> {
    let or_missing =
        |value: &Option<String>| value.clone().unwrap_or_else(|| "(missing)".to_owned());
    let or_none = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let fields = [
        ("consumer", letter.consumer.clone()),
        ("subject", or_missing(&letter.subject)),
        (
            "deliveries",
            or_missing(&letter.deliveries.map(|d| d.to_string())),
        ),
        ("first failed at", or_missing(&letter.first_failed_at)),
        ("last failed at", or_missing(&letter.failed_at)),
        ("error", or_missing(&letter.error)),
        (
            "truncated",
            letter
                .truncated_from
                .map_or_else(|| "no".to_owned(), |size| format!("yes, from {size} bytes")),
        ),
        ("event id", or_none(&letter.event_id)),
        ("event type", or_none(&letter.event_type)),
        ("order id", or_none(&letter.order_id)),
        ("correlation id", or_none(&letter.correlation_id)),
    ];
    let mut lines = vec![format!("Dead letter {}", letter.id)];
    lines.extend(
        fields
            .iter()
            .map(|(label, value)| format!("  {:<17}{value}", format!("{label}:"))),
    );
    lines.push("Headers:".to_owned());
    let headers = sorted_headers(&letter.headers);
    if headers.is_empty() {
        lines.push("  (none)".to_owned());
    }
    for (name, values) in headers {
        for value in values {
            lines.push(format!("  {name}: {value}"));
        }
    }
    let size = letter.payload.len();
    match serde_json::from_slice::<Value>(&letter.payload) {
        Ok(value) => {
            lines.push(format!("Payload (JSON, {size} bytes):"));
            let pretty = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
            lines.extend(pretty.lines().map(|line| format!("  {line}")));
        }
        Err(_) => {
            lines.push(format!("Payload (not JSON, {size} bytes):"));
            lines.extend(
                escaped_text(&letter.payload)
                    .lines()
                    .map(|line| format!("  {line}")),
            );
        }
    }
    lines
}

/// Bytes as readable text: line breaks and tabs kept, other control characters and backslashes
/// escaped, bytes that are not UTF-8 as `\xNN`.
fn escaped_text(bytes: &[u8]) -> String {
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => text.push(c),
                '\\' => text.push_str("\\\\"),
                c if c.is_control() => text.extend(c.escape_default()),
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// "2026-01-01 10:00:00Z" from an RFC 3339 time with any precision; anything else as it is.
fn short_time(rfc3339: &str) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .and_then(|at| at.to_offset(time::UtcOffset::UTC).format(&format).ok())
        .unwrap_or_else(|| rfc3339.to_owned())
}

/// One line, at most `max` characters, an ellipsis showing where it was cut.
fn truncate(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, *value);
        }
        map
    }

    const ENVELOPE: &str = r#"{"event_id":"0198a000-0000-7000-8000-000000000001","type":"orders.created","version":"1","occurred_at":"2026-01-01T10:00:00Z","order_id":"ord-1","correlation_id":"corr-1","causation_id":null,"data":{}}"#;

    fn dead_letter_headers() -> HeaderMap {
        headers(&[
            ("Nats-Msg-Id", "dlq-inventory-orders-0198"),
            ("Orderflow-Correlation-Id", "corr-1"),
            ("Orderflow-Dlq-Subject", "orders.created"),
            ("Orderflow-Dlq-Consumer", "inventory-orders"),
            (
                "Orderflow-Dlq-Error",
                "gave up after 5 deliveries: database is locked",
            ),
            ("Orderflow-Dlq-Deliveries", "5"),
            ("Orderflow-Dlq-First-Failed-At", "2026-01-01T10:00:00.5Z"),
            ("Orderflow-Dlq-Failed-At", "2026-01-01T10:00:01.123456Z"),
        ])
    }

    fn letter(id: u64) -> DeadLetter {
        DeadLetter::parse(
            id,
            "dlq.inventory-orders",
            dead_letter_headers(),
            ENVELOPE.as_bytes().to_vec(),
        )
    }

    #[test]
    fn headers_and_envelope_become_fields() {
        let letter = letter(7);
        assert_eq!(letter.id, 7);
        assert_eq!(letter.consumer, "inventory-orders");
        assert_eq!(letter.subject.as_deref(), Some("orders.created"));
        assert_eq!(letter.deliveries, Some(5));
        assert_eq!(
            letter.first_failed_at.as_deref(),
            Some("2026-01-01T10:00:00.5Z")
        );
        assert_eq!(
            letter.failed_at.as_deref(),
            Some("2026-01-01T10:00:01.123456Z")
        );
        assert_eq!(
            letter.error.as_deref(),
            Some("gave up after 5 deliveries: database is locked")
        );
        // From the payload, not from Nats-Msg-Id, which the runtime replaced.
        assert_eq!(
            letter.event_id.as_deref(),
            Some("0198a000-0000-7000-8000-000000000001")
        );
        assert_eq!(letter.event_type.as_deref(), Some("orders.created"));
        assert_eq!(letter.order_id.as_deref(), Some("ord-1"));
        assert_eq!(letter.correlation_id.as_deref(), Some("corr-1"));
    }

    #[test]
    fn a_poison_message_without_headers_still_parses() {
        let letter =
            DeadLetter::parse(3, "dlq.payment-orders", HeaderMap::new(), b"\xff{".to_vec());
        assert_eq!(letter.consumer, "payment-orders");
        assert_eq!(letter.subject, None);
        assert_eq!(letter.deliveries, None);
        assert_eq!(letter.event_id, None);
        let json = letter.to_json();
        assert_eq!(json["payload"], "\\xff{");
        assert_eq!(json["payload_format"], "escaped");
        assert_eq!(json["payload_bytes"], 2);
    }

    #[test]
    fn json_has_every_field_and_the_payload_as_json() {
        let json = letter(7).to_json();
        assert_eq!(json["id"], 7);
        assert_eq!(json["subject"], "orders.created");
        assert_eq!(json["deliveries"], 5);
        assert_eq!(json["event_id"], "0198a000-0000-7000-8000-000000000001");
        assert_eq!(
            json["headers"]["Orderflow-Dlq-Consumer"],
            json!(["inventory-orders"])
        );
        assert_eq!(json["payload"]["order_id"], "ord-1");
        assert_eq!(json["payload_format"], "json");
    }

    #[test]
    fn text_payloads_are_kept_as_text() {
        let letter = DeadLetter::parse(1, "dlq.x", HeaderMap::new(), b"not json".to_vec());
        let json = letter.to_json();
        assert_eq!(json["payload"], "not json");
        assert_eq!(json["payload_format"], "text");
    }

    #[test]
    fn replay_headers_drop_bookkeeping_and_take_the_replay_id() {
        let mut original = dead_letter_headers();
        original.insert("Nats-Expected-Last-Sequence", "41");
        let replayed = replay_headers(&original, "evt-replay-7");
        assert_eq!(
            sorted_headers(&replayed),
            BTreeMap::from([
                ("Nats-Msg-Id".to_owned(), vec!["evt-replay-7".to_owned()]),
                (
                    "Orderflow-Correlation-Id".to_owned(),
                    vec!["corr-1".to_owned()]
                ),
            ])
        );
    }

    #[test]
    fn replay_ids_are_the_event_id_made_unique_per_dead_letter() {
        assert_eq!(
            replay_message_id(&letter(7)),
            "0198a000-0000-7000-8000-000000000001-replay-7"
        );
        let poison = DeadLetter::parse(9, "dlq.x", HeaderMap::new(), b"{}".to_vec());
        assert_eq!(replay_message_id(&poison), "dlq-9-replay");
    }

    const FIXED: &str = r#"{"event_id":"0198a000-0000-7000-8000-000000000002","type":"orders.created","version":"1","occurred_at":"2026-01-01T10:00:00Z","order_id":"ord-2","correlation_id":"corr-2","causation_id":null,"data":{"fixed":true}}"#;

    fn replacement(payload: &str) -> Replacement {
        Replacement::parse(payload.as_bytes().to_vec(), "fixed.json".into()).expect("valid JSON")
    }

    #[test]
    fn a_replacement_payload_must_be_json_and_is_kept_byte_for_byte() {
        let pretty = "{\n  \"event_id\": \"e-1\"\n}\n";
        assert_eq!(replacement(pretty).payload, pretty.as_bytes());
        for bad in ["", "{\"event_id\": ", "not json", "{} {}"] {
            let error = Replacement::parse(bad.as_bytes().to_vec(), "stdin".into())
                .expect_err(bad)
                .to_string();
            assert!(
                error.starts_with("the payload in stdin is not valid JSON")
                    && error.ends_with("nothing was replayed"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_fixed_payload_brings_its_own_event_id_and_message_id() {
        let original = letter(7);
        let fixed = original.with_payload(&replacement(FIXED));
        assert_eq!(fixed.payload, FIXED.as_bytes());
        assert_eq!(fixed.payload_from.as_deref(), Some("fixed.json"));
        assert_eq!(
            fixed.event_id.as_deref(),
            Some("0198a000-0000-7000-8000-000000000002")
        );
        assert_eq!(fixed.order_id.as_deref(), Some("ord-2"));
        // Everything the headers say is the dead letter's own.
        assert_eq!(
            (&fixed.id, &fixed.consumer, &fixed.subject, &fixed.error),
            (
                &original.id,
                &original.consumer,
                &original.subject,
                &original.error
            )
        );
        assert_eq!(
            sorted_headers(&fixed.headers),
            sorted_headers(&original.headers)
        );
        assert_eq!(
            replay_message_id(&fixed),
            "0198a000-0000-7000-8000-000000000002-replay-7"
        );
        let no_envelope = original.with_payload(&replacement(r#"{"not": "an event"}"#));
        assert_eq!(no_envelope.event_id, None);
        assert_eq!(replay_message_id(&no_envelope), "dlq-7-replay");
    }

    #[test]
    fn changing_the_event_id_is_warned_about() {
        let original = letter(7);
        assert_eq!(
            changed_event_warning(&original, &original.with_payload(&replacement(ENVELOPE))),
            None
        );
        let warning = changed_event_warning(&original, &original.with_payload(&replacement(FIXED)))
            .expect("a warning");
        assert!(
            warning.starts_with(
                "dead letter 7 held event 0198a000-0000-7000-8000-000000000001, the new payload has \
                 event_id 0198a000-0000-7000-8000-000000000002"
            ),
            "{warning}"
        );
        let dropped = changed_event_warning(&original, &original.with_payload(&replacement("{}")))
            .expect("a warning");
        assert!(
            dropped.contains("the new payload has no event_id"),
            "{dropped}"
        );
        let poison = DeadLetter::parse(9, "dlq.x", HeaderMap::new(), b"{}".to_vec());
        assert_eq!(
            changed_event_warning(&poison, &poison.with_payload(&replacement(FIXED))),
            None
        );
    }

    #[test]
    fn a_replay_with_a_fixed_payload_says_so() {
        let replay = Replay {
            ids: vec![7],
            payload_from: Some("fixed.json".into()),
            consumers: vec!["payment-orders".into()],
            subject: "orders.created".into(),
            event_id: Some("e-2".into()),
            message_id: "e-2-replay-7".into(),
            stream: "ORDERS".into(),
            stream_sequence: 12,
            duplicate: false,
        };
        assert_eq!(
            replay.describe(),
            "Replayed dead letter 7 (payment-orders) with the payload from fixed.json: event e-2 to \
             orders.created (stored as ORDERS #12); removed from the DLQ."
        );
        assert_eq!(replay.to_json()["payload_from"], "fixed.json");
    }

    #[test]
    fn identical_letters_of_several_consumers_are_replayed_once() {
        let mut other_consumer = letter(8);
        other_consumer.consumer = "payment-orders".into();
        let mut other_message = letter(9);
        other_message.payload = b"{}".to_vec();
        let mut no_subject = letter(10);
        no_subject.subject = None;
        let mut no_subject_either = letter(11);
        no_subject_either.subject = None;
        let batches = replay_batches(vec![
            letter(7),
            other_consumer,
            other_message,
            no_subject,
            no_subject_either,
        ]);
        let ids: Vec<Vec<u64>> = batches
            .iter()
            .map(|batch| batch.iter().map(|l| l.id).collect())
            .collect();
        assert_eq!(ids, [vec![7, 8], vec![9], vec![10], vec![11]]);
    }

    #[test]
    fn table_is_aligned_and_errors_are_cut() {
        let mut poison =
            DeadLetter::parse(12, "dlq.payment-orders", HeaderMap::new(), b"x".to_vec());
        poison.subject = Some("orders.created".into());
        poison.error = Some(format!("cannot decode event: {}", "x".repeat(80)));
        let lines = format_table(&[letter(7), poison.clone()]);
        assert_eq!(
            lines[0],
            "ID  CONSUMER          SUBJECT         DELIVERIES  FAILED AT             EVENT ID                              ERROR"
        );
        assert_eq!(
            lines[1],
            " 7  inventory-orders  orders.created           5  2026-01-01 10:00:01Z  0198a000-0000-7000-8000-000000000001  gave up after 5 deliveries: database is locked"
        );
        assert!(
            lines[2].starts_with("12  payment-orders    orders.created           ?  ?                     -                                     cannot decode event: xxx"),
            "{}",
            lines[2]
        );
        let cut = truncate(
            poison.error.as_deref().unwrap_or_default(),
            TABLE_ERROR_WIDTH,
        );
        assert!(cut.ends_with('…') && lines[2].ends_with(&cut));
        assert_eq!(cut.chars().count(), TABLE_ERROR_WIDTH);
    }

    #[test]
    fn an_empty_listing_says_whose_dead_letters_there_are_none_of() {
        let all = Listing {
            consumer: None,
            letters: Vec::new(),
        };
        assert_eq!(
            all.text_lines(),
            ["No dead letters: every message was handled."]
        );
        assert_eq!(all.to_json(), json!([]));
        let one_consumer = Listing {
            consumer: Some("payment-orders".into()),
            letters: Vec::new(),
        };
        assert_eq!(
            one_consumer.text_lines(),
            ["No dead letters for payment-orders."]
        );
    }

    #[test]
    fn a_listing_is_the_table_then_how_many() {
        let listing = Listing {
            consumer: None,
            letters: vec![letter(7), letter(8)],
        };
        let lines = listing.text_lines();
        assert_eq!(lines[..3], format_table(&listing.letters)[..]);
        assert_eq!(
            lines[3..],
            [
                "",
                "2 dead letters. `orderflow dlq show ID` shows one in full."
            ]
        );
        let json = listing.to_json();
        assert_eq!(json[0], letter(7).to_json());
        assert_eq!(json[1]["id"], 8);
        let one = Listing {
            consumer: None,
            letters: vec![letter(7)],
        };
        assert!(
            one.text_lines()
                .contains(&"1 dead letter. `orderflow dlq show ID` shows one in full.".to_owned())
        );
    }

    fn replay(id: u64) -> Replay {
        Replay {
            ids: vec![id],
            payload_from: None,
            consumers: vec!["inventory-orders".into()],
            subject: "orders.created".into(),
            event_id: Some("e-1".into()),
            message_id: format!("e-1-replay-{id}"),
            stream: "ORDERS".into(),
            stream_sequence: 40 + id,
            duplicate: false,
        }
    }

    #[test]
    fn replays_show_what_was_stored_and_fail_if_any_was_not() {
        let nothing = Replays {
            warnings: Vec::new(),
            batches: Vec::new(),
        };
        assert_eq!(nothing.closing_line(), Some("No dead letters to replay."));
        assert_eq!(nothing.to_json(), json!([]));
        assert!(nothing.all_replayed());

        let some = Replays {
            warnings: vec!["dead letter 7 held event e-0".into()],
            batches: vec![Ok(replay(7)), Err(anyhow!("cannot replay dead letter 8"))],
        };
        assert!(!some.all_replayed());
        assert_eq!(some.to_json(), json!([replay(7).to_json()]));
        assert!(
            some.closing_line()
                .is_some_and(|line| line.starts_with("A replay reaches every consumer"))
        );
        assert_eq!(
            some.batches()[0]
                .as_ref()
                .map(Replay::describe)
                .ok()
                .as_deref(),
            Some(
                "Replayed dead letter 7 (inventory-orders): event e-1 to orders.created (stored as \
                 ORDERS #47); removed from the DLQ."
            )
        );

        let none_stored = Replays {
            warnings: Vec::new(),
            batches: vec![Err(anyhow!("cannot replay dead letter 8"))],
        };
        assert_eq!(none_stored.closing_line(), None);
        assert_eq!(none_stored.to_json(), json!([]));
    }

    #[test]
    fn a_purge_says_how_many_it_deleted_and_why_not_the_others() {
        assert_eq!(
            Purge::NothingToDelete.text_line(),
            "No dead letters to delete."
        );
        assert_eq!(Purge::Declined.text_line(), "Nothing deleted.");
        assert!(Purge::Declined.failures().is_empty());
        let partly = Purge::Deleted {
            deleted: 1,
            failures: vec!["the server did not delete dead letter 9".into()],
        };
        assert_eq!(partly.text_line(), "Deleted 1 dead letter.");
        assert_eq!(
            partly.failures(),
            ["the server did not delete dead letter 9"]
        );
    }

    #[test]
    fn details_show_headers_and_pretty_payload() {
        let lines = format_details(&letter(7));
        assert_eq!(lines[0], "Dead letter 7");
        assert_eq!(lines[4], "  first failed at: 2026-01-01T10:00:00.5Z");
        assert_eq!(lines[5], "  last failed at:  2026-01-01T10:00:01.123456Z");
        assert!(lines.contains(&"  Orderflow-Dlq-Deliveries: 5".to_owned()));
        assert!(lines.contains(&format!("Payload (JSON, {} bytes):", ENVELOPE.len())));
        assert!(
            lines.contains(&"    \"order_id\": \"ord-1\",".to_owned()),
            "{lines:#?}"
        );
    }

    #[test]
    fn details_escape_a_payload_that_is_not_json() {
        let letter = DeadLetter::parse(
            1,
            "dlq.x",
            HeaderMap::new(),
            b"bad\x01\\ \xfe\nline 2".to_vec(),
        );
        let lines = format_details(&letter);
        let payload = lines
            .iter()
            .position(|l| l.starts_with("Payload (not JSON, 14 bytes):"))
            .expect("payload heading");
        assert_eq!(lines[payload + 1..], ["  bad\\u{1}\\\\ \\xfe", "  line 2"]);
        assert!(lines.contains(&"  (none)".to_owned()));
    }

    #[test]
    fn short_times_and_truncation() {
        assert_eq!(
            short_time("2026-01-01T12:00:01.5+02:00"),
            "2026-01-01 10:00:01Z"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
        assert_eq!(truncate("a\n  b", 10), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn only_y_or_yes_confirms() {
        assert!(is_yes("y\n"));
        assert!(is_yes(" YES "));
        assert!(!is_yes("\n"));
        assert!(!is_yes("no"));
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn replay_and_purge_take_an_id_or_all() {
        let parse = |line: &[&str]| Cli::try_parse_from(line.iter().copied()).map(|cli| cli.args);
        assert!(parse(&["dlq", "replay"]).is_err());
        assert!(parse(&["dlq", "replay", "3", "--all"]).is_err());
        assert!(parse(&["dlq", "purge", "3", "--consumer", "payment-orders"]).is_err());
        assert!(parse(&["dlq", "purge", "--all", "--consumer", "nobody"]).is_err());
        assert!(parse(&["dlq", "show", "0"]).is_err());
        let args = parse(&[
            "dlq",
            "purge",
            "--all",
            "--consumer",
            "payment-orders",
            "--yes",
            "--nats-url",
            "nats://h:1",
        ])
        .expect("valid");
        assert_eq!(args.nats_url, "nats://h:1");
        match args.action {
            Action::Purge { selection, yes } => {
                assert!(selection.all && yes);
                assert_eq!(selection.consumer.as_deref(), Some("payment-orders"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_is_asked_for_by_list_show_and_replay() {
        let json = |line: &[&str]| {
            Cli::try_parse_from(line.iter().copied())
                .map(|cli| cli.args.json())
                .expect("valid")
        };
        assert!(json(&["dlq", "list", "--json"]));
        assert!(json(&["dlq", "show", "3", "--json"]));
        assert!(json(&["dlq", "replay", "--all", "--json"]));
        assert!(!json(&["dlq", "list"]));
        assert!(!json(&["dlq", "purge", "--all", "--yes"]));
    }

    #[test]
    fn only_one_dead_letter_is_replayed_with_a_fixed_payload() {
        let parse = |line: &[&str]| Cli::try_parse_from(line.iter().copied()).map(|cli| cli.args);
        let args = parse(&["dlq", "replay", "3", "--payload", "-"]).expect("valid");
        match args.action {
            Action::Replay {
                selection, payload, ..
            } => {
                assert_eq!(selection.id, Some(3));
                assert_eq!(payload, Some(PathBuf::from("-")));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["dlq", "replay", "--all", "--payload", "fixed.json"]).is_err());
        assert!(parse(&["dlq", "replay", "--payload", "fixed.json"]).is_err());
        assert!(parse(&["dlq", "purge", "3", "--payload", "fixed.json"]).is_err());
    }

    #[test]
    fn the_default_nats_url_is_where_up_runs_it() {
        let cli = Cli::try_parse_from(["dlq", "list"]).expect("valid");
        if std::env::var_os("ORDERFLOW_NATS_URL").is_none() {
            assert_eq!(cli.args.nats_url, "nats://127.0.0.1:4223");
        }
    }
}
