use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Broker, Deliver, Receipt};
use crate::error::BrokerError;

/// The broker of a single node: a publish is a direct call into the local sink.
pub struct LocalBroker {
    sink: Arc<dyn Deliver>,
}

impl LocalBroker {
    /// A broker that delivers every publish to `sink`.
    pub fn new(sink: Arc<dyn Deliver>) -> Self {
        Self { sink }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, channel: &str, payload: Utf8Bytes) -> Result<Receipt, BrokerError> {
        let connections = self.sink.deliver(channel, &payload);
        Ok(Receipt {
            nodes: usize::from(connections > 0),
            connections: Some(connections),
        })
    }

    // The sink already knows which channels have connections; there is nothing to join.
    fn subscribe(&self, _channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _channel: &str) {}
}
