//! Streams and durable consumers, declared as data. `platform::nats` creates or updates them at start;
//! operator tools read the same declarations, so names are never spelled twice.

use crate::priority::Priority;

/// A stream owned by one service: it holds every event that service publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
}

/// A durable pull consumer: one per (consuming service, stream, lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: &'static str,
    /// The service that runs it.
    pub service: &'static str,
    pub stream: &'static str,
    /// Only these subjects (or wildcard patterns) are delivered; an empty list means all of the stream.
    pub filter_subjects: &'static [&'static str],
    /// The lane it serves: an express consumer's work goes ahead of the normal lane's in its service.
    pub priority: Priority,
}

pub const ORDERS: StreamSpec = StreamSpec {
    name: "ORDERS",
    subjects: &["orders.>"],
};
pub const INVENTORY: StreamSpec = StreamSpec {
    name: "INVENTORY",
    subjects: &["inventory.>"],
};
pub const PAYMENTS: StreamSpec = StreamSpec {
    name: "PAYMENTS",
    subjects: &["payments.>"],
};
/// Dead letters: `dlq.<consumer>`; a message that can never be handled is copied here before it is
/// terminated, because JetStream has no dead-letter queue of its own.
pub const DLQ: StreamSpec = StreamSpec {
    name: "DLQ",
    subjects: &["dlq.>"],
};

pub const ALL_STREAMS: [StreamSpec; 4] = [ORDERS, INVENTORY, PAYMENTS, DLQ];

pub const INVENTORY_ORDERS: ConsumerSpec = ConsumerSpec {
    name: "inventory-orders",
    service: "inventory-service",
    stream: "ORDERS",
    filter_subjects: &["orders.*"],
    priority: Priority::Normal,
};
pub const PAYMENT_ORDERS: ConsumerSpec = ConsumerSpec {
    name: "payment-orders",
    service: "payment-service",
    stream: "ORDERS",
    filter_subjects: &["orders.*"],
    priority: Priority::Normal,
};
pub const PAYMENT_INVENTORY: ConsumerSpec = ConsumerSpec {
    name: "payment-inventory",
    service: "payment-service",
    stream: "INVENTORY",
    filter_subjects: &["inventory.reserved"],
    priority: Priority::Normal,
};
pub const ORDER_INVENTORY: ConsumerSpec = ConsumerSpec {
    name: "order-inventory",
    service: "order-service",
    stream: "INVENTORY",
    filter_subjects: &["inventory.*"],
    priority: Priority::Normal,
};
pub const ORDER_PAYMENTS: ConsumerSpec = ConsumerSpec {
    name: "order-payments",
    service: "order-service",
    stream: "PAYMENTS",
    filter_subjects: &["payments.*"],
    priority: Priority::Normal,
};

/// The express lane's consumers: the same work as the consumer each is named after, on the express
/// subjects only, so that no backlog of normal events is ever in front of an express one.
pub const INVENTORY_ORDERS_EXPRESS: ConsumerSpec = ConsumerSpec {
    name: "inventory-orders-express",
    service: "inventory-service",
    stream: "ORDERS",
    filter_subjects: &["orders.express.*"],
    priority: Priority::Express,
};
pub const PAYMENT_ORDERS_EXPRESS: ConsumerSpec = ConsumerSpec {
    name: "payment-orders-express",
    service: "payment-service",
    stream: "ORDERS",
    filter_subjects: &["orders.express.*"],
    priority: Priority::Express,
};
pub const PAYMENT_INVENTORY_EXPRESS: ConsumerSpec = ConsumerSpec {
    name: "payment-inventory-express",
    service: "payment-service",
    stream: "INVENTORY",
    filter_subjects: &["inventory.express.reserved"],
    priority: Priority::Express,
};
pub const ORDER_INVENTORY_EXPRESS: ConsumerSpec = ConsumerSpec {
    name: "order-inventory-express",
    service: "order-service",
    stream: "INVENTORY",
    filter_subjects: &["inventory.express.*"],
    priority: Priority::Express,
};
pub const ORDER_PAYMENTS_EXPRESS: ConsumerSpec = ConsumerSpec {
    name: "order-payments-express",
    service: "order-service",
    stream: "PAYMENTS",
    filter_subjects: &["payments.express.*"],
    priority: Priority::Express,
};

