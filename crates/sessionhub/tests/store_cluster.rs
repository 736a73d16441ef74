//! The Redis `SessionStore` on a Redis Cluster of the test's own (three primaries with a
//! replica each, ports 12000..22000): the store conformance suite
//! (`sessionhub_testkit::conformance::store`), then what only a cluster shows: a rotation
//! whose ids live on different primaries (three steps, `store/redis/rotation.rs`) raced by
//! updates and by a logout, a primary killed and replaced by its replica, and a slot moved
//! to another primary while its sessions are used.

use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands;
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use serde_json::json;
use sessionhub::error::StoreError;
use sessionhub::redis::{IDLE_CHECK, RedisConfig};
use sessionhub::session::SessionId;
use sessionhub::store::{RedisStore, SessionStore, Updated};
use sessionhub_testkit::conformance::store::{
    StoreFixture, TTL, created, incr, load, record, remove,
};
use sessionhub_testkit::conformance::within;
use sessionhub_testkit::{RedisCluster, redis_command};
use tokio::time::{Instant, sleep};

/// A fault test's bound: starting the cluster (~3 s), a failover (~4 s) and the checks.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a killed primary's replica may take to serve its slots: the fixture's failover
/// takes ~4 s (`cluster-node-timeout` 2 s, then the election).
const FAILOVER: Duration = Duration::from_secs(15);
/// How long the store may take to serve again once the cluster has settled after a failover.
const FOLLOW: Duration = Duration::from_secs(3);

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::cluster(&cluster.urls()).unwrap()
}

async fn cluster() -> StoreFixture {
    let (cluster, prefix) = RedisCluster::shared().await;
    let store = RedisStore::lazy(&config(&cluster).prefix(&prefix)).unwrap();
    StoreFixture::new(Arc::new(store), cluster)
}

sessionhub_testkit::store_conformance!(cluster);

/// A cluster of this test's own, a store on it, and a raw connection for looking inside.
async fn setup() -> (RedisCluster, RedisStore, ClusterConnection) {
    let cluster = RedisCluster::start_async().await;
    let store = RedisStore::lazy(&config(&cluster)).unwrap();
    let raw = ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    (cluster, store, raw)
}

fn key(id: &SessionId) -> String {
    format!("sessionhub:session:{{{}}}", id.as_str())
}

/// The primary that serves session `id`'s slot now.
fn primary_of(cluster: &RedisCluster, id: &SessionId) -> u16 {
    let slot = cluster.slot_of(&key(id)).unwrap();
    cluster.primary_for_slot(slot).unwrap()
}

/// A fresh id whose slot another primary than `other`'s serves.
fn id_elsewhere(cluster: &RedisCluster, other: &SessionId) -> SessionId {
    let taken = primary_of(cluster, other);
    loop {
        let id = SessionId::generate();
        if primary_of(cluster, &id) != taken {
            return id;
        }
    }
}

/// Waits until the primary of session `id`'s slot has handed every write so far to its
/// replica, so that a failover cannot lose them (replication is asynchronous). `WAIT` counts
/// the writes of the connection it is sent on, so a write of the same slot goes first.
async fn replicated(raw: &mut ClusterConnection, id: &SessionId) {
    let () = raw
        .set(format!("probe:{{{}}}", id.as_str()), "x")
        .await
        .unwrap();
    let replicas: i64 = ::redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(raw)
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the replica did not take the writes");
}

