//! The payment state machine, free of I/O.
//!
//! ```text
//! (no row)  --orders.cancelled------------------------> cancelled (tombstone: late inputs never charge)
//! waiting   --the second of intent and amount---------> charging
//! waiting   --orders.cancelled------------------------> cancelled
//! charging  --orders.cancelled, no call made yet------> cancelled
//! charging  --deadline passed, no call made yet-------> failed     (payments.failed: unavailable)
//! charging  --gateway: charged------------------------> succeeded  (payments.succeeded)
//! charging  --gateway: declined-----------------------> declined   (payments.failed: declined)
//! charging  --cancelled or deadline, after a call-----> refunding  (deadline: payments.failed: unavailable)
//! succeeded --orders.cancelled------------------------> refunding
//! refunding --charge known (or learned), refunded-----> refunded   (payments.refunded)
//! refunding --the key holds no charge (declined)------> declined
//! ```
//!
//! The one rule everything else serves: once a charge request may have reached the gateway, the only way
//! out is through the gateway's answer. A call that timed out may still have charged the card, so a
//! cancellation or a missed deadline after such a call leads to `refunding`, which first learns the
//! charge (the same idempotency key returns the stored answer) and then refunds it.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Has the intent or the amount, not both.
    Waiting,
    /// Both inputs are in: the charge worker owns the row.
    Charging,
    Succeeded,
    Declined,
    /// Gave up without a charge: the deadline passed or the gateway refused the request for good.
    Failed,
    /// The order was cancelled before any charge was attempted; nothing will ever be charged.
    Cancelled,
    /// A charge exists (or may exist) for an order that will not be fulfilled: the worker refunds it.
    Refunding,
    Refunded,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Charging => "charging",
            Status::Succeeded => "succeeded",
            Status::Declined => "declined",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Refunding => "refunding",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "waiting" => Status::Waiting,
            "charging" => Status::Charging,
            "succeeded" => Status::Succeeded,
            "declined" => Status::Declined,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "refunding" => Status::Refunding,
            "refunded" => Status::Refunded,
            _ => return None,
        })
    }
}

/// What the join of `orders.created` and `inventory.reserved` holds for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    pub status: Status,
    pub has_intent: bool,
    pub has_amount: bool,
}

impl Join {
    /// `true` when this state, just reached by recording an input, should start the charge: both inputs
    /// are in and nothing (a cancellation, an earlier completion) has moved the payment on.
    pub fn completes(&self) -> bool {
        self.status == Status::Waiting && self.has_intent && self.has_amount
    }
}

/// What `orders.cancelled` does to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDecision {
    /// No payment row yet: leave a `cancelled` tombstone so late inputs never charge.
    Tombstone,
    /// Nothing was sent to the gateway: the payment ends as `cancelled`.
    NeverCharge,
    /// A charge exists or may exist: refund it.
    Refund,
    /// Already final (or already being refunded): nothing to do.
    Ignore,
}

/// `current` is the payment's status and how many gateway calls were started, if a row exists.
pub fn on_cancel(current: Option<(Status, i64)>) -> CancelDecision {
    match current {
        None => CancelDecision::Tombstone,
        Some((Status::Waiting, _)) | Some((Status::Charging, 0)) => CancelDecision::NeverCharge,
        Some((Status::Charging, _)) | Some((Status::Succeeded, _)) => CancelDecision::Refund,
        Some(_) => CancelDecision::Ignore,
    }
}

/// The charge worker's next action for a due payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Call the gateway's charge endpoint with the order's key. Also the way a `refunding` payment whose
    /// charge id is unknown learns it: the key returns the stored charge instead of a second one.
    Charge,
    /// The deadline passed before any call: nothing was charged; give up.
    GiveUp,
    /// The deadline passed after calls whose outcome is unknown: give up, and refund what they charged.
    GiveUpAndRefund,
    Refund,
}

pub fn next_step(
    status: Status,
    attempts: i64,
    deadline_at_us: i64,
    charge_known: bool,
    now_us: i64,
) -> Option<Step> {
    match status {
        Status::Charging if now_us > deadline_at_us && attempts == 0 => Some(Step::GiveUp),
        Status::Charging if now_us > deadline_at_us => Some(Step::GiveUpAndRefund),
        Status::Charging => Some(Step::Charge),
        Status::Refunding if charge_known => Some(Step::Refund),
        Status::Refunding => Some(Step::Charge),
        _ => None,
    }
}

/// How `GET /payments/{id}` shows a payment; `None` means "no payment was attempted" (404).
pub fn public_status(status: Status, attempts: i64) -> Option<&'static str> {
    match status {
        Status::Succeeded | Status::Declined | Status::Failed | Status::Refunded => {
            Some(status.as_str())
        }
        Status::Charging | Status::Refunding if attempts > 0 => Some("processing"),
        Status::Waiting | Status::Charging | Status::Refunding | Status::Cancelled => None,
    }
}

/// The shortest and the longest pause between two calls for one payment.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// The pause after the `attempts`-th failed call: exponential from 200 ms, capped at 10 s, with full
/// jitter above the minimum (`unit` is a uniform random number in [0, 1)), so that many payments
/// failing together do not retry together against a recovering gateway.
pub fn retry_delay(attempts: i64, unit: f64) -> Duration {
    let nth = usize::try_from(attempts.clamp(1, 64) - 1).unwrap_or(0);
    let ceiling = ExponentialBuilder::new()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .without_max_times()
        .build()
        .nth(nth)
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX);
    RETRY_MIN + (ceiling - RETRY_MIN).mul_f64(unit.clamp(0.0, 1.0))
}

