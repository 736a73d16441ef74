//! `RedisPresence` on a Redis Cluster of the test's own (three primaries with a replica
//! each, ports 12000..22000): the presence conformance suite
//! (`sessionhub_testkit::conformance::presence`), then several nodes publishing at once,
//! through a kill of the primary that holds presence's slot.
//!
//! Every presence key is in the `{presence}` slot, so a heartbeat's script and a count's
//! `MGET` each go to one primary.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::hub::Hub;
use sessionhub::presence::{LIVENESS_TTL, Presence, PresenceError, RedisPresence};
use sessionhub::redis::RedisConfig;
use sessionhub_testkit::RedisCluster;
use sessionhub_testkit::conformance::presence::{Peer, PresenceFixture, settles_at, track, user};
use sessionhub_testkit::conformance::within;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

/// A fault test's bound: starting the cluster (~3 s), a failover (~4 s) and the checks.
const LIMIT: Duration = Duration::from_secs(60);

/// One node: its hub and its presence, publishing until the guard is dropped.
struct Node {
    hub: Hub,
    presence: Arc<RedisPresence>,
    heartbeat: JoinHandle<()>,
    _stop: DropGuard,
}

impl Node {
    fn start(config: &RedisConfig, id: &str) -> Self {
        let hub = Hub::local(id);
        let presence = Arc::new(RedisPresence::lazy(config).unwrap());
        let tracked: Arc<dyn Presence> = presence.clone();
        track(&hub, &tracked);
        let stop = CancellationToken::new();
        let heartbeat = presence.clone().spawn_heartbeat(hub.clone(), stop.clone());
        Self {
            hub,
            presence,
            heartbeat,
            _stop: stop.drop_guard(),
        }
    }
}

async fn cluster() -> PresenceFixture {
    let (cluster, prefix) = RedisCluster::shared().await;
    let config = RedisConfig::cluster(&cluster.urls())
        .unwrap()
        .prefix(&prefix);
    let Node {
        hub,
        presence,
        _stop,
        ..
    } = Node::start(&config, "node-a");
    // Dropped with the fixture: the heartbeat is told to stop, then the cluster may go.
    PresenceFixture::new(hub, presence, (_stop, cluster)).with_peer(move || {
        let Node {
            hub,
            heartbeat,
            _stop,
            ..
        } = Node::start(&config, "node-b");
        // Aborted, and never stopped: the node withdraws nothing, as at SIGKILL.
        let _ = _stop.disarm();
        Peer::new(hub, move || heartbeat.abort(), REAPED_WITHIN)
    })
}

/// How long after a node dies a survivor has reaped it: its liveness expires, then a look
/// for dead nodes every 3 s, and slack for a loaded machine.
const REAPED_WITHIN: Duration = LIVENESS_TTL.saturating_add(Duration::from_secs(3 + 4));

sessionhub_testkit::presence_conformance!(cluster);

/// Three nodes publish; each counts everyone's connections. Then the primary holding the
/// presence slot is killed: counts fail (as unavailable) or stay right meanwhile, and once
/// its replica took over, the heartbeats publish there and a new connection is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_publishing_to_a_cluster_sum_up_through_a_failover() {
    within(LIMIT, async {
        let mut cluster = RedisCluster::start_async().await;
        let config = RedisConfig::cluster(&cluster.urls()).unwrap();
        let nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|id| Node::start(&config, id))
            .collect();
        let (alice, bob, carol) = (user("alice@example.com"), user("bob"), user("carol"));
        let _connections = [
            nodes[0].hub.connect(&alice),
            nodes[1].hub.connect(&alice),
            nodes[1].hub.connect(&bob),
            nodes[2].hub.connect(&carol),
        ];
        for node in &nodes {
            settles_at(&*node.presence, 4, 3).await;
        }

        let slot = cluster
            .slot_of("sessionhub:presence:{presence}:nodes")
            .unwrap();
        let old = cluster.primary_for_slot(slot).unwrap();
        tokio::task::block_in_place(|| cluster.kill(old)).unwrap();
        tokio::task::block_in_place(|| cluster.wait_for_failover(old, Duration::from_secs(15)))
            .unwrap();

        // Published after the failover: only a heartbeat on the new primary counts it.
        let _dave = nodes[2].hub.connect(&user("dave"));
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &nodes {
            loop {
                match node.presence.online().await {
                    Ok(counted) if (counted.online, counted.users) == (5, 4) => break,
                    Ok(_) | Err(PresenceError::Unavailable(_)) => {}
                    Err(e) => panic!("{e}"),
                }
                assert!(Instant::now() < deadline, "dave was never counted");
                sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
}
