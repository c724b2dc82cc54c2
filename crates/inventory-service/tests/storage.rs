//! The reservation rules against a real (SQLite) database, through the handler the consumer runtime
//! calls: stock moves, reservation rows and outbox events must all agree.

use contracts::events::{
    CancelReason, OrderCancelled, OrderConfirmed, OrderCreated, OrderLine, RejectReason,
};
use contracts::{
    CorrelationId, CustomerId, Envelope, Event, Money, OrderId, PaymentMethod, ProductId, Quantity,
};
use inventory_service::domain::{Product, ProductDraft};
use inventory_service::handlers::InventoryHandler;
use inventory_service::storage;
use platform::consumer::Handler;
use platform::db::{Db, query};
use tempfile::TempDir;

struct Fixture {
    db: Db,
    handler: InventoryHandler,
    _dir: TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/inv.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url, "inventory", inventory_service::INFO.migrations)
            .await
            .unwrap();
        Fixture {
            db,
            handler: InventoryHandler::new(),
            _dir: dir,
        }
    }

    async fn put(&self, product: &str, price_cents: i64, stock: i64) {
        let draft = ProductDraft {
            name: format!("Product {product}"),
            price: Money::from_cents(price_cents).unwrap(),
            stock,
        };
        storage::put_product(&self.db, &ProductId::parse(product).unwrap(), &draft, 1)
            .await
            .unwrap();
    }

    async fn product(&self, product: &str) -> Product {
        storage::product(&self.db, &ProductId::parse(product).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Handles one event and commits, as the consumer runtime does.
    async fn handle(&self, envelope: &Envelope) {
        let mut tx = self.db.begin().await.unwrap();
        Handler::handle(&self.handler, &mut tx, envelope)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// Every event in the outbox, oldest first.
    async fn outbox(&self) -> Vec<Envelope> {
        query("SELECT payload FROM outbox ORDER BY sequence")
            .fetch_all::<Vec<u8>>(self.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|payload| Envelope::from_json(payload).unwrap())
            .collect()
    }

    /// The product's stock baseline, which only `orderflow verify` reads.
    async fn baseline(&self, product: &str) -> i64 {
        query("SELECT baseline FROM products WHERE product_id = $1")
            .bind(product.to_owned())
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn reservation_status(&self, order_id: OrderId) -> Option<String> {
        query("SELECT status FROM reservations WHERE order_id = $1")
            .bind(order_id.to_string())
            .fetch_optional(self.db.pool())
            .await
            .unwrap()
    }
}

fn created(order_id: OrderId, lines: &[(&str, i64)]) -> Envelope {
    Envelope::first(
        order_id,
        CorrelationId::parse(&format!("corr-{order_id}")).unwrap(),
        Event::OrderCreated(OrderCreated {
            customer_id: CustomerId::parse("cust-1").unwrap(),
            currency: contracts::Currency::legacy(),
            items: lines
                .iter()
                .map(|(product, quantity)| OrderLine {
                    product_id: ProductId::parse(product).unwrap(),
                    quantity: Quantity::new(*quantity).unwrap(),
                })
                .collect(),
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
            deadline_at: time::OffsetDateTime::now_utc() + time::Duration::minutes(5),
        }),
    )
}

fn cancelled(order_id: OrderId) -> Envelope {
    Envelope::first(
        order_id,
        CorrelationId::parse(&format!("corr-{order_id}")).unwrap(),
        Event::OrderCancelled(OrderCancelled {
            reason: CancelReason::Timeout,
        }),
    )
}

fn confirmed(order_id: OrderId) -> Envelope {
    Envelope::first(
        order_id,
        CorrelationId::parse(&format!("corr-{order_id}")).unwrap(),
        Event::OrderConfirmed(OrderConfirmed {
            total_cents: Money::ZERO,
        }),
    )
}

fn stock(product: &Product) -> (i64, i64, i64) {
    (product.available, product.reserved, product.sold)
}

#[tokio::test]
async fn an_order_with_one_short_line_reserves_nothing_and_is_rejected() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    fx.put("pear", 250, 1).await;
    let order_id = OrderId::new();

    fx.handle(&created(order_id, &[("apple", 3), ("pear", 2)]))
        .await;

    assert_eq!(stock(&fx.product("apple").await), (10, 0, 0));
    assert_eq!(stock(&fx.product("pear").await), (1, 0, 0));
    assert_eq!(
        fx.reservation_status(order_id).await.as_deref(),
        Some("rejected")
    );
    let events = fx.outbox().await;
    assert_eq!(events.len(), 1);
    let Event::InventoryRejected(rejected) = &events[0].event else {
        panic!("expected inventory.rejected, got {:?}", events[0].event);
    };
    assert_eq!(rejected.reason, RejectReason::InsufficientStock);
    assert_eq!(rejected.lines.len(), 1);
    assert_eq!(rejected.lines[0].product_id.as_str(), "pear");
    assert_eq!(rejected.lines[0].requested.get(), 2);
    assert_eq!(rejected.lines[0].available, Some(1));
    assert_eq!(events[0].meta.order_id, order_id);
}

#[tokio::test]
async fn an_unknown_product_rejects_the_order_with_that_reason() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    let order_id = OrderId::new();

    fx.handle(&created(order_id, &[("apple", 1), ("ghost", 1)]))
        .await;

    assert_eq!(stock(&fx.product("apple").await), (10, 0, 0));
    let events = fx.outbox().await;
    let Event::InventoryRejected(rejected) = &events[0].event else {
        panic!("expected inventory.rejected, got {:?}", events[0].event);
    };
    assert_eq!(rejected.reason, RejectReason::UnknownProduct);
    assert_eq!(rejected.lines[0].available, None);
}

#[tokio::test]
async fn a_good_order_is_reserved_at_current_prices_then_committed() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    fx.put("pear", 1299, 2).await;
    let order_id = OrderId::new();
    let create = created(order_id, &[("pear", 2), ("apple", 3)]);

    fx.handle(&create).await;

    assert_eq!(stock(&fx.product("apple").await), (7, 3, 0));
    assert_eq!(stock(&fx.product("pear").await), (0, 2, 0));
    let events = fx.outbox().await;
    assert_eq!(events.len(), 1);
    let Event::InventoryReserved(reserved) = &events[0].event else {
        panic!("expected inventory.reserved, got {:?}", events[0].event);
    };
    assert_eq!(reserved.total_cents.cents(), 3 * 100 + 2 * 1299);
    assert_eq!(reserved.lines.len(), 2);
    assert_eq!(events[0].meta.causation_id, Some(create.meta.event_id));
    assert_eq!(events[0].meta.correlation_id, create.meta.correlation_id);

    // A second delivery of the same creation (past the inbox) must not hold stock twice.
    fx.handle(&created(order_id, &[("apple", 3)])).await;
    assert_eq!(stock(&fx.product("apple").await), (7, 3, 0));

    fx.handle(&confirmed(order_id)).await;
    assert_eq!(stock(&fx.product("apple").await), (7, 0, 3));
    assert_eq!(stock(&fx.product("pear").await), (0, 0, 2));
    assert_eq!(
        fx.reservation_status(order_id).await.as_deref(),
        Some("committed")
    );

    // A cancel after the confirmation changes nothing.
    fx.handle(&cancelled(order_id)).await;
    assert_eq!(stock(&fx.product("apple").await), (7, 0, 3));
    assert_eq!(fx.outbox().await.len(), 1);
}

