//! `NatsBroker`, on a `nats-server -js` of each test's own (never port 4222): the broker
//! conformance suite (`sessionhub_testkit::conformance::broker`), then what only a
//! cross-node broker can show: several nodes, selective subscription, history shared
//! between nodes, and what happens when nats-server restarts.

use std::sync::Arc;

use sessionhub::broker::{Broker, Deliver, HistoryConfig, NatsBroker, NatsBrokerConfig};
use sessionhub_testkit::NatsServer;
use sessionhub_testkit::conformance::broker::{BrokerFixture, wait_ready};

async fn nats() -> BrokerFixture {
    let server = NatsServer::start_async().await;
    let url = server.url();
    BrokerFixture::new(server, move |sink, history| {
        let url = url.clone();
        async move { nats_broker(&url, history, sink).await as Arc<dyn Broker> }
    })
}

sessionhub_testkit::broker_conformance!(nats);

/// A broker on `url` keeping `history` and delivering into `sink`, waited for until it is
/// ready.
async fn nats_broker(url: &str, history: HistoryConfig, sink: Arc<dyn Deliver>) -> Arc<NatsBroker> {
    let broker = NatsBrokerConfig::new(url)
        .unwrap()
        .history(history)
        .start(sink);
    wait_ready(&*broker).await;
    broker
}
