//! The inventory's decisions, free of I/O: what an order event does to a reservation, whether a set
//! of line attempts adds up to a reservation or a rejection, and what the order costs. The handler
//! feeds these with rows and applies the answers; tests drive them directly.

use contracts::events::{InventoryRejected, OrderLine, PricedLine, RejectReason, RejectedLine};
use contracts::{Event, Money, ProductId};
use serde::Serialize;

/// Longest product name the catalog accepts, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Highest unit price (one million in currency units): anything above is a typo, not a product.
pub const MAX_PRICE_CENTS: i64 = 100_000_000;
/// Largest stock one product may hold; keeps every sum of buckets far from `i64` overflow.
pub const MAX_STOCK: i64 = 1_000_000_000;

contracts::text_enum! {
    /// Where a reservation stands. Only `Reserved` still holds stock; every other status is final.
    pub enum ReservationStatus {
        /// Every line is held for the order.
        Reserved => "reserved",
        /// Nothing was held: a line was unknown or short of stock.
        Rejected => "rejected",
        /// The order was confirmed: the held units are sold.
        Committed => "committed",
        /// The order was cancelled: the held units are available again.
        Released => "released",
        /// The order was cancelled before we saw it: it must never reserve anything.
        Tombstone => "tombstone",
    }
}

/// The order events the inventory reacts to; every other event leaves it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent<'a> {
    Created(&'a [OrderLine]),
    Confirmed,
    Cancelled,
}

impl<'a> OrderEvent<'a> {
    pub fn of(event: &'a Event) -> Option<Self> {
        match event {
            Event::OrderCreated(created) => Some(OrderEvent::Created(&created.items)),
            Event::OrderConfirmed(_) => Some(OrderEvent::Confirmed),
            Event::OrderCancelled(_) => Some(OrderEvent::Cancelled),
            _ => None,
        }
    }
}

/// What to do with an order event, given the reservation's current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Try to hold every line (all or nothing).
    Reserve(&'a [OrderLine]),
    /// Reserved -> sold, status `Committed`.
    Commit,
    /// Reserved -> available, status `Released`.
    Release,
    /// Record the early cancel, so the order's creation is ignored when it arrives.
    Tombstone,
    /// The event changes nothing: a repeat, or the reservation is already final.
    Nothing,
}

/// The reservation state machine. An order is decided once: any existing row, including a
/// tombstone or a rejection, makes a (re)delivered `orders.created` a no-op.
pub fn decide<'a>(current: Option<ReservationStatus>, event: OrderEvent<'a>) -> Action<'a> {
    match (current, event) {
        (None, OrderEvent::Created(lines)) => Action::Reserve(lines),
        (Some(ReservationStatus::Reserved), OrderEvent::Confirmed) => Action::Commit,
        (Some(ReservationStatus::Reserved), OrderEvent::Cancelled) => Action::Release,
        (None, OrderEvent::Cancelled) => Action::Tombstone,
        _ => Action::Nothing,
    }
}

/// The order's lines sorted by product: every instance takes row locks in the same order, so two
/// concurrent reservations on PostgreSQL cannot deadlock. The sort is stable, so repeated products
/// keep their order.
pub fn lock_order(lines: &[OrderLine]) -> Vec<OrderLine> {
    let mut sorted = lines.to_vec();
    sorted.sort_by(|a, b| a.product_id.cmp(&b.product_id));
    sorted
}

/// What trying to hold one line found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// The units are held, at this unit price.
    Held {
        unit_price: Money,
    },
    UnknownProduct,
    InsufficientStock {
        available: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineAttempt {
    pub line: OrderLine,
    pub outcome: LineOutcome,
}

/// The reservation as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every line was held; these are the priced lines to record and announce.
    Reserve(Vec<PricedLine>),
    /// At least one line failed: every held line must be given back.
    Reject(InventoryRejected),
}

