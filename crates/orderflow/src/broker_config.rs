//! The nats-server configuration `orderflow up` writes for the servers it starts: how JetStream
//! syncs to disk, and who may do what. Each service connects as its own NATS user, allowed to
//! publish its own events and its consumers' dead letters, to consume its own consumers, and to make
//! the JetStream API calls those need; nothing else (inventory-service cannot publish
//! `payments.succeeded`, nor read the `DLQ` stream); order-service may also read the state of every
//! consumer and the messages of the service streams, for its admission control. The operator tools
//! connect as `operator`, allowed everything.

use contracts::topology::{
    ALL_CONSUMERS, INVENTORY, ORDERS, PAYMENTS, StreamSpec, dead_letter_subject,
};

/// Each service and the stream it publishes to.
const PUBLISHERS: [(&str, StreamSpec); 3] = [
    ("order-service", ORDERS),
    ("inventory-service", INVENTORY),
    ("payment-service", PAYMENTS),
];

/// The NATS users `up` creates: the services, then the operator tools.
pub const USERS: [&str; 4] = [
    "order-service",
    "inventory-service",
    "payment-service",
    crate::admin::OPERATOR,
];

/// Subjects one user may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What `user` may do; `None` for the operator, who may do everything.
pub fn permissions(user: &str) -> Option<Permissions> {
    if user == crate::admin::OPERATOR {
        return None;
    }
    let mut publish: Vec<String> = PUBLISHERS
        .iter()
        .filter(|(service, _)| *service == user)
        .flat_map(|(_, stream)| stream.subjects.iter().map(|subject| (*subject).to_owned()))
        .collect();
    // Every service declares the streams at start (the ones it consumes must exist) and reads
    // their state for its health checks: metadata, never messages.
    publish.extend(
        [
            "$JS.API.INFO",
            "$JS.API.STREAM.CREATE.*",
            "$JS.API.STREAM.UPDATE.*",
            "$JS.API.STREAM.INFO.*",
        ]
        .map(str::to_owned),
    );
    for consumer in ALL_CONSUMERS.iter().filter(|spec| spec.service == user) {
        let (stream, name) = (consumer.stream, consumer.name);
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"),
            format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
            // Acks, in both of the server's reply-subject formats.
            format!("$JS.ACK.{stream}.{name}.>"),
            format!("$JS.ACK.*.*.{stream}.{name}.>"),
            dead_letter_subject(name),
        ]);
    }
    // order-service's admission control reads where every consumer on the saga's path stands, and
    // the time of the oldest message each has still to handle (ADR 16).
    if user == order_service::INFO.name {
        for consumer in ALL_CONSUMERS.iter().filter(|spec| spec.service != user) {
            publish.push(format!(
                "$JS.API.CONSUMER.INFO.{}.{}",
                consumer.stream, consumer.name
            ));
        }
        for stream in [ORDERS, INVENTORY, PAYMENTS] {
            publish.push(format!("$JS.API.STREAM.MSG.GET.{}", stream.name));
        }
    }
    Some(Permissions {
        publish,
        // Replies: publish acknowledgements, API answers and pulled messages all come to inboxes.
        subscribe: vec!["_INBOX.>".to_owned()],
    })
}

/// The configuration file: `sync_always` makes JetStream write every message to disk before it
/// acknowledges it; `users` are `(name, password)`, each with [`permissions`].
pub fn render(sync_always: bool, users: &[(&str, String)]) -> String {
    let mut config = String::from("# Written by `orderflow up` at each start.\n");
    if sync_always {
        config.push_str("jetstream {\n  sync_interval: always\n}\n");
    }
    config.push_str("authorization {\n  users: [\n");
    for (user, password) in users {
        config.push_str(&format!(
            "    {{user: {}, password: {}",
            quoted(user),
            quoted(password)
        ));
        if let Some(allowed) = permissions(user) {
            config.push_str(&format!(
                ", permissions: {{publish: {{allow: {}}}, subscribe: {{allow: {}}}}}",
                list(&allowed.publish),
                list(&allowed.subscribe)
            ));
        }
        config.push_str("}\n");
    }
    config.push_str("  ]\n}\n");
    config
}

/// A string in the configuration's syntax: double-quoted, so `$` is not a variable reference.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quoted(item)).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_publishes_only_its_own_events_and_consumes_only_its_consumers() {
        let inventory = permissions("inventory-service").unwrap();
        assert!(inventory.publish.contains(&"inventory.>".to_owned()));
        assert!(
            inventory
                .publish
                .contains(&"dlq.inventory-orders".to_owned())
        );
        assert!(
            inventory
                .publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ORDERS.inventory-orders".to_owned())
        );
        for forbidden in ["payments.", "orders.", "dlq.payment", "dlq.order"] {
            let allowed = |subject: &String| subject.starts_with(forbidden);
            assert!(
                !inventory.publish.iter().any(allowed),
                "{forbidden}: {inventory:?}"
            );
        }
        for forbidden in ["MSG.GET", "DIRECT.GET", ".DLQ."] {
            let allowed = |subject: &String| subject.contains(forbidden);
            assert!(
                !inventory.publish.iter().any(allowed),
                "{forbidden}: {inventory:?}"
            );
        }
        assert_eq!(inventory.subscribe, ["_INBOX.>"]);
        assert_eq!(permissions("operator"), None);
    }

    #[test]
    fn order_service_may_read_where_the_sagas_consumers_stand() {
        let order = permissions("order-service").unwrap();
        for allowed in [
            "$JS.API.CONSUMER.INFO.ORDERS.inventory-orders",
            "$JS.API.CONSUMER.INFO.INVENTORY.payment-inventory-express",
            "$JS.API.CONSUMER.INFO.PAYMENTS.order-payments",
            "$JS.API.STREAM.MSG.GET.INVENTORY",
        ] {
            assert!(order.publish.contains(&allowed.to_owned()), "{allowed}");
        }
        assert!(!order.publish.iter().any(|subject| subject.contains(".DLQ")));
        let payment = permissions("payment-service").unwrap();
        assert!(
            !payment
                .publish
                .iter()
                .any(|subject| subject.contains("CONSUMER.INFO.ORDERS.inventory-orders"))
        );
    }

    #[test]
    fn the_file_quotes_every_subject_and_password() {
        let config = render(
            true,
            &[
                ("payment-service", "p\"w".to_owned()),
                ("operator", "secret".to_owned()),
            ],
        );
        assert!(config.contains("sync_interval: always"), "{config}");
        assert!(config.contains(r#"{user: "payment-service", password: "p\"w", permissions: {publish: {allow: ["payments.>", "$JS.API.INFO""#), "{config}");
        assert!(
            config.contains(r#"{user: "operator", password: "secret"}"#),
            "{config}"
        );
        assert!(!render(false, &[]).contains("jetstream"));
    }
}