/// Whether `spec` receives messages published on `subject`.
pub fn receives(spec: &ConsumerSpec, subject: &str) -> bool {
    let stream_holds = ALL_STREAMS.iter().any(|stream| {
        stream.name == spec.stream
            && stream
                .subjects
                .iter()
                .any(|pattern| matches(pattern, subject))
    });
    stream_holds
        && (spec.filter_subjects.is_empty()
            || spec
                .filter_subjects
                .iter()
                .any(|pattern| matches(pattern, subject)))
}

/// Whether NATS subject `pattern` (with `*` and a final `>`) matches `subject`.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

pub fn dead_letter_subject(consumer: &str) -> String {
    format!("dlq.{consumer}")
}

/// Every durable consumer of the system, the normal lane's first.
pub const ALL_CONSUMERS: [ConsumerSpec; 10] = [
    INVENTORY_ORDERS,
    PAYMENT_ORDERS,
    PAYMENT_INVENTORY,
    ORDER_INVENTORY,
    ORDER_PAYMENTS,
    INVENTORY_ORDERS_EXPRESS,
    PAYMENT_ORDERS_EXPRESS,
    PAYMENT_INVENTORY_EXPRESS,
    ORDER_INVENTORY_EXPRESS,
    ORDER_PAYMENTS_EXPRESS,
];

/// Headers a dead letter carries beside the original ones: written by the consumer runtime, read by
/// `orderflow dlq`.
pub mod dead_letter_headers {
    /// Common prefix, so a replay can strip them all.
    pub const PREFIX: &str = "Orderflow-Dlq-";
    /// The subject the message was originally published on.
    pub const SUBJECT: &str = "Orderflow-Dlq-Subject";
    pub const CONSUMER: &str = "Orderflow-Dlq-Consumer";
    pub const ERROR: &str = "Orderflow-Dlq-Error";
    pub const DELIVERIES: &str = "Orderflow-Dlq-Deliveries";
    pub const FIRST_FAILED_AT: &str = "Orderflow-Dlq-First-Failed-At";
    /// The last failure: when the message was dead-lettered.
    pub const FAILED_AT: &str = "Orderflow-Dlq-Failed-At";
    /// The stream and sequence the original message was stored at: where to find it (until the
    /// stream's age limit) when the copy had to be cut.
    pub const STREAM: &str = "Orderflow-Dlq-Stream";
    pub const STREAM_SEQUENCE: &str = "Orderflow-Dlq-Stream-Sequence";
    /// Set when the payload was too large to be stored whole with these headers: the original size
    /// in bytes. The dead letter then holds only the payload's beginning and must not be replayed as
    /// it is.
    pub const TRUNCATED: &str = "Orderflow-Dlq-Truncated";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receivers(subject: &str) -> Vec<&'static str> {
        ALL_CONSUMERS
            .iter()
            .filter(|spec| receives(spec, subject))
            .map(|spec| spec.name)
            .collect()
    }

    #[test]
    fn each_subject_reaches_the_consumers_of_its_stream_through_their_filters() {
        assert_eq!(
            receivers("orders.created"),
            ["inventory-orders", "payment-orders"]
        );
        assert_eq!(
            receivers("inventory.reserved"),
            ["payment-inventory", "order-inventory"]
        );
        assert_eq!(receivers("inventory.rejected"), ["order-inventory"]);
        assert_eq!(receivers("payments.refunded"), ["order-payments"]);
        assert!(receivers("dlq.order-payments").is_empty());
        assert!(receivers("orders").is_empty());
        assert_eq!(
            receivers("orders.express.created"),
            ["inventory-orders-express", "payment-orders-express"]
        );
        assert_eq!(
            receivers("inventory.express.reserved"),
            ["payment-inventory-express", "order-inventory-express"]
        );
        assert_eq!(
            receivers("payments.express.refunded"),
            ["order-payments-express"]
        );
    }
}
