//! Fault injection: the ways a real payment gateway breaks (down, slow, flaky, hanging), switched at run
//! time through `/admin/faults`, so tests and demos can show what orderflow does when its gateway fails.
//! This module holds the settings, their validation and the per-request decision; the HTTP side (one
//! middleware in front of every `/v1` route, and the admin endpoints) is in `api.rs`, which keeps the
//! charge and refund code unaware of faults.

use platform::http::FieldError;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The added delay of `slow` when the request names none.
pub const DEFAULT_LATENCY_MS: u64 = 1000;
/// The share of failed calls of `flaky` when the request names none.
pub const DEFAULT_ERROR_RATE: f64 = 0.5;
/// Ten minutes: longer than any client waits, so a larger value can only be a typo.
const MAX_LATENCY_MS: u64 = 600_000;

contracts::text_enum! {
    /// How the gateway misbehaves.
    pub enum FaultMode {
        /// No fault: every call is handled.
        Ok => "ok",
        /// Every call answers 503 without touching the ledger, like a gateway in an outage.
        Down => "down",
        /// Every call is handled at once but answered only after an added delay, like a gateway
        /// behind a congested network: a client that gives up first does not know the outcome.
        Slow => "slow",
        /// A share of the calls answers 503 without touching the ledger; the others are handled.
        Flaky => "flaky",
        /// No call is ever answered (until the simulator shuts down), like a gateway that accepts
        /// connections and then stalls: only the client's own timeout helps.
        Hang => "hang",
    }
}

/// The whole fault configuration, as `GET /admin/faults` shows it. Every `POST` replaces all of it: a
/// parameter left out takes its default, so the outcome never depends on earlier settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultSettings {
    pub mode: FaultMode,
    /// The delay `slow` adds before answering a call.
    pub latency_ms: u64,
    /// The share of calls (0 to 1) that `flaky` fails.
    pub error_rate: f64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            mode: FaultMode::Ok,
            latency_ms: DEFAULT_LATENCY_MS,
            error_rate: DEFAULT_ERROR_RATE,
        }
    }
}

/// What the fault layer does to one `/v1` call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Handle it normally.
    None,
    /// Answer 503 without handling it.
    Unavailable,
    /// Handle it after this delay.
    Delay(Duration),
    /// Never answer it (until shutdown).
    Hang,
}

impl FaultSettings {
    /// Parses a `POST /admin/faults` body, reporting every invalid or unknown field at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        let mut errors: Vec<FieldError> = object
            .keys()
            .filter(|key| !["mode", "latency_ms", "error_rate"].contains(&key.as_str()))
            .map(|key| FieldError::new(key.as_str(), "is not a known field"))
            .collect();
        let mode = match object.get("mode") {
            None => {
                errors.push(FieldError::new("mode", "is required"));
                None
            }
            Some(value) => {
                let mode = value.as_str().and_then(FaultMode::parse);
                if mode.is_none() {
                    errors.push(FieldError::new(
                        "mode",
                        format!("must be one of {}", FaultMode::choices()),
                    ));
                }
                mode
            }
        };
        let latency_ms = match object.get("latency_ms") {
            None | Some(Value::Null) => DEFAULT_LATENCY_MS,
            Some(value) => match value.as_u64() {
                Some(ms) if ms <= MAX_LATENCY_MS => ms,
                _ => {
                    errors.push(FieldError::new(
                        "latency_ms",
                        format!("must be an integer from 0 to {MAX_LATENCY_MS}"),
                    ));
                    DEFAULT_LATENCY_MS
                }
            },
        };
        let error_rate = match object.get("error_rate") {
            None | Some(Value::Null) => DEFAULT_ERROR_RATE,
            Some(value) => match value.as_f64() {
                Some(rate) if (0.0..=1.0).contains(&rate) => rate,
                _ => {
                    errors.push(FieldError::new(
                        "error_rate",
                        "must be a number from 0 to 1",
                    ));
                    DEFAULT_ERROR_RATE
                }
            },
        };
        match mode {
            Some(mode) if errors.is_empty() => Ok(Self {
                mode,
                latency_ms,
                error_rate,
            }),
            _ => Err(errors),
        }
    }

    /// The fault for one call; `unit` is a uniform random number in [0, 1) that decides `flaky`.
    pub fn fault_for(&self, unit: f64) -> Fault {
        match self.mode {
            FaultMode::Ok => Fault::None,
            FaultMode::Down => Fault::Unavailable,
            FaultMode::Slow => Fault::Delay(Duration::from_millis(self.latency_ms)),
            FaultMode::Flaky if unit < self.error_rate => Fault::Unavailable,
            FaultMode::Flaky => Fault::None,
            FaultMode::Hang => Fault::Hang,
        }
    }
}

/// What the fault layer has seen since start, as `GET /admin/stats` shows it: lets a test prove that a
/// client stopped calling (a circuit breaker open) without reading the client's own bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// Every `/v1` call that reached the gateway, whatever happened to it.
    pub requests: u64,
    /// Calls answered 503 by `down` or `flaky`.
    pub unavailable: u64,
    /// Calls delayed by `slow`.
    pub delayed: u64,
    /// Calls held unanswered by `hang`.
    pub hung: u64,
}