/// Whether `key` exists, asked of the cluster directly.
async fn exists(raw: &mut ClusterConnection, key: &str) -> bool {
    raw.exists(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_moves_a_session_to_another_primary() {
    within(LIMIT, async {
        let (cluster, store, mut raw) = setup().await;
        let (old, _) = created(&store, json!({"n": 1, "keep": "x", "drop": true})).await;
        let new = id_elsewhere(&cluster, &old);
        let changes = [incr("n", 2), incr("m", 5), remove("drop")];
        assert_eq!(
            store.rotate(&old, &new, &changes, TTL).await.unwrap(),
            Updated::Applied(vec![3, 5])
        );
        assert_eq!(load(&store, &old).await, None);
        assert_eq!(
            load(&store, &new).await,
            Some(record(json!({"n": 3, "keep": "x", "m": 5})))
        );
        let left = store.expires_in(&new).await.unwrap().unwrap();
        assert!(left > TTL - Duration::from_secs(5), "{left:?}");
        // Nothing is left behind in the old id's slot.
        let moving = format!("{}:moving", key(&old));
        assert!(!exists(&mut raw, &key(&old)).await);
        assert!(
            !exists(&mut raw, &moving).await,
            "the moving key was not deleted"
        );

        // A taken target on another primary: refused, and the old id is put back as it was.
        let (a, record_a) = created(&store, json!({"who": "a"})).await;
        let b = id_elsewhere(&cluster, &a);
        assert!(
            store
                .create(&b, &record(json!({"who": "b"})), TTL)
                .await
                .unwrap()
        );
        assert!(matches!(
            store.rotate(&a, &b, &[incr("n", 1)], TTL).await,
            Err(StoreError::RotationTargetTaken)
        ));
        assert_eq!(load(&store, &a).await, Some(record_a));
        assert_eq!(load(&store, &b).await, Some(record(json!({"who": "b"}))));
        assert!(!exists(&mut raw, &format!("{}:moving", key(&a))).await);
    })
    .await;
}

/// Increments of the old id racing its rotation: each one acknowledged (`Applied`) is in
/// the new session, and each one after the rotation finds no session (`Missing`); none is
/// lost, none counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_racing_a_rotation_are_carried_over_or_refused() {
    within(LIMIT, async {
        let (cluster, store, _raw) = setup().await;
        let store = Arc::new(store);
        for round in 0..10 {
            let (old, _) = created(&*store, json!({"n": 0})).await;
            let new = id_elsewhere(&cluster, &old);
            let writers: Vec<_> = (0..4)
                .map(|_| {
                    let (store, old) = (store.clone(), old.clone());
                    tokio::spawn(async move {
                        let mut applied = 0;
                        loop {
                            match store.update(&old, &[incr("n", 1)], TTL).await.unwrap() {
                                Updated::Applied(_) => applied += 1,
                                Updated::Missing => return applied,
                            }
                        }
                    })
                })
                .collect();
            sleep(Duration::from_millis(20 + 5 * round)).await;
            let rotated = store.rotate(&old, &new, &[incr("n", 1000)], TTL).await;
            let mut acknowledged = 0;
            for writer in writers {
                acknowledged += writer.await.unwrap();
            }
            let Ok(Updated::Applied(values)) = rotated else {
                panic!("round {round}: {rotated:?}");
            };
            assert!(
                acknowledged > 0,
                "round {round}: the writers never ran first"
            );
            assert_eq!(values, [1000 + acknowledged], "round {round}");
            let after = load(&*store, &new).await.unwrap();
            assert_eq!(
                after.attributes["n"],
                json!(1000 + acknowledged),
                "round {round}"
            );
        }
    })
    .await;
}

/// A logout (`delete`) racing a rotation: either it deleted the session, and the rotation
/// found none and neither id brings it back; or it deleted nothing, as after a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_racing_a_rotation_never_resurrects_the_session() {
    within(LIMIT, async {
        let (cluster, store, mut raw) = setup().await;
        let store = Arc::new(store);
        let (mut deleted_first, mut rotated_first) = (0, 0);
        for round in 0..40 {
            let (old, _) = created(&*store, json!({"n": 1})).await;
            let new = id_elsewhere(&cluster, &old);
            let logout = {
                let (store, old) = (store.clone(), old.clone());
                tokio::spawn(async move {
                    // Spread the two around each other.
                    sleep(Duration::from_micros(200 * (round % 8))).await;
                    store.delete(&old).await.unwrap()
                })
            };
            let rotated = store
                .rotate(&old, &new, &[incr("n", 1)], TTL)
                .await
                .unwrap();
            let deleted = logout.await.unwrap();
            assert_eq!(load(&*store, &old).await, None, "round {round}");
            if deleted {
                deleted_first += 1;
                assert_eq!(rotated, Updated::Missing, "round {round}");
                assert_eq!(
                    load(&*store, &new).await,
                    None,
                    "round {round}: resurrected"
                );
            } else {
                rotated_first += 1;
                assert_eq!(rotated, Updated::Applied(vec![2]), "round {round}");
                assert!(load(&*store, &new).await.is_some(), "round {round}");
            }
            assert!(!exists(&mut raw, &format!("{}:moving", key(&old))).await);
        }
        // Both orders happened, or the race was not tested.
        assert!(
            deleted_first > 0 && rotated_first > 0,
            "{deleted_first} / {rotated_first}"
        );
    })
    .await;
}

