//! A 3-node JetStream cluster with every stream on three replicas: the node leading the streams is
//! SIGKILLed under load and restarted. Clients move to the surviving nodes from their server list,
//! the cluster elects another leader, and every order still ends, with `orderflow verify` passing.

use crate::chaos::{self, Deadlines, ORDERS};
use crate::harness::{Options, SAGA_DEADLINE, System};
use testkit::{Backend, NatsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_streams_killed_mid_load_loses_nothing() {
    let options = Options {
        nats_cluster: true,
        service_args: vec![
            "--stream-replicas".into(),
            "3".into(),
            "--ack-wait".into(),
            "3s".into(),
        ],
        ..Options::default()
    };
    let Some(mut system) = chaos::start_with(Backend::Sqlite, options).await else {
        return;
    };
    let js = system.jetstream().await;
    for name in ["ORDERS", "INVENTORY", "PAYMENTS", "DLQ"] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    let mut ids = chaos::place_patiently(&system, 0..80, SAGA_DEADLINE).await;

    // Kill whichever node leads ORDERS while the sagas of those orders are in flight.
    let leader = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|cluster| cluster.leader)
        .expect("ORDERS has a leader");
    drop(js);
    node(&mut system, &leader).kill();
    ids.extend(chaos::place_patiently(&system, 80..140, SAGA_DEADLINE).await);
    node(&mut system, &leader).restart().await;
    ids.extend(chaos::place_patiently(&system, 140..ORDERS, SAGA_DEADLINE).await);

    chaos::assert_nothing_lost(&system, &ids, Deadlines::NeverMissed).await;
}

fn node<'a>(system: &'a mut System, name: &str) -> &'a mut NatsServer {
    std::iter::once(&mut system.nats)
        .chain(&mut system.nats_peers)
        .find(|node| node.name() == name)
        .unwrap_or_else(|| panic!("no node {name} in the cluster"))
}
