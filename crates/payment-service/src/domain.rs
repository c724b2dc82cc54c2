//! The payment state machine, free of I/O.
//!
//! ```text
//! (no row)  --orders.cancelled------------------------> cancelled (tombstone: late inputs never charge)
//! waiting   --the second of intent and amount---------> charging
//! waiting   --orders.cancelled------------------------> cancelled
//! charging  --orders.cancelled, no call made yet------> cancelled
//! charging  --too late to be answered by the deadline-> failed     (payments.failed: unavailable)
//!              (no call made yet)
//! charging  --gateway: charged------------------------> succeeded  (payments.succeeded)
//! charging  --gateway: declined-----------------------> declined   (payments.failed: declined)
//! charging  --gateway refuses the first call----------> failed     (payments.failed: unavailable)
//! charging  --cancelled after a call------------------> refunding
//! charging  --too late, or refused, after a call------> refunding  (payments.failed: unavailable)
//! succeeded --orders.cancelled------------------------> refunding
//! refunding --charge id unknown: look the charge up---> refunding with the charge id, or
//!                                                       declined / failed when it holds no money
//! refunding --charge known, refunded------------------> refunded   (payments.refunded)
//! ```
//!
//! The one rule everything else serves: once a charge request may have reached the gateway, the only way
//! out is through the gateway's own record. A call that timed out may still have charged the card, so a
//! cancellation, a deadline or a refusal after such a call leads to `refunding`, which settles the
//! unknown outcome by looking the charge up under the order's idempotency key: it never charges to find
//! out. And a charge is only attempted while its answer can still arrive before the saga's deadline, so
//! that no charge the worker asked for can land after the order was cancelled for taking too long.

use platform::backoff::Backoff;
use platform::db::duration_us;
use std::time::Duration;

contracts::text_enum! {
    pub enum Status {
        /// Has the intent or the amount, not both.
        Waiting => "waiting",
        /// Both inputs are in: the charge worker owns the row.
        Charging => "charging",
        Succeeded => "succeeded",
        Declined => "declined",
        /// Gave up without a charge: the deadline came too close, the gateway refused the request
        /// for good, or the order was cancelled and no earlier call turned out to have charged.
        Failed => "failed",
        /// The order was cancelled before any charge was attempted; nothing will ever be charged.
        Cancelled => "cancelled",
        /// A charge exists (or may exist) for an order that will not be fulfilled: the worker looks
        /// it up if needed, and refunds it.
        Refunding => "refunding",
        Refunded => "refunded",
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
    /// A charge exists or may exist: find it if needed, and refund it.
    Refund,
    /// Already final (or already being refunded): nothing to do.
    Ignore,
}

/// `current` is the payment's status and how many gateway calls were started, if a row exists. A
/// started call counts as one that may have charged, also while it is still in flight.
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
    /// Call the gateway's charge endpoint with the order's key.
    Charge,
    /// Too late for a call to be answered by the deadline, and none was made: nothing was charged;
    /// give up.
    GiveUp,
    /// Too late, after calls whose outcome is unknown: give up, and settle what they did.
    GiveUpAndSettle,
    /// Ask the gateway which charge the order's key holds, if any; never by charging.
    LookUp,
    Refund,
}

/// What the worker needs to know about a payment to choose its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub status: Status,
    pub attempts: i64,
    pub deadline_at_us: i64,
    pub charge_known: bool,
}

/// The next step at `now_us` for a worker whose calls take at most `call_timeout`. A charge is only
/// started if its answer is due before the deadline: one started later could land at the gateway
/// after order-service has cancelled the order for taking too long.
pub fn next_step(progress: Progress, now_us: i64, call_timeout: Duration) -> Option<Step> {
    let answered_by = now_us.saturating_add(duration_us(call_timeout));
    match progress.status {
        Status::Charging if answered_by > progress.deadline_at_us && progress.attempts == 0 => {
            Some(Step::GiveUp)
        }
        Status::Charging if answered_by > progress.deadline_at_us => Some(Step::GiveUpAndSettle),
        Status::Charging => Some(Step::Charge),
        Status::Refunding if progress.charge_known => Some(Step::Refund),
        Status::Refunding => Some(Step::LookUp),
        _ => None,
    }
}

