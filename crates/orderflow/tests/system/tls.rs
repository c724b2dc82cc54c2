//! TLS everywhere, with a certificate authority of the test's own (rcgen): NATS takes TLS
//! connections only, from clients that present a certificate the CA signed, and PostgreSQL (a server
//! of the test's own) takes TLS connections only, the services checking its certificate. The saga
//! runs end to end over it, and what lacks the CA's trust is turned away.

use crate::harness::{Options, System};
use serde_json::json;
use sqlx::Connection;
use testkit::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_over_tls_to_nats_and_postgres() {
    let options = Options {
        tls: true,
        ..Options::default()
    };
    let Some(system) = System::start_with(Backend::Postgres, options).await else {
        return;
    };
    system.put_product("sku-tls", 1299, 5).await;
    let id = system
        .place(
            json!([{"product_id": "sku-tls", "quantity": 2}]),
            "tok_visa",
        )
        .await;
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.verified().await;

    let ca = system.tls.as_ref().expect("a CA");
    let url = system.nats.url();
    // Without TLS, or trusting the CA but without a client certificate: refused.
    assert!(async_nats::connect(&url).await.is_err());
    let anonymous = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.ca_file())
        .connect(&url)
        .await;
    assert!(anonymous.is_err(), "a client without a certificate got in");
    // Without TLS, PostgreSQL turns the connection away.
    let server = system
        .pg_server
        .as_ref()
        .expect("a PostgreSQL server of our own");
    assert!(
        sqlx::PgConnection::connect(&server.plain_url())
            .await
            .is_err()
    );
    let mut tls = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    let (encrypted,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut tls)
            .await
            .unwrap();
    assert!(encrypted);
}
