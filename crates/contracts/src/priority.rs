//! Priority lanes: an express order's events travel on subjects of their own
//! (`orders.express.created` beside `orders.created`), read by consumers of their own, so a backlog of
//! normal orders in a stream never stands in front of them (ADR 15). The event `type` in the envelope
//! is the same in both lanes; only the subject says the lane, the way the trace rides in a header:
//! the lane is how an event travels, not what it says.

use std::borrow::Cow;

crate::text_enum! {
    /// How urgently an order is worked on. Every event of an order's saga travels in its lane.
    #[derive(Default)]
    pub enum Priority {
        #[default]
        Normal => "normal",
        Express => "express",
    }
}

/// The subject token that marks the express lane, right after the stream's own first token.
const EXPRESS_TOKEN: &str = "express";

impl Priority {
    /// The subject an event of `event_type` (`orders.created`) travels on in this lane:
    /// `orders.created` or `orders.express.created`.
    pub fn subject(self, event_type: &str) -> Cow<'_, str> {
        match (self, event_type.split_once('.')) {
            (Priority::Express, Some((stream, rest))) => {
                Cow::Owned(format!("{stream}.{EXPRESS_TOKEN}.{rest}"))
            }
            _ => Cow::Borrowed(event_type),
        }
    }

    /// The lane a subject is in, and the event type it carries: `orders.express.created` is an
    /// express `orders.created`. Any other subject is in the normal lane and names its type itself.
    pub fn of_subject(subject: &str) -> (Priority, Cow<'_, str>) {
        let mut tokens = subject.splitn(3, '.');
        match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(stream), Some(EXPRESS_TOKEN), Some(rest)) => {
                (Priority::Express, Cow::Owned(format!("{stream}.{rest}")))
            }
            _ => (Priority::Normal, Cow::Borrowed(subject)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_express_event_travels_on_its_lanes_subject_and_is_read_back_as_its_type() {
        assert_eq!(
            Priority::Express.subject("orders.created"),
            "orders.express.created"
        );
        assert_eq!(Priority::Normal.subject("orders.created"), "orders.created");
        assert_eq!(
            Priority::of_subject("inventory.express.reserved"),
            (Priority::Express, "inventory.reserved".into())
        );
        assert_eq!(
            Priority::of_subject("payments.succeeded"),
            (Priority::Normal, "payments.succeeded".into())
        );
        for priority in Priority::ALL {
            let subject = priority.subject("payments.refunded");
            assert_eq!(
                Priority::of_subject(&subject),
                (*priority, "payments.refunded".into())
            );
        }
        // Not an event subject: left as it is.
        assert_eq!(Priority::of_subject("dlq.x").0, Priority::Normal);
        assert_eq!(Priority::Express.subject("nodot"), "nodot");
    }
}