/// The last moment a charge may start so that its answer is due by the deadline.
pub fn last_charge_start(deadline_at_us: i64, call_timeout: Duration) -> i64 {
    deadline_at_us.saturating_sub(duration_us(call_timeout))
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

/// Pauses between two calls for one payment: exponential from 200 ms, capped at 10 s, with full
/// jitter, so that many payments failing together do not retry together against a recovering
/// gateway.
pub const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// When to call again: after the pause, but a charge no later than its last possible start (see
/// [`last_charge_start`]; pass it as `latest`), so that a payment that cannot succeed in time is
/// given up promptly instead of after a long backoff.
pub fn retry_at(now_us: i64, delay: Duration, latest: Option<i64>) -> i64 {
    let after_pause = now_us.saturating_add(duration_us(delay));
    match latest {
        Some(latest) => after_pause.min(latest.saturating_add(1)).max(now_us),
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

    fn progress(status: Status, attempts: i64, charge_known: bool) -> Progress {
        Progress {
            status,
            attempts,
            deadline_at_us: 10_000_000,
            charge_known,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn a_charge_starts_only_while_its_answer_is_due_before_the_deadline() {
        let fresh = progress(Status::Charging, 0, false);
        assert_eq!(next_step(fresh, 8_000_000, TIMEOUT), Some(Step::Charge));
        assert_eq!(next_step(fresh, 8_000_001, TIMEOUT), Some(Step::GiveUp));
        assert_eq!(last_charge_start(10_000_000, TIMEOUT), 8_000_000);
        let tried = progress(Status::Charging, 3, false);
        assert_eq!(next_step(tried, 7_000_000, TIMEOUT), Some(Step::Charge));
        assert_eq!(
            next_step(tried, 9_000_000, TIMEOUT),
            Some(Step::GiveUpAndSettle)
        );
    }

    #[test]
    fn an_unknown_charge_is_looked_up_never_charged_again() {
        for now in [0, 9_999_999, 50_000_000] {
            assert_eq!(
                next_step(progress(Status::Refunding, 2, false), now, TIMEOUT),
                Some(Step::LookUp)
            );
            assert_eq!(
                next_step(progress(Status::Refunding, 2, true), now, TIMEOUT),
                Some(Step::Refund)
            );
        }
        assert_eq!(
            next_step(progress(Status::Succeeded, 1, true), 0, TIMEOUT),
            None
        );
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
    fn statuses_are_spelled_as_the_table_expects() {
        let texts: Vec<&str> = Status::ALL.iter().map(Status::as_str).collect();
        assert_eq!(
            texts,
            [
                "waiting",
                "charging",
                "succeeded",
                "declined",
                "failed",
                "cancelled",
                "refunding",
                "refunded"
            ]
        );
    }

    #[test]
    fn retry_pauses_grow_exponentially_within_their_bounds() {
        assert_eq!(RETRY.delay_with(1, 0.99), Duration::from_millis(200));
        assert!(RETRY.delay_with(2, 0.99) > Duration::from_millis(390));
        assert!(RETRY.delay_with(2, 0.99) <= Duration::from_millis(400));
        assert_eq!(RETRY.delay_with(1000, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn a_charge_retry_is_not_scheduled_past_its_last_start() {
        let pause = Duration::from_secs(10);
        assert_eq!(retry_at(1_000, pause, None), 10_001_000);
        assert_eq!(retry_at(1_000, pause, Some(2_000_000)), 2_000_001);
        assert_eq!(retry_at(1_000, pause, Some(500)), 1_000);
    }
}
