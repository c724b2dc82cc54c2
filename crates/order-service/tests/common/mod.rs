//! What order-service's tests against real databases share.

use order_service::domain::NewOrder;
use platform::db::Db;
use serde_json::json;
use testkit::{Backend, TestDatabase};

/// A migrated order-service database on `backend`, or `None` when that backend is not available.
pub async fn database(backend: Backend) -> Option<(TestDatabase, Db)> {
    let test_db = TestDatabase::create(backend).await?;
    let db = Db::connect(
        &test_db.url_for("order"),
        "order",
        order_service::INFO.migrations,
    )
    .await
    .unwrap();
    Some((test_db, db))
}

/// A valid order of one line.
pub fn new_order() -> NewOrder {
    NewOrder::parse(&json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 1}],
        "payment_method": "tok_visa",
    }))
    .unwrap()
}
