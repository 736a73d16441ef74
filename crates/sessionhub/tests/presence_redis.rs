//! `RedisPresence`, on a `redis-server` of each test's own (never port 6379): the presence
//! conformance suite (`sessionhub_testkit::conformance::presence`), then what only a
//! cross-node presence shows: nodes sharing a Redis sum up, a node that stops or dies drops
//! out (its channel members reaped), concurrent changes on two nodes join and leave once,
//! and an outage is an error, not a hang.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::hub::{Hub, Online};
use sessionhub::presence::{LIVENESS_TTL, NodeChange, Presence, RedisPresence, Transition};
use sessionhub_testkit::RedisServer;
use sessionhub_testkit::conformance::presence::{
    Peer, PresenceFixture, channel_settles_at, settles_at, track, user,
};
use sessionhub_testkit::conformance::within;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Upper bound for one test; the silent death waits out a whole snapshot TTL.
const LIMIT: Duration = Duration::from_secs(60);

/// One node: its hub, its presence, and the heartbeat that publishes its snapshot.
struct Node {
    hub: Hub,
    presence: Arc<RedisPresence>,
    stop: CancellationToken,
    heartbeat: JoinHandle<()>,
}

impl Node {
    /// Node `id` on `url`, with the default prefix, its heartbeat running.
    fn start(url: &str, id: &str) -> Self {
        Self::start_with_prefix(url, id, "sessionhub:")
    }

    fn start_with_prefix(url: &str, id: &str, prefix: &str) -> Self {
        let hub = Hub::local(id);
        let presence = Arc::new(RedisPresence::new(url, prefix).expect("a valid URL"));
        let tracked: Arc<dyn Presence> = presence.clone();
        track(&hub, &tracked);
        let stop = CancellationToken::new();
        let heartbeat = presence.clone().spawn_heartbeat(hub.clone(), stop.clone());
        Self {
            hub,
            presence,
            stop,
            heartbeat,
        }
    }

    /// Stops the heartbeat gracefully: the node withdraws its snapshot.
    async fn withdraw(self) {
        self.stop.cancel();
        self.heartbeat.await.expect("the heartbeat ends");
    }

    /// What a node keeps alive while the test runs: stopped when dropped.
    fn guard(&self) -> DropGuard {
        self.stop.clone().drop_guard()
    }
}

async fn redis() -> PresenceFixture {
    let server = RedisServer::start_async().await;
    let url = server.url();
    let node = Node::start(&url, "node-a");
    // Dropped with the fixture: the heartbeat is told to stop, then the server goes.
    let guard = (node.guard(), server);
    PresenceFixture::new(node.hub, node.presence, guard).with_peer(move || {
        let peer = Node::start(&url, "node-b");
        let heartbeat = peer.heartbeat.abort_handle();
        Peer::new(peer.hub, move || heartbeat.abort(), REAPED_WITHIN)
    })
}

/// How long after a node dies a survivor has reaped it: its liveness expires, then a look
/// for dead nodes every 3 s, and slack for a loaded machine.
const REAPED_WITHIN: Duration = LIVENESS_TTL.saturating_add(Duration::from_secs(3 + 4));

sessionhub_testkit::presence_conformance!(redis);

/// A Redis of the test's own and two nodes on it.
async fn two_nodes() -> (RedisServer, Node, Node) {
    let server = RedisServer::start_async().await;
    let (a, b) = (
        Node::start(&server.url(), "node-a"),
        Node::start(&server.url(), "node-b"),
    );
    (server, a, b)
}

/// Two nodes on one Redis: each counts the connections of both, and a user connected to
/// both once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_redis_sum_up() {
    within(LIMIT, async {
        let (server, a, b) = two_nodes().await;
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let _on_a = [a.hub.connect(&alice), a.hub.connect(&alice)];
        let _on_b = [b.hub.connect(&alice), b.hub.connect(&bob)];
        settles_at(&*a.presence, 4, 2).await;
        settles_at(&*b.presence, 4, 2).await;
        // A node of another prefix is another cluster.
        let other = Node::start_with_prefix(&server.url(), "node-c", "app2:");
        let _on_other = other.hub.connect(&user("carol"));
        settles_at(&*other.presence, 1, 1).await;
        settles_at(&*a.presence, 4, 2).await;
    })
    .await;
}

/// A node that stops gracefully withdraws its snapshot: the others stop counting it at
/// once, not when its snapshot would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_withdraws_drops_out_at_once() {
    within(LIMIT, async {
        let (_server, a, b) = two_nodes().await;
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let _on_a = a.hub.connect(&alice);
        let _on_b = [b.hub.connect(&alice), b.hub.connect(&bob)];
        settles_at(&*a.presence, 3, 2).await;
        b.withdraw().await;
        let online = a.presence.online().await.unwrap();
        assert_eq!((online.online, online.users), (1, 1));
    })
    .await;
}