/// The simulator's fault settings and counters, shared by the fault layer and the admin endpoints.
/// Starts with no fault.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// A std mutex: it is held only to copy the settings in or out, never across an await.
    settings: Mutex<FaultSettings>,
    requests: AtomicU64,
    unavailable: AtomicU64,
    delayed: AtomicU64,
    hung: AtomicU64,
}

impl Faults {
    pub fn settings(&self) -> FaultSettings {
        // The settings are replaced whole, so a panic elsewhere cannot leave them half-written:
        // a poisoned lock still holds a consistent value.
        *self
            .shared
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set(&self, settings: FaultSettings) {
        *self
            .shared
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = settings;
    }

    pub fn stats(&self) -> FaultStats {
        FaultStats {
            requests: self.shared.requests.load(Ordering::Relaxed),
            unavailable: self.shared.unavailable.load(Ordering::Relaxed),
            delayed: self.shared.delayed.load(Ordering::Relaxed),
            hung: self.shared.hung.load(Ordering::Relaxed),
        }
    }

    /// Decides the fault for one incoming `/v1` call under the current settings, and counts it.
    pub fn next(&self) -> Fault {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let fault = self.settings().fault_for(rand::random::<f64>());
        let (counter, label) = match fault {
            Fault::None => return fault,
            Fault::Unavailable => (&self.shared.unavailable, "unavailable"),
            Fault::Delay(_) => (&self.shared.delayed, "delayed"),
            Fault::Hang => (&self.shared.hung, "hung"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("orderflow_gateway_faults_total", "fault" => label).increment(1);
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_mode_alone_takes_the_default_parameters() {
        let settings = FaultSettings::parse(&json!({"mode": "flaky"})).unwrap();
        assert_eq!(
            settings,
            FaultSettings {
                mode: FaultMode::Flaky,
                ..FaultSettings::default()
            }
        );
        let settings =
            FaultSettings::parse(&json!({"mode": "slow", "latency_ms": 0, "error_rate": 1}))
                .unwrap();
        assert_eq!(settings.latency_ms, 0);
        assert_eq!(settings.error_rate, 1.0);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = FaultSettings::parse(&json!({
            "mode": "broken", "latency_ms": -1, "error_rate": 1.5, "colour": "red"
        }))
        .unwrap_err();
        let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["colour", "error_rate", "latency_ms", "mode"]);
        assert_eq!(
            FaultSettings::parse(&json!({})).unwrap_err()[0].field,
            "mode"
        );
        assert!(FaultSettings::parse(&json!("down")).is_err());
        assert!(FaultSettings::parse(&json!({"mode": "slow", "latency_ms": 600_001})).is_err());
        assert!(FaultSettings::parse(&json!({"mode": "slow", "latency_ms": 1.5})).is_err());
    }

    #[test]
    fn each_mode_decides_its_fault() {
        let with = |mode| FaultSettings {
            mode,
            ..FaultSettings::default()
        };
        assert_eq!(with(FaultMode::Ok).fault_for(0.0), Fault::None);
        assert_eq!(with(FaultMode::Down).fault_for(0.99), Fault::Unavailable);
        assert_eq!(
            with(FaultMode::Slow).fault_for(0.0),
            Fault::Delay(Duration::from_secs(1))
        );
        assert_eq!(with(FaultMode::Hang).fault_for(0.0), Fault::Hang);
        // flaky fails the share `error_rate` of the unit interval, from below.
        assert_eq!(with(FaultMode::Flaky).fault_for(0.49), Fault::Unavailable);
        assert_eq!(with(FaultMode::Flaky).fault_for(0.5), Fault::None);
        let never = FaultSettings {
            error_rate: 0.0,
            ..with(FaultMode::Flaky)
        };
        assert_eq!(never.fault_for(0.0), Fault::None);
        let always = FaultSettings {
            error_rate: 1.0,
            ..with(FaultMode::Flaky)
        };
        assert_eq!(always.fault_for(0.999), Fault::Unavailable);
    }

    #[test]
    fn modes_round_trip_through_text() {
        for mode in FaultMode::ALL {
            assert_eq!(FaultMode::parse(mode.as_str()), Some(*mode));
        }
        assert_eq!(FaultMode::parse("OK"), None);
    }

    #[test]
    fn settings_are_shared_and_calls_counted() {
        let faults = Faults::default();
        assert_eq!(faults.settings().mode, FaultMode::Ok);
        assert_eq!(faults.next(), Fault::None);
        faults.clone().set(FaultSettings {
            mode: FaultMode::Down,
            ..FaultSettings::default()
        });
        assert_eq!(faults.next(), Fault::Unavailable);
        assert_eq!(
            faults.stats(),
            FaultStats {
                requests: 2,
                unavailable: 1,
                delayed: 0,
                hung: 0
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_settings_or_named_errors(body in testkit::arbitrary::json_value()) {
            if let Err(errors) = FaultSettings::parse(&body) {
                proptest::prop_assert!(!errors.is_empty());
            }
        }
    }
}