/// All or nothing: one failed line rejects the order, and the rejection lists every failed line.
pub fn conclude(attempts: &[LineAttempt]) -> Verdict {
    let failed: Vec<RejectedLine> = attempts
        .iter()
        .filter_map(|attempt| {
            let available = match attempt.outcome {
                LineOutcome::Held { .. } => return None,
                LineOutcome::UnknownProduct => None,
                LineOutcome::InsufficientStock { available } => Some(available),
            };
            Some(RejectedLine {
                product_id: attempt.line.product_id.clone(),
                requested: attempt.line.quantity,
                available,
            })
        })
        .collect();
    if !failed.is_empty() {
        return Verdict::Reject(InventoryRejected {
            reason: reject_reason(&failed),
            lines: failed,
        });
    }
    Verdict::Reserve(
        attempts
            .iter()
            .filter_map(|attempt| match attempt.outcome {
                LineOutcome::Held { unit_price } => Some(PricedLine {
                    product_id: attempt.line.product_id.clone(),
                    quantity: attempt.line.quantity,
                    unit_price_cents: unit_price,
                }),
                _ => None,
            })
            .collect(),
    )
}

/// An unknown product outranks a shortage: restocking will not fix an order for something we do
/// not sell, so that is the reason worth telling the customer.
pub fn reject_reason(failed: &[RejectedLine]) -> RejectReason {
    if failed.iter().any(|line| line.available.is_none()) {
        RejectReason::UnknownProduct
    } else {
        RejectReason::InsufficientStock
    }
}

/// The order's total; `None` if it overflows, which only a broken invariant can cause.
pub fn total(lines: &[PricedLine]) -> Option<Money> {
    lines.iter().try_fold(Money::ZERO, |sum, line| {
        sum.checked_add(line.unit_price_cents.times(line.quantity)?)
    })
}

/// A product as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub product_id: ProductId,
    pub name: String,
    /// The unit price.
    pub price_cents: Money,
    /// Units that can be reserved now.
    pub available: i64,
    /// Units held for orders whose saga is still running.
    pub reserved: i64,
    /// Units of confirmed orders.
    pub sold: i64,
}

/// A validated `PUT /products/{id}` body: what the caller may set. Its OpenAPI schema describes the
/// body as it arrives; `api::parse_product` checks it field by field, so every invalid field is
/// reported at once.
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
#[schema(
    as = ProductDraft,
    description = "The body of PUT /products/{product_id}. Every invalid field is reported at once (422), and a field not named here is refused."
)]
pub struct ProductDraft {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The unit price in cents.
    #[schema(rename = "price_cents", value_type = i64, minimum = 0, maximum = 100_000_000)]
    pub price: Money,
    /// The new `available` count; reserved and sold units are not the caller's to change.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::Quantity;

    fn line(product: &str, quantity: i64) -> OrderLine {
        OrderLine {
            product_id: ProductId::parse(product).unwrap(),
            quantity: Quantity::new(quantity).unwrap(),
        }
    }

    fn cents(amount: i64) -> Money {
        Money::from_cents(amount).unwrap()
    }

    fn attempt(product: &str, quantity: i64, outcome: LineOutcome) -> LineAttempt {
        LineAttempt {
            line: line(product, quantity),
            outcome,
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Tombstone,
        ] {
            assert_eq!(ReservationStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ReservationStatus::parse("pending"), None);
    }

    #[test]
    fn only_an_unseen_order_is_reserved() {
        let lines = [line("a", 1)];
        assert_eq!(
            decide(None, OrderEvent::Created(&lines)),
            Action::Reserve(&lines)
        );
        for status in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Tombstone,
        ] {
            assert_eq!(
                decide(Some(status), OrderEvent::Created(&lines)),
                Action::Nothing,
                "{status:?}"
            );
        }
    }

    #[test]
    fn confirm_commits_only_a_held_reservation() {
        assert_eq!(
            decide(Some(ReservationStatus::Reserved), OrderEvent::Confirmed),
            Action::Commit
        );
        assert_eq!(decide(None, OrderEvent::Confirmed), Action::Nothing);
        for status in [
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Tombstone,
        ] {
            assert_eq!(
                decide(Some(status), OrderEvent::Confirmed),
                Action::Nothing,
                "{status:?}"
            );
        }
    }