/// A node that dies without a word (its heartbeat gone, its snapshot left behind) is
/// counted until the snapshot expires, and then no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_silently_drops_out_within_the_snapshot_ttl() {
    within(LIMIT, async {
        let (_server, a, b) = two_nodes().await;
        let _on_a = a.hub.connect(&user("alice@example.com"));
        let _on_b = b.hub.connect(&user("bob"));
        settles_at(&*a.presence, 2, 2).await;
        b.heartbeat.abort();
        let died = Instant::now();
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            a.presence.online().await.unwrap().online,
            2,
            "not yet expired"
        );
        let deadline = died + LIVENESS_TTL + Duration::from_secs(2);
        while a.presence.online().await.unwrap().online != 1 {
            assert!(
                Instant::now() < deadline,
                "the dead node is still counted {:?} after it died",
                died.elapsed()
            );
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// With Redis down, asking is an error within seconds, not a hang; a node starts anyway
/// (it connects on first use), and counts once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_an_error_and_passes() {
    within(LIMIT, async {
        let mut server = RedisServer::start_async().await;
        server.stop();
        let node = Node::start(&server.url(), "node-a");
        let _connection = node.hub.connect(&user("alice@example.com"));
        for _ in 0..2 {
            let started = Instant::now();
            let online = node.presence.online().await;
            assert!(online.is_err(), "with Redis down: {online:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
        }
        tokio::task::block_in_place(|| server.restart()).unwrap();
        // The heartbeat retries what it could not publish, on its next beat.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match node.presence.online().await {
                Ok(Online {
                    online: 1,
                    users: 1,
                }) => break,
                other => assert!(Instant::now() < deadline, "after the restart: {other:?}"),
            }
            sleep(Duration::from_millis(50)).await;
        }
        assert!(RedisPresence::new("not a url", "sessionhub:").is_err());
    })
    .await;
}

/// A node that dies without a word leaves its users on presence channels until a survivor
/// sees its liveness expire and reaps it: then they are gone from the member lists, but a
/// user also on the survivor stays, with the survivor's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_channel_members_are_reaped() {
    within(LIMIT, async {
        let (_server, a, b) = two_nodes().await;
        let (alice, bob) = (user("alice"), user("bob"));
        let mut on_a = a.hub.connect(&alice);
        on_a.join("room:1").await.unwrap();
        let mut on_b = [b.hub.connect(&alice), b.hub.connect(&bob)];
        for connection in &mut on_b {
            connection.join("room:1").await.unwrap();
        }
        channel_settles_at(&*a.presence, "room:1", &[("alice", 2), ("bob", 1)]).await;
        b.heartbeat.abort();
        let died = Instant::now();
        let deadline = died + LIVENESS_TTL + Duration::from_secs(3 + 2);
        while a.presence.stats("room:1").await.unwrap().users != 1 {
            assert!(
                Instant::now() < deadline,
                "not reaped {:?} after",
                died.elapsed()
            );
            sleep(Duration::from_millis(100)).await;
        }
        channel_settles_at(&*a.presence, "room:1", &[("alice", 1)]).await;
        settles_at(&*a.presence, 1, 1).await;
    })
    .await;
}

/// Two nodes change one user's connections to a channel at the same moment, round after
/// round: of two first connections exactly one joins, of two last ones exactly one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_on_two_nodes_join_and_leave_once() {
    within(LIMIT, async {
        let (_server, a, b) = two_nodes().await;
        let alice = user("alice");
        let change = |node: &'static str, was, now| NodeChange {
            node,
            channel: "room:race",
            user: &alice,
            was,
            now,
            info: None,
            limit: None,
        };
        for round in 0..50 {
            let (on_a, on_b) = (change("node-a", 0, 1), change("node-b", 0, 1));
            let (x, y) = tokio::join!(a.presence.update(&on_a), b.presence.update(&on_b));
            let joins = [x.unwrap(), y.unwrap()];
            let joined = joins.iter().filter(|t| matches!(t, Transition::Joined(_)));
            assert_eq!(joined.count(), 1, "round {round}: {joins:?}");
            let (on_a, on_b) = (change("node-a", 1, 0), change("node-b", 1, 0));
            let (x, y) = tokio::join!(a.presence.update(&on_a), b.presence.update(&on_b));
            let leaves = [x.unwrap(), y.unwrap()];
            let left = leaves.iter().filter(|t| matches!(t, Transition::Left(_)));
            assert_eq!(left.count(), 1, "round {round}: {leaves:?}");
        }
        channel_settles_at(&*a.presence, "room:race", &[]).await;
    })
    .await;
}