/// When to call again: after the pause, but a charge no later than just past its deadline, so that a
/// payment that cannot succeed in time is given up promptly instead of after a long backoff.
pub fn retry_at(now_us: i64, delay: Duration, deadline_at_us: Option<i64>) -> i64 {
    let after_pause = now_us.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
    match deadline_at_us {
        Some(deadline) => after_pause.min(deadline.saturating_add(1)).max(now_us),
        None => after_pause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_INPUT: Join = Join {
        status: Status::Waiting,
        has_intent: false,
        has_amount: false,
    };

    #[test]
    fn the_second_input_completes_the_join_whichever_it_is() {
        let intent_first = Join {
            has_intent: true,
            ..NO_INPUT
        };
        assert!(!intent_first.completes());
        assert!(
            Join {
                has_amount: true,
                ..intent_first
            }
            .completes()
        );

        let amount_first = Join {
            has_amount: true,
            ..NO_INPUT
        };
        assert!(!amount_first.completes());
        assert!(
            Join {
                has_intent: true,
                ..amount_first
            }
            .completes()
        );
    }

    #[test]
    fn a_cancelled_or_started_payment_is_never_joined_again() {
        for status in [
            Status::Cancelled,
            Status::Charging,
            Status::Succeeded,
            Status::Refunded,
        ] {
            let join = Join {
                status,
                has_intent: true,
                has_amount: true,
            };
            assert!(!join.completes(), "{status:?}");
        }
    }

    #[test]
    fn a_cancel_before_anything_leaves_a_tombstone() {
        assert_eq!(on_cancel(None), CancelDecision::Tombstone);
    }

    #[test]
    fn a_cancel_before_any_gateway_call_never_charges() {
        assert_eq!(
            on_cancel(Some((Status::Waiting, 0))),
            CancelDecision::NeverCharge
        );
        assert_eq!(
            on_cancel(Some((Status::Charging, 0))),
            CancelDecision::NeverCharge
        );
    }

    #[test]
    fn a_cancel_after_a_charge_or_a_call_with_unknown_outcome_refunds() {
        assert_eq!(
            on_cancel(Some((Status::Succeeded, 1))),
            CancelDecision::Refund
        );
        assert_eq!(
            on_cancel(Some((Status::Charging, 2))),
            CancelDecision::Refund
        );
    }

    #[test]
    fn a_cancel_of_a_finished_payment_changes_nothing() {
        for status in [
            Status::Declined,
            Status::Failed,
            Status::Cancelled,
            Status::Refunding,
            Status::Refunded,
        ] {
            assert_eq!(on_cancel(Some((status, 1))), CancelDecision::Ignore);
        }
    }

    #[test]
    fn the_worker_charges_before_the_deadline_and_gives_up_after_it() {
        assert_eq!(
            next_step(Status::Charging, 0, 100, false, 100),
            Some(Step::Charge)
        );
        assert_eq!(
            next_step(Status::Charging, 0, 100, false, 101),
            Some(Step::GiveUp)
        );
        assert_eq!(
            next_step(Status::Charging, 3, 100, false, 101),
            Some(Step::GiveUpAndRefund)
        );
    }

    #[test]
    fn a_refund_of_an_unknown_charge_first_asks_for_the_charge() {
        assert_eq!(
            next_step(Status::Refunding, 2, 100, false, 500),
            Some(Step::Charge)
        );
        assert_eq!(
            next_step(Status::Refunding, 2, 100, true, 500),
            Some(Step::Refund)
        );
        assert_eq!(next_step(Status::Succeeded, 1, 100, true, 50), None);
    }

    #[test]
    fn only_attempted_payments_are_visible() {
        assert_eq!(public_status(Status::Waiting, 0), None);
        assert_eq!(public_status(Status::Cancelled, 0), None);
        assert_eq!(public_status(Status::Charging, 0), None);
        assert_eq!(public_status(Status::Charging, 1), Some("processing"));
        assert_eq!(public_status(Status::Refunding, 1), Some("processing"));
        assert_eq!(public_status(Status::Declined, 1), Some("declined"));
        assert_eq!(public_status(Status::Refunded, 2), Some("refunded"));
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in [
            Status::Waiting,
            Status::Charging,
            Status::Succeeded,
            Status::Declined,
            Status::Failed,
            Status::Cancelled,
            Status::Refunding,
            Status::Refunded,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("lost"), None);
    }

    #[test]
    fn retry_pauses_grow_exponentially_within_their_bounds() {
        assert_eq!(retry_delay(1, 0.0), RETRY_MIN);
        assert_eq!(retry_delay(1, 0.99), RETRY_MIN);
        assert!(retry_delay(2, 0.99) > Duration::from_millis(390));
        assert!(retry_delay(2, 0.99) <= Duration::from_millis(400));
        assert!(retry_delay(4, 0.5) >= RETRY_MIN);
        assert!(retry_delay(4, 0.5) <= Duration::from_millis(1600));
        assert_eq!(retry_delay(1000, 1.0), RETRY_MAX);
        assert!(retry_delay(1000, 0.0) >= RETRY_MIN);
    }

    #[test]
    fn a_charge_retry_is_not_scheduled_past_its_deadline() {
        let pause = Duration::from_secs(10);
        assert_eq!(retry_at(1_000, pause, None), 10_001_000);
        assert_eq!(retry_at(1_000, pause, Some(2_000_000)), 2_000_001);
        assert_eq!(retry_at(1_000, pause, Some(500)), 1_000);
    }
}