#[tokio::test]
async fn a_cancelled_reservation_gives_its_stock_back() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 5).await;
    let order_id = OrderId::new();

    fx.handle(&created(order_id, &[("apple", 5)])).await;
    assert_eq!(stock(&fx.product("apple").await), (0, 5, 0));
    fx.handle(&cancelled(order_id)).await;

    assert_eq!(stock(&fx.product("apple").await), (5, 0, 0));
    assert_eq!(
        fx.reservation_status(order_id).await.as_deref(),
        Some("released")
    );
}

#[tokio::test]
async fn a_cancel_before_the_order_leaves_a_tombstone_so_nothing_is_reserved() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    let order_id = OrderId::new();

    fx.handle(&cancelled(order_id)).await;
    assert_eq!(
        fx.reservation_status(order_id).await.as_deref(),
        Some("tombstone")
    );
    fx.handle(&created(order_id, &[("apple", 2)])).await;

    assert_eq!(stock(&fx.product("apple").await), (10, 0, 0));
    assert_eq!(
        fx.reservation_status(order_id).await.as_deref(),
        Some("tombstone")
    );
    assert!(fx.outbox().await.is_empty());
}

#[tokio::test]
async fn a_repeated_product_in_one_order_is_held_and_released_in_full() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    let order_id = OrderId::new();

    fx.handle(&created(order_id, &[("apple", 3), ("apple", 4)]))
        .await;
    assert_eq!(stock(&fx.product("apple").await), (3, 7, 0));
    fx.handle(&cancelled(order_id)).await;

    assert_eq!(stock(&fx.product("apple").await), (10, 0, 0));
}

#[tokio::test]
async fn replacing_a_product_keeps_reserved_and_sold() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    fx.handle(&created(OrderId::new(), &[("apple", 4)])).await;

    let draft = ProductDraft {
        name: "Green apple".into(),
        price: Money::from_cents(120).unwrap(),
        stock: 50,
    };
    let (product, created) =
        storage::put_product(&fx.db, &ProductId::parse("apple").unwrap(), &draft, 2)
            .await
            .unwrap();

    assert!(!created);
    assert_eq!(product.name, "Green apple");
    assert_eq!(product.price_cents.cents(), 120);
    assert_eq!(stock(&product), (50, 4, 0));
    let all = storage::products(&fx.db).await.unwrap();
    assert_eq!(all, vec![product]);
}

#[tokio::test]
async fn the_baseline_is_the_stock_put_plus_what_orders_hold_and_stock_moves_keep_it() {
    let fx = Fixture::new().await;
    fx.put("apple", 100, 10).await;
    assert_eq!(fx.baseline("apple").await, 10);
    let held = OrderId::new();
    let bought = OrderId::new();
    fx.handle(&created(held, &[("apple", 4)])).await;
    fx.handle(&created(bought, &[("apple", 3)])).await;
    fx.handle(&confirmed(bought)).await;
    assert_eq!(stock(&fx.product("apple").await), (3, 4, 3));
    assert_eq!(fx.baseline("apple").await, 10);

    fx.put("apple", 100, 20).await;
    assert_eq!(fx.baseline("apple").await, 27);
    fx.handle(&cancelled(held)).await;

    let (available, reserved, sold) = stock(&fx.product("apple").await);
    assert_eq!((available, reserved, sold), (24, 0, 3));
    assert_eq!(available + reserved + sold, fx.baseline("apple").await);
}