/// A primary killed: while its slots have no primary the store answers `Unavailable` (and
/// nothing else), each time within the request budget; once its replica took over, the
/// sessions it held, replicated before the kill (`WAIT`), are there, and the store writes
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outlive_a_killed_primary() {
    within(LIMIT, async {
        let (mut cluster, store, mut raw) = setup().await;
        let store = Arc::new(store);
        let (id, _) = created(&*store, json!({"n": 1})).await;
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Applied(vec![2])
        );
        let old = primary_of(&cluster, &id);
        replicated(&mut raw, &id).await;

        // Another session on the same primary, used throughout the outage.
        let probe = loop {
            let (probe, _) = created(&*store, json!({})).await;
            if primary_of(&cluster, &probe) == old {
                break probe;
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let prober = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = 0;
                while !stop.is_cancelled() {
                    let asked = Instant::now();
                    match store.load(&probe, TTL).await {
                        Ok(_) => {}
                        Err(StoreError::Unavailable(_)) => failures += 1,
                        Err(e) => panic!("not an outage: {e}"),
                    }
                    let took = asked.elapsed();
                    assert!(took < Duration::from_secs(2), "a request held {took:?}");
                    sleep(Duration::from_millis(20)).await;
                }
                failures
            })
        };

        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.kill(old)).unwrap();
        let new = tokio::task::block_in_place(|| cluster.wait_for_failover(old, FAILOVER)).unwrap();
        let settled = killed.elapsed();
        let updated = update_once_back(&store, &id).await;
        let served = killed.elapsed();
        stop.cancel();
        let failures = prober.await.unwrap();
        assert!(failures > 0, "the outage was not seen");
        // Neither lost nor counted twice, and on the promoted replica.
        assert_eq!(updated, Updated::Applied(vec![3]));
        assert_eq!(primary_of(&cluster, &id), new);
        eprintln!(
            "failover settled {settled:?} after the kill, the store served again {served:?} \
             after it; {failures} requests were unavailable meanwhile"
        );
    })
    .await;
}

