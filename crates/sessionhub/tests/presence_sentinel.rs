//! `RedisPresence` through Redis Sentinel (a primary, a replica and a Sentinel of each
//! test's own, never port 6379): the presence conformance suite
//! (`sessionhub_testkit::conformance::presence`). Failovers are tested on the store and the
//! broker, which share presence's connection type (`store_sentinel.rs`,
//! `broker_sentinel.rs`).

use std::sync::Arc;

use sessionhub::hub::Hub;
use sessionhub::presence::RedisPresence;
use sessionhub::redis::RedisConfig;
use sessionhub_testkit::RedisSentinel;
use sessionhub_testkit::conformance::presence::PresenceFixture;
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
    PresenceFixture::new(hub, presence, guard)
}

sessionhub_testkit::presence_conformance!(sentinel);