    #[test]
    fn cancel_releases_a_held_reservation_and_tombstones_an_unseen_order() {
        assert_eq!(
            decide(Some(ReservationStatus::Reserved), OrderEvent::Cancelled),
            Action::Release
        );
        assert_eq!(decide(None, OrderEvent::Cancelled), Action::Tombstone);
        for status in [
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Tombstone,
        ] {
            assert_eq!(
                decide(Some(status), OrderEvent::Cancelled),
                Action::Nothing,
                "{status:?}"
            );
        }
    }

    #[test]
    fn lines_are_locked_in_product_order() {
        let sorted = lock_order(&[line("c", 1), line("a", 2), line("b", 3), line("a", 4)]);
        let order: Vec<(&str, i64)> = sorted
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity.get()))
            .collect();
        assert_eq!(order, [("a", 2), ("a", 4), ("b", 3), ("c", 1)]);
    }

    #[test]
    fn all_lines_held_gives_priced_lines() {
        let verdict = conclude(&[
            attempt(
                "a",
                2,
                LineOutcome::Held {
                    unit_price: cents(1299),
                },
            ),
            attempt(
                "b",
                1,
                LineOutcome::Held {
                    unit_price: cents(500),
                },
            ),
        ]);
        let Verdict::Reserve(lines) = verdict else {
            panic!("expected a reservation, got {verdict:?}");
        };
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].unit_price_cents, cents(1299));
        assert_eq!(total(&lines), Some(cents(2 * 1299 + 500)));
    }

    #[test]
    fn one_short_line_rejects_the_order_and_lists_only_failed_lines() {
        let verdict = conclude(&[
            attempt(
                "a",
                2,
                LineOutcome::Held {
                    unit_price: cents(100),
                },
            ),
            attempt("b", 5, LineOutcome::InsufficientStock { available: 3 }),
        ]);
        assert_eq!(
            verdict,
            Verdict::Reject(InventoryRejected {
                reason: RejectReason::InsufficientStock,
                lines: vec![RejectedLine {
                    product_id: ProductId::parse("b").unwrap(),
                    requested: Quantity::new(5).unwrap(),
                    available: Some(3),
                }],
            })
        );
    }

    #[test]
    fn an_unknown_product_outranks_a_shortage() {
        let Verdict::Reject(rejected) = conclude(&[
            attempt("a", 2, LineOutcome::InsufficientStock { available: 0 }),
            attempt("zz", 1, LineOutcome::UnknownProduct),
        ]) else {
            panic!("expected a rejection");
        };
        assert_eq!(rejected.reason, RejectReason::UnknownProduct);
        assert_eq!(rejected.lines.len(), 2);
        assert_eq!(rejected.lines[1].available, None);
        assert_eq!(rejected.reason.as_str(), "unknown_product");
        assert_eq!(
            RejectReason::InsufficientStock.as_str(),
            "insufficient_stock"
        );
    }

    #[test]
    fn an_empty_order_reserves_nothing_for_free() {
        assert_eq!(conclude(&[]), Verdict::Reserve(vec![]));
        assert_eq!(total(&[]), Some(Money::ZERO));
    }

    #[test]
    fn a_total_that_overflows_is_refused() {
        let huge = PricedLine {
            product_id: ProductId::parse("a").unwrap(),
            quantity: Quantity::new(1000).unwrap(),
            unit_price_cents: cents(i64::MAX / 1000),
        };
        assert!(total(std::slice::from_ref(&huge)).is_some());
        assert_eq!(total(&[huge.clone(), huge]), None);
        let too_much = PricedLine {
            product_id: ProductId::parse("b").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            unit_price_cents: cents(i64::MAX),
        };
        assert_eq!(total(&[too_much]), None);
    }
}