/// A rotation whose second step meets the new id's primary just killed: the caller is told
/// the store was unavailable, and afterwards at most one of the two ids is a session (put
/// back if the cluster refused the step, withdrawn if its outcome is unknown), never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_onto_a_dead_primary_never_leaves_both_ids_valid() {
    within(LIMIT, async {
        let (mut cluster, store, _raw) = setup().await;
        let (old, _) = created(&store, json!({"n": 1})).await;
        let new = id_elsewhere(&cluster, &old);
        let dead = primary_of(&cluster, &new);
        tokio::task::block_in_place(|| cluster.kill(dead)).unwrap();
        let outcome = store.rotate(&old, &new, &[incr("n", 1)], TTL).await;
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        tokio::task::block_in_place(|| cluster.wait_for_failover(dead, FAILOVER)).unwrap();
        let deadline = Instant::now() + FOLLOW;
        let (at_old, at_new) = loop {
            match (store.load(&old, TTL).await, store.load(&new, TTL).await) {
                (Ok(at_old), Ok(at_new)) => break (at_old, at_new),
                (Err(e), _) | (_, Err(e)) => {
                    assert!(Instant::now() < deadline, "still unavailable: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(
            !(at_old.is_some() && at_new.is_some()),
            "both ids are valid"
        );
        eprintln!(
            "after the failed rotation: old id {}, new id {}",
            if at_old.is_some() {
                "restored"
            } else {
                "withdrawn"
            },
            if at_new.is_some() {
                "written"
            } else {
                "absent"
            },
        );
    })
    .await;
}

/// A store with no traffic through a failover (a node its balancer took out of rotation):
/// its readiness check (`ping`) passes again once the replica took over, without a session
/// request having shown it the new slot map first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_returns_after_a_failover_without_traffic() {
    within(LIMIT, async {
        let (mut cluster, store, _raw) = setup().await;
        store.ping().await.unwrap();
        let old = cluster.primaries().unwrap()[0];
        tokio::task::block_in_place(|| cluster.kill(old)).unwrap();
        tokio::task::block_in_place(|| cluster.wait_for_failover(old, FAILOVER)).unwrap();
        let deadline = Instant::now() + FOLLOW;
        while let Err(e) = store.ping().await {
            assert!(Instant::now() < deadline, "still not ready: {e}");
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Scripts on a primary that never loaded them: a node restarted after a failover (empty,
/// back as a replica) is promoted by a second failover while the first successor is dead.
/// The store's `EVALSHA` meets `NOSCRIPT` there, loads the script and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_without_the_scripts_serves() {
    within(LIMIT, async {
        let (mut cluster, store, mut raw) = setup().await;
        let (id, _) = created(&store, json!({"n": 1})).await;
        // Replication is asynchronous: killed at once, the primary may take the new session
        // with it (seen in CI: the update then found none).
        replicated(&mut raw, &id).await;
        let first = primary_of(&cluster, &id);
        tokio::task::block_in_place(|| cluster.kill(first)).unwrap();
        let second =
            tokio::task::block_in_place(|| cluster.wait_for_failover(first, FAILOVER)).unwrap();
        tokio::task::block_in_place(|| cluster.restart(first)).unwrap();
        assert_eq!(
            update_once_back(&store, &id).await,
            Updated::Applied(vec![2])
        );
        replicated(&mut raw, &id).await;

        tokio::task::block_in_place(|| cluster.kill(second)).unwrap();
        let third =
            tokio::task::block_in_place(|| cluster.wait_for_failover(second, FAILOVER)).unwrap();
        assert_eq!(third, first);
        assert_eq!(
            update_once_back(&store, &id).await,
            Updated::Applied(vec![3])
        );
        // It did load the script there: no NOSCRIPT, no test.
        let mut node = ::redis::Client::open(format!("redis://127.0.0.1:{first}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let stats: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut node)
            .await
            .unwrap();
        assert!(stats.contains("cmdstat_script|load:"), "{stats}");
    })
    .await;
}

/// Increments `n` of `id` as soon as the store serves it again, within [`FOLLOW`];
/// meanwhile every failure must be `Unavailable`.
async fn update_once_back(store: &RedisStore, id: &SessionId) -> Updated {
    let deadline = Instant::now() + FOLLOW;
    loop {
        match store.update(id, &[incr("n", 1)], TTL).await {
            Ok(updated) => return updated,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "still unavailable: {e}");
                sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not an outage: {e}"),
        }
    }
}

/// A command that ran but whose reply was lost with its connection is not sent again: an
/// increment counts once, and the caller is told the store was unavailable. (redis-rs'
/// cluster client would resend it after reconnecting, up to 16 times.) The reply is lost by
/// the server itself: with a 1-byte output buffer limit it closes a connection whose reply
/// does not fit in its static buffer (16 KB), after running the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_reply_is_lost_runs_once() {
    within(LIMIT, async {
        let (cluster, store, _raw) = setup().await;
        let big = "x".repeat(20_000);
        let (id, _) = created(&store, json!({"n": 0, "big": big})).await;
        let port = primary_of(&cluster, &id);
        let limit = |value: &str| {
            let command = format!("CONFIG SET client-output-buffer-limit \"normal {value}\"");
            assert_eq!(redis_command(port, &command).unwrap().trim(), "+OK");
        };
        limit("1 1 0");
        let outcome = store.update_and_load(&id, &[incr("n", 1)], TTL, None).await;
        limit("0 0 0");
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{:?}",
            outcome.map(|r| r.map(|(_, values)| values))
        );
        let after = load(&store, &id).await.unwrap();
        assert_eq!(
            after.attributes["n"],
            json!(1),
            "the increment ran more than once"
        );
    })
    .await;
}

/// A slot moved to another primary (`MIGRATING`/`IMPORTING`, keys moved in batches, then
/// the new owner announced) while a session in it is read and written: no request fails,
/// and every increment is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_in_a_migrating_slot_are_served() {
    within(LIMIT, async {
        let (cluster, store, mut raw) = setup().await;
        let store = Arc::new(store);
        let (id, _) = created(&*store, json!({"n": 0})).await;
        let slot = cluster.slot_of(&key(&id)).unwrap();
        // Other keys in the slot make the move take several batches, so that the session
        // is served from both sides while the slot moves (`ASK`).
        let tag = id.as_str();
        for chunk in 0..20 {
            let mut pipe = ::redis::pipe();
            for i in 0..100 {
                pipe.set(format!("filler:{{{tag}}}:{chunk}:{i}"), "x")
                    .ignore();
            }
            let () = pipe.query_async(&mut raw).await.unwrap();
        }
        let from = cluster.primary_for_slot(slot).unwrap();
        let to = *cluster
            .primaries()
            .unwrap()
            .iter()
            .find(|&&p| p != from)
            .unwrap();

        let stop = tokio_util::sync::CancellationToken::new();
        let worker = {
            let (store, id, stop) = (store.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut applied = 0;
                while !stop.is_cancelled() {
                    match store.update(&id, &[incr("n", 1)], TTL).await {
                        Ok(Updated::Applied(values)) => {
                            applied += 1;
                            assert_eq!(values, [applied]);
                        }
                        other => panic!("during the move, after {applied}: {other:?}"),
                    }
                    assert!(load(&*store, &id).await.is_some());
                }
                applied
            })
        };
        sleep(Duration::from_millis(50)).await;
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.migrate_slot(slot, to).unwrap();
            cluster
        })
        .await
        .unwrap();
        sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let applied = worker.await.unwrap();
        assert_eq!(cluster.primary_for_slot(slot).unwrap(), to);
        let after = load(&*store, &id).await.unwrap();
        assert_eq!(after.attributes["n"], json!(applied));
    })
    .await;
}

/// After the idle check's interval without a command, connections the primaries closed
/// meanwhile (their `timeout` setting) are found by a PING and replaced before a write goes
/// out: the increment succeeds, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_an_idle_spell_goes_out_on_live_connections() {
    within(LIMIT, async {
        let (cluster, store, _raw) = setup().await;
        let (id, _) = created(&store, json!({"n": 1})).await;
        for port in cluster.primaries().unwrap() {
            let reply = redis_command(port, "CLIENT KILL TYPE normal").unwrap();
            assert!(!reply.starts_with(":0"), "killed the connections: {reply}");
        }
        tokio::time::sleep(IDLE_CHECK + Duration::from_millis(100)).await;
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Applied(vec![2])
        );
        assert_eq!(load(&store, &id).await.unwrap().attributes["n"], json!(2));
    })
    .await;
}
