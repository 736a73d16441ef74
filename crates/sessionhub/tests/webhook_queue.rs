//! The webhook queue's backends: memory, redb, Redis, Redis Cluster and Sentinel each pass the queue conformance
//! suite (`sessionhub_testkit::conformance::webhook`); then what only one does: redb keeps
//! queued events across a reopen (a restart), Redis across a new connection.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::redis::RedisConfig;
use sessionhub::webhook::{Event, EventKind, LocalQueue, Queue, RedisQueue};
use sessionhub_testkit::RedisServer;
use sessionhub_testkit::conformance::webhook::QueueFixture;

mod memory {
    use super::*;

    async fn memory() -> QueueFixture {
        QueueFixture::new(
            Box::new(|_, bound, _| {
                Box::pin(async move { Arc::new(LocalQueue::new(bound)) as Arc<dyn Queue> })
            }),
            false,
            (),
        )
    }

    sessionhub_testkit::webhook_queue_conformance!(memory);
}

mod redb {
    use super::*;

    async fn redb() -> QueueFixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhooks.redb");
        QueueFixture::new(
            Box::new(move |_, bound, _| {
                let path = path.clone();
                Box::pin(async move {
                    Arc::new(LocalQueue::open(&path, bound).unwrap()) as Arc<dyn Queue>
                })
            }),
            false,
            dir,
        )
    }

    sessionhub_testkit::webhook_queue_conformance!(redb);
}

mod redis {
    use super::*;

    async fn redis() -> QueueFixture {
        let server = RedisServer::start_async().await;
        let config = RedisConfig::new(&server.url()).unwrap();
        QueueFixture::new(
            Box::new(move |consumer, bound, lease| {
                let queue = RedisQueue::lazy(&config, consumer, bound, lease).unwrap();
                Box::pin(async move { Arc::new(queue) as Arc<dyn Queue> })
            }),
            true,
            server,
        )
    }

    sessionhub_testkit::webhook_queue_conformance!(redis);
}

/// On a Redis Cluster (one shared by the checks, each under its own prefix): the queue's
/// keys share the `{webhooks}` hash tag, so every script stays in one slot.
mod cluster {
    use sessionhub_testkit::RedisCluster;

    use super::*;

    async fn cluster() -> QueueFixture {
        let (cluster, prefix) = RedisCluster::shared().await;
        let config = RedisConfig::cluster(&cluster.urls())
            .unwrap()
            .prefix(&prefix);
        QueueFixture::new(
            Box::new(move |consumer, bound, lease| {
                let queue = RedisQueue::lazy(&config, consumer, bound, lease).unwrap();
                Box::pin(async move { Arc::new(queue) as Arc<dyn Queue> })
            }),
            true,
            cluster,
        )
    }

    sessionhub_testkit::webhook_queue_conformance!(cluster);
}

/// Through Redis Sentinel (a primary, a replica, three Sentinels of each check's own).
mod sentinel {
    use sessionhub_testkit::RedisSentinel;

    use super::*;

    async fn sentinel() -> QueueFixture {
        let redis = RedisSentinel::start_lean().await;
        let config = RedisConfig::sentinel(&redis.sentinel_addrs(), redis.master_name()).unwrap();
        QueueFixture::new(
            Box::new(move |consumer, bound, lease| {
                let queue = RedisQueue::lazy(&config, consumer, bound, lease).unwrap();
                Box::pin(async move { Arc::new(queue) as Arc<dyn Queue> })
            }),
            true,
            redis,
        )
    }

    sessionhub_testkit::webhook_queue_conformance!(sentinel);
}

fn event(user: &str) -> Event {
    Event::new(
        EventKind::Offline,
        "node-a",
        serde_json::json!({"user": user}),
    )
}

/// What was queued, retried or claimed-but-unacked when the process stopped is all there
/// when the file is opened again, attempts included, and due at once.
#[tokio::test]
async fn a_redb_queue_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhooks.redb");
    let (a, b, c) = (event("a"), event("b"), event("c"));
    {
        let queue = LocalQueue::open(&path, 10).unwrap();
        for e in [&a, &b, &c] {
            assert!(queue.push(e).await.unwrap());
        }
        let claimed = queue.claim(2).await.unwrap();
        let acked = claimed.iter().find(|x| x.event.id == a.id).unwrap();
        queue.ack(acked).await.unwrap();
        let retried = claimed.iter().find(|x| x.event.id == b.id).unwrap();
        queue
            .retry(retried, Duration::from_secs(3600))
            .await
            .unwrap();
        // c stays unclaimed; the queue is dropped here as a killed process leaves it.
    }
    let queue = LocalQueue::open(&path, 10).unwrap();
    let mut back = queue.claim(10).await.unwrap();
    back.sort_by_key(|x| x.attempts);
    let got: Vec<(&str, u32)> = back
        .iter()
        .map(|x| (x.event.id.as_str(), x.attempts))
        .collect();
    assert_eq!(got, vec![(c.id.as_str(), 0), (b.id.as_str(), 1)]);
}

/// A held event journaled before a restart is still held after it: not due before its
/// grace is over, and a comeback after the restart still cancels it.
#[tokio::test]
async fn a_redb_queue_keeps_held_events_held_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhooks.redb");
    let (kept, cancelled) = (event("kept"), event("cancelled"));
    let grace = Duration::from_millis(800);
    {
        let queue = LocalQueue::open(&path, 10).unwrap();
        assert!(queue.hold(&kept, "kept", grace).await.unwrap());
        assert!(queue.hold(&cancelled, "cancelled", grace).await.unwrap());
    }
    let queue = LocalQueue::open(&path, 10).unwrap();
    assert!(queue.claim(10).await.unwrap().is_empty(), "still held");
    assert!(
        queue.cancel("cancelled").await.unwrap(),
        "still cancellable"
    );
    tokio::time::sleep(grace).await;
    let due = queue.claim(10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|c| c.event.id.as_str()).collect();
    assert_eq!(ids, [kept.id.as_str()]);
    queue.ack(&due[0]).await.unwrap();
    drop(queue);
    let queue = LocalQueue::open(&path, 10).unwrap();
    assert!(
        queue.claim(10).await.unwrap().is_empty(),
        "the cancel was journaled"
    );
}
