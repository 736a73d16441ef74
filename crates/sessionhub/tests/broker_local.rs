//! The embedded `LocalBroker`: the broker conformance suite
//! (`sessionhub_testkit::conformance::broker`).

use std::sync::Arc;

use sessionhub::broker::{Broker, LocalBroker};
use sessionhub_testkit::conformance::broker::BrokerFixture;

async fn local() -> BrokerFixture {
    BrokerFixture::new((), |sink, history| async move {
        Arc::new(LocalBroker::with_history(sink, history)) as Arc<dyn Broker>
    })
}

sessionhub_testkit::broker_conformance!(local);
