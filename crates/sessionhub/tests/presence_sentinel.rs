//! `RedisPresence` through Redis Sentinel (a primary, a replica and a Sentinel of each
//! test's own, never port 6379): the presence conformance suite
//! (`sessionhub_testkit::conformance::presence`), then a primary demoted while it stays up.
//! A killed primary is tested on the store, which shares presence's connection type
//! (`store_sentinel.rs`).

use std::sync::Arc;
use std::time::Duration;

use sessionhub::hub::Hub;
use sessionhub::presence::{LIVENESS_TTL, Presence, PresenceError, RedisPresence};
use sessionhub::redis::RedisConfig;
use sessionhub_testkit::RedisSentinel;
use sessionhub_testkit::conformance::presence::{Peer, PresenceFixture, settles_at, track, user};
use sessionhub_testkit::conformance::within;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

async fn sentinel() -> PresenceFixture {
    let redis = RedisSentinel::start_lean().await;
    let config = RedisConfig::sentinel(&redis.sentinel_addrs(), redis.master_name()).unwrap();
    let hub = Hub::local("node-a");
    let presence = Arc::new(RedisPresence::lazy(&config).unwrap());
    let stop = CancellationToken::new();
    presence.clone().spawn_heartbeat(hub.clone(), stop.clone());
    // Dropped with the fixture: the heartbeat is told to stop, then the servers go.
    let guard = (stop.drop_guard(), redis);
    PresenceFixture::new(hub, presence, guard).with_peer(move || {
        let hub = Hub::local("node-b");
        let presence = Arc::new(RedisPresence::lazy(&config).unwrap());
        let tracked: Arc<dyn Presence> = presence.clone();
        track(&hub, &tracked);
        let heartbeat = presence.spawn_heartbeat(hub.clone(), CancellationToken::new());
        // Aborted, not stopped: the node withdraws nothing, as at SIGKILL.
        Peer::new(hub, move || heartbeat.abort(), REAPED_WITHIN)
    })
}

/// How long after a node dies a survivor has reaped it: its liveness expires, then a look
/// for dead nodes every 3 s, and slack for a loaded machine.
const REAPED_WITHIN: Duration = LIVENESS_TTL.saturating_add(Duration::from_secs(3 + 4));

sessionhub_testkit::presence_conformance!(sentinel);

/// A primary demoted while it stays up drops its clients' connections (pub/sub ones
/// excepted): presence must then ask the Sentinels again rather than reconnect to the old
/// address, where its heartbeat's writes would be refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_left_for_the_new_one() {
    within(Duration::from_secs(60), async {
        let redis = RedisSentinel::start_async().await;
        let config = RedisConfig::sentinel(&redis.sentinel_addrs(), redis.master_name()).unwrap();
        let hub = Hub::local("node-a");
        let presence = Arc::new(RedisPresence::lazy(&config).unwrap());
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        presence.clone().spawn_heartbeat(hub.clone(), stop);
        let _alice = hub.connect(&user("alice"));
        settles_at(&*presence, 1, 1).await;

        let old = redis.current_primary_port().unwrap();
        redis.failover().unwrap();
        redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        redis
            .wait_for_demotion(old, Duration::from_secs(30))
            .unwrap();
        // Written after the demotion: only a heartbeat on the new primary counts it. The
        // demotion drops connections, so a count may fail once meanwhile.
        let _bob = hub.connect(&user("bob"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match presence.online().await {
                Ok(counted) if (counted.online, counted.users) == (2, 2) => break,
                Ok(_) | Err(PresenceError::Unavailable(_)) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "bob was never counted");
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
