//! The queue of a cluster: a Redis stream read by one consumer group, so each event goes to
//! one node; a node that dies holding claimed events leaves them pending, and another takes
//! them over (XAUTOCLAIM) once they have been idle for the lease. Events given back for a
//! retry wait in a sorted set until due; held events (a grace) wait in a sorted set of their
//! keys and a hash of their bodies, where a cancel can still find them. Every key shares the `{webhooks}` hash tag, so every
//! script works on Redis Cluster too; Sentinel and Cluster come with [`RedisConfig`].

use std::time::Duration;

use ::redis::ScriptInvocation;
use async_trait::async_trait;

use super::{Claimed, Event, Queue, QueueError};
use crate::redis::{Managed, Reconnect, RedisConfig, scripts};
use crate::store::now_ms;

/// The consumer group every node reads in.
const GROUP: &str = "deliver";

/// Webhook events in a Redis stream shared by every node.
pub struct RedisQueue {
    connection: Managed,
    stream: String,
    delayed: String,
    held: String,
    held_events: String,
    consumer: String,
    bound: usize,
    lease: Duration,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: ::redis::RedisError) -> QueueError {
    QueueError::new("redis", e)
}

impl RedisQueue {
    /// The queue on `config`'s Redis, read as `consumer` (the node id), holding at most
    /// `bound` events; an event claimed by a consumer that neither acks nor retries it
    /// within `lease` (longer than a delivery can take) goes to another. Connects on first
    /// use.
    pub fn lazy(
        config: &RedisConfig,
        consumer: &str,
        bound: usize,
        lease: Duration,
    ) -> Result<Self, QueueError> {
        let connection = Managed::lazy(config, Reconnect::PRESENCE).map_err(unavailable)?;
        let keys = config.keys();
        Ok(Self {
            connection,
            stream: keys.webhooks("stream"),
            delayed: keys.webhooks("delayed"),
            held: keys.webhooks("held"),
            held_events: keys.webhooks("held_events"),
            consumer: consumer.to_owned(),
            bound,
            lease,
        })
    }

    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        invocation
            .invoke_async::<T>(&mut connection)
            .await
            .map_err(|e| {
                self.connection.failed(&e);
                unavailable(e)
            })
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn push(&self, event: &Event) -> Result<bool, QueueError> {
        let json = serde_json::to_string(event).expect("events serialize");
        let mut invocation = scripts::WEBHOOK_PUSH.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.delayed)
            .key(&self.held)
            .arg(self.bound)
            .arg(json);
        let queued: i64 = self.invoke(&invocation).await?;
        Ok(queued == 1)
    }

    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError> {
        let mut invocation = scripts::WEBHOOK_CLAIM.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.delayed)
            .key(&self.held)
            .key(&self.held_events)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.lease.as_millis() as u64)
            .arg(max)
            .arg(now_ms());
        let flat: Vec<String> = self.invoke(&invocation).await?;
        let mut claimed = Vec::with_capacity(flat.len() / 3);
        for entry in flat.chunks_exact(3) {
            let Ok(event) = serde_json::from_str::<Event>(&entry[1]) else {
                tracing::warn!(entry = %entry[0], "dropping an undecodable webhook event");
                metrics::counter!("sessionhub_webhooks_dropped_total", "reason" => "undecodable")
                    .increment(1);
                let mut ack = scripts::WEBHOOK_ACK.prepare_invoke();
                ack.key(&self.stream).arg(GROUP).arg(&entry[0]);
                let _: i64 = self.invoke(&ack).await?;
                continue;
            };
            claimed.push(Claimed {
                event,
                attempts: entry[2].parse().unwrap_or(0),
                receipt: entry[0].clone(),
            });
        }
        Ok(claimed)
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), QueueError> {
        let mut invocation = scripts::WEBHOOK_ACK.prepare_invoke();
        invocation
            .key(&self.stream)
            .arg(GROUP)
            .arg(&claimed.receipt);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    async fn retry(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError> {
        let json = serde_json::to_string(&claimed.event).expect("events serialize");
        let mut invocation = scripts::WEBHOOK_RETRY.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.delayed)
            .arg(GROUP)
            .arg(&claimed.receipt)
            .arg(now_ms() + delay.as_millis() as u64)
            .arg(format!("{}:{json}", claimed.attempts + 1));
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    async fn hold(&self, event: &Event, key: &str, grace: Duration) -> Result<bool, QueueError> {
        let json = serde_json::to_string(event).expect("events serialize");
        let mut invocation = scripts::WEBHOOK_HOLD.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.delayed)
            .key(&self.held)
            .key(&self.held_events)
            .arg(self.bound)
            .arg(key)
            .arg(now_ms() + grace.as_millis() as u64)
            .arg(json);
        let queued: i64 = self.invoke(&invocation).await?;
        Ok(queued == 1)
    }

    async fn cancel(&self, key: &str) -> Result<bool, QueueError> {
        let mut invocation = scripts::WEBHOOK_CANCEL.prepare_invoke();
        invocation.key(&self.held).key(&self.held_events).arg(key);
        let cancelled: i64 = self.invoke(&invocation).await?;
        Ok(cancelled == 1)
    }
}
