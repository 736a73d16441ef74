//! The Redis `SessionStore`, on a `redis-server` of each test's own (never port 6379): the
//! store conformance suite (`sessionhub_testkit::conformance::store`), then what only Redis
//! shows: one round trip per operation, the key layout, undecodable records, outages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands;
use serde_json::json;
use sessionhub::error::StoreError;
use sessionhub::redis::{DEFAULT_PREFIX, IDLE_CHECK};
use sessionhub::session::SessionId;
use sessionhub::store::{Record, RedisStore, SessionStore, Updated};
use sessionhub_testkit::RedisServer;
use sessionhub_testkit::conformance::store::{
    ALICE, CREATED_MS, StoreFixture, TTL, attrs, created, incr, load, record, set, within_limit,
};

/// An absolute lifetime that `CREATED_MS` has not used up.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

async fn redis() -> StoreFixture {
    let server = RedisServer::start_async().await;
    let store = RedisStore::connect(&server.url(), DEFAULT_PREFIX)
        .await
        .unwrap();
    StoreFixture::new(Arc::new(store), server)
}

sessionhub_testkit::store_conformance!(redis);

async fn setup() -> (RedisServer, RedisStore, ::redis::aio::MultiplexedConnection) {
    let server = RedisServer::start_async().await;
    let store = RedisStore::connect(&server.url(), DEFAULT_PREFIX)
        .await
        .unwrap();
    let raw = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (server, store, raw)
}

fn key(id: &SessionId) -> String {
    format!("sessionhub:session:{{{}}}", id.as_str())
}

/// Calls per command name (`INFO commandstats`).
/// The commands `operation` made Redis execute, by name. Redis counts the commands a
/// script runs as well as the script itself, so `total_commands()` alone cannot tell one
/// round trip from several; per-command counts can: only EVALSHA/EVAL/SCRIPT/DEL/... come
/// from the client.
async fn commands_run<F: Future>(
    server: &RedisServer,
    operation: F,
) -> (HashMap<String, u64>, F::Output) {
    let before = server.commandstats().unwrap();
    let total_before = server.total_commands().unwrap();
    let output = operation.await;
    let total_after = server.total_commands().unwrap();
    let mut delta: HashMap<String, u64> = server
        .commandstats()
        .unwrap()
        .into_iter()
        .map(|(name, calls)| {
            (
                name.clone(),
                calls - before.get(&name).copied().unwrap_or(0),
            )
        })
        .filter(|(_, calls)| *calls > 0)
        .collect();
    // The INFO calls that took the measurements, but the last one.
    assert_eq!(delta.remove("info"), Some(3));
    assert_eq!(
        total_after - total_before - 1,
        delta.values().sum::<u64>(),
        "commandstats and total_commands_processed agree"
    );
    (delta, output)
}

fn calls(expected: &[(&str, u64)]) -> HashMap<String, u64> {
    expected
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_one_round_trip() {
    within_limit(async {
        let (server, store, _raw) = setup().await;
        let (id, _) = created(&store, json!({"n": 1})).await;
        // Warm up: the first call of each script costs a NOSCRIPT + SCRIPT LOAD.
        load(&store, &id).await.unwrap();
        store.update(&id, &[incr("n", 1)], TTL).await.unwrap();
        store.update_and_load(&id, &[], TTL, None).await.unwrap();
        let (scratch, _) = created(&store, json!({})).await;
        store
            .rotate(&scratch, &SessionId::generate(), &[], TTL)
            .await
            .unwrap();
        store.expires_in(&id).await.unwrap();
        store.index_add("warm-up", &id, TTL).await.unwrap();
        store.index_list("warm-up").await.unwrap();
        store.index_remove("warm-up", &id).await.unwrap();

        let (run, loaded) = commands_run(&server, store.load(&id, TTL)).await;
        assert!(loaded.unwrap().is_some());
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("hgetall", 1), ("pexpire", 1)]),
            "load"
        );

        let (run, updated) = commands_run(
            &server,
            store.update(&id, &[set("a", json!(1)), incr("n", 1)], TTL),
        )
        .await;
        assert_eq!(updated.unwrap(), Updated::Applied(vec![3]));
        // One HMGET: the version check and the current value of `n`.
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("hmget", 1), ("hset", 1), ("pexpire", 1)]),
            "update"
        );

        // What a request that writes before it reads sends: one HGETALL is the
        // existence check, the value to increment and the record returned.
        let (run, loaded) = commands_run(
            &server,
            store.update_and_load(&id, &[incr("n", 1)], TTL, Some(CENTURY)),
        )
        .await;
        let (after, values) = loaded.unwrap().unwrap();
        assert_eq!((after.attributes["n"].as_i64(), values), (Some(4), vec![4]));
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("hgetall", 1), ("hset", 1), ("pexpire", 1)]),
            "update_and_load"
        );
        let (run, loaded) = commands_run(&server, store.update_and_load(&id, &[], TTL, None)).await;
        let (after, values) = loaded.unwrap().unwrap();
        assert_eq!((after.attributes["n"].as_i64(), values), (Some(4), vec![]));
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("hgetall", 1), ("pexpire", 1)]),
            "update_and_load without changes"
        );

        let fresh = SessionId::generate();
        let (run, made) =
            commands_run(&server, store.create(&fresh, &record(json!({"x": 1})), TTL)).await;
        assert!(made.unwrap());
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("exists", 1), ("hset", 1), ("pexpire", 1)]),
            "create"
        );

        let rotated = SessionId::generate();
        let (run, outcome) = commands_run(&server, store.rotate(&fresh, &rotated, &[], TTL)).await;
        assert_eq!(outcome.unwrap(), Updated::Applied(vec![]));
        assert_eq!(
            run,
            calls(&[
                ("evalsha", 1),
                ("hmget", 1),
                ("exists", 1),
                ("rename", 1),
                ("pexpire", 1)
            ]),
            "rotate"
        );

        let (run, left) = commands_run(&server, store.expires_in(&rotated)).await;
        assert!(left.unwrap().is_some());
        assert_eq!(
            run,
            calls(&[("evalsha", 1), ("hget", 1), ("pttl", 1)]),
            "expires_in"
        );

        store.index_add(ALICE, &id, TTL).await.unwrap();
        let (run, added) = commands_run(&server, store.index_add(ALICE, &rotated, TTL)).await;
        added.unwrap();
        // TIME: deadlines are by the server's clock. ZRANGE: the latest deadline, for
        // the key's TTL.
        assert_eq!(
            run,
            calls(&[
                ("evalsha", 1),
                ("time", 1),
                ("zadd", 1),
                ("zremrangebyscore", 1),
                ("zrange", 1),
                ("pexpire", 1)
            ]),
            "index_add"
        );

        let (run, listed) = commands_run(&server, store.index_list(ALICE)).await;
        assert_eq!(listed.unwrap().len(), 2);
        assert_eq!(
            run,
            calls(&[
                ("evalsha", 1),
                ("time", 1),
                ("zremrangebyscore", 1),
                ("zrange", 1)
            ]),
            "index_list"
        );

        let (run, removed) = commands_run(&server, store.index_remove(ALICE, &id)).await;
        removed.unwrap();
        assert_eq!(
            run,
            calls(&[
                ("evalsha", 1),
                ("time", 1),
                ("zrem", 1),
                ("zremrangebyscore", 1),
                ("zrange", 1),
                ("pexpire", 1)
            ]),
            "index_remove"
        );

        let (run, deleted) = commands_run(&server, store.delete(&rotated)).await;
        assert!(deleted.unwrap());
        assert_eq!(run, calls(&[("del", 1)]), "delete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_load_as_none() {
    within_limit(async {
        let (_server, store, mut raw) = setup().await;

        // A version this code does not know: not loaded, and never written to.
        let (id, _) = created(&store, json!({"a": 1})).await;
        let () = raw.hset(key(&id), "m:v", "2").await.unwrap();
        assert_eq!(load(&store, &id).await, None);
        assert_eq!(
            store.update(&id, &[set("a", json!(2))], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(
            store
                .rotate(&id, &SessionId::generate(), &[], TTL)
                .await
                .unwrap(),
            Updated::Missing
        );
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        assert_eq!(
            store
                .update_and_load(&id, &[set("a", json!(2)), incr("n", 1)], TTL, None)
                .await
                .unwrap(),
            None
        );
        let a: String = raw.hget(key(&id), "a:a").await.unwrap();
        assert_eq!(a, "1");
        let n: Option<String> = raw.hget(key(&id), "a:n").await.unwrap();
        assert_eq!(n, None);

        let garbage: [&[(&[u8], &[u8])]; 6] = [
            &[(b"m:v", b"1"), (b"m:created", b"1"), (b"a:x", b"{not json")],
            &[(b"foo", b"bar")],
            &[(b"m:v", b"1"), (b"a:x", b"1")],
            &[(b"m:v", b"1"), (b"m:created", b"yesterday")],
            &[(b"m:v", b"1"), (b"m:created", b"1"), (b"other", b"1")],
            &[(b"m:v", b"1"), (b"m:created", b"1"), (b"a:\xff", b"1")],
        ];
        for fields in garbage {
            let id = SessionId::generate();
            let () = raw.hset_multiple(key(&id), fields).await.unwrap();
            assert_eq!(load(&store, &id).await, None, "{fields:?}");
            assert_eq!(
                store
                    .update_and_load(&id, &[incr("n", 1)], TTL, None)
                    .await
                    .unwrap(),
                None,
                "{fields:?}"
            );
            // Written to only if it carries this format's version, which is all the
            // script checks (see UPDATE_LOAD); it still reads as no session.
            let n: Option<String> = raw.hget(key(&id), "a:n").await.unwrap();
            let versioned = fields
                .iter()
                .any(|(f, v)| (*f, *v) == (&b"m:v"[..], &b"1"[..]));
            assert_eq!(n.is_some(), versioned, "{fields:?}");
            assert_eq!(load(&store, &id).await, None, "{fields:?}");
        }

        // A key of another type.
        let id = SessionId::generate();
        let () = raw.set(key(&id), "a string").await.unwrap();
        assert_eq!(load(&store, &id).await, None);
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(
            store
                .update_and_load(&id, &[incr("n", 1)], TTL, None)
                .await
                .unwrap(),
            None
        );
        let value: String = raw.get(key(&id)).await.unwrap();
        assert_eq!(value, "a string");
        assert!(!store.create(&id, &record(json!({})), TTL).await.unwrap());
        assert_eq!(store.expires_in(&id).await.unwrap(), None);

        // Unknown meta fields are room for compatible additions.
        let id = SessionId::generate();
        // Whatever bytes they hold: scripts answer with the hash as JSON text (see
        // `decode_json_reply`), which must carry bytes that are not UTF-8 through.
        let fields: &[(&[u8], &[u8])] = &[
            (b"m:v", b"1"),
            (b"m:created", b"7"),
            (b"m:future", b"x"),
            (b"m:binary", b"\xff\x00\"\\/\n"),
            (b"a:k", b"\"v\""),
        ];
        let () = raw.hset_multiple(key(&id), fields).await.unwrap();
        let expected = Record {
            attributes: attrs(json!({"k": "v"})),
            created_ms: 7,
        };
        assert_eq!(load(&store, &id).await, Some(expected.clone()));
        assert_eq!(
            store.update_and_load(&id, &[], TTL, None).await.unwrap(),
            Some((expected, vec![]))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hash_tagged_hashes_with_a_ttl() {
    within_limit(async {
        let (server, store, mut raw) = setup().await;
        let (id, _) = created(&store, json!({"n": 5, "s": "x"})).await;

        let keys: Vec<String> = raw.keys("*").await.unwrap();
        assert_eq!(keys, vec![key(&id)]);
        let tag = keys[0]
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag);
        assert_eq!(tag, Some(id.as_str()));

        let fields: HashMap<String, String> = raw.hgetall(key(&id)).await.unwrap();
        let expected: HashMap<String, String> = [
            ("m:v", "1".to_owned()),
            ("m:created", CREATED_MS.to_string()),
            ("a:n", "5".to_owned()),
            ("a:s", "\"x\"".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(fields, expected);

        let pttl: i64 = raw.pttl(key(&id)).await.unwrap();
        assert!(pttl > 0 && pttl <= TTL.as_millis() as i64, "pttl {pttl}");

        // An integer attribute is a plain integer to Redis.
        let n: i64 = raw.hincr(key(&id), "a:n", 10).await.unwrap();
        assert_eq!(n, 15);
        assert_eq!(load(&store, &id).await.unwrap().attributes["n"], json!(15));

        let short = Duration::from_secs(30);
        store.update(&id, &[incr("n", 1)], short).await.unwrap();
        let pttl: i64 = raw.pttl(key(&id)).await.unwrap();
        assert!(pttl > 0 && pttl <= 30_000, "pttl after update {pttl}");

        let new = SessionId::generate();
        store.rotate(&id, &new, &[], TTL).await.unwrap();
        let keys: Vec<String> = raw.keys("*").await.unwrap();
        assert_eq!(keys, vec![key(&new)]);
        let pttl: i64 = raw.pttl(key(&new)).await.unwrap();
        assert!(pttl > 30_000, "pttl after rotate {pttl}");

        // Another prefix keeps its own keys.
        let other = RedisStore::connect(&server.url(), "app2:").await.unwrap();
        let (id2, _) = created(&other, json!({})).await;
        let exists: bool = raw
            .exists(format!("app2:session:{{{}}}", id2.as_str()))
            .await
            .unwrap();
        assert!(exists);
        assert_eq!(load(&store, &id2).await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_and_passes() {
    within_limit(async {
        let (mut server, store, _raw) = setup().await;
        let (id, _) = created(&store, json!({})).await;
        store.ping().await.unwrap();

        server.stop();
        // Every request during an outage fails, and fast: it must not hang the request
        // for the whole reconnection schedule.
        for _ in 0..3 {
            let started = std::time::Instant::now();
            match store.load(&id, TTL).await {
                Err(StoreError::Unavailable(message)) => {
                    assert!(message.to_string().contains("redis"))
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));

        tokio::task::block_in_place(|| server.restart()).unwrap();
        // The restarted server is empty and has no scripts loaded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match store.load(&id, TTL).await {
                Ok(record) => {
                    assert_eq!(record, None);
                    break;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the store did not reconnect: {e}"),
            }
        }
        let (id, _) = created(&store, json!({"back": true})).await;
        assert!(load(&store, &id).await.is_some());
    })
    .await;
}

fn principal_key(tag: &str) -> String {
    format!("sessionhub:principal:{{{tag}}}")
}

async fn pttl(raw: &mut ::redis::aio::MultiplexedConnection, key: &str) -> i64 {
    raw.pttl(key).await.unwrap()
}

async fn members(raw: &mut ::redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    raw.zrange(key, 0, -1).await.unwrap()
}

/// The server's clock, in milliseconds since the Unix epoch.
async fn server_ms(raw: &mut ::redis::aio::MultiplexedConnection) -> f64 {
    let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(raw).await.unwrap();
    (secs * 1000 + micros / 1000) as f64
}

/// Spring Session's index sets grow forever; these must not. The key of a principal is
/// bounded by its latest entry, and goes away on its own when that lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_keys_never_outlive_their_entries() {
    within_limit(async {
        let (server, store, mut raw) = setup().await;
        let key = principal_key(ALICE);
        let (short, long) = (SessionId::generate(), SessionId::generate());

        store
            .index_add(ALICE, &short, Duration::from_millis(300))
            .await
            .unwrap();
        let kind: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kind, "zset");
        let ttl = pttl(&mut raw, &key).await;
        assert!(ttl > 0 && ttl <= 300, "pttl {ttl}");
        // The score is the deadline by the server's clock.
        let score: f64 = raw.zscore(&key, short.as_str()).await.unwrap();
        let ahead = score - server_ms(&mut raw).await;
        assert!(ahead > 0.0 && ahead <= 300.0, "deadline {ahead} ms ahead");

        // The key's TTL follows the latest deadline up, and down again.
        store
            .index_add(ALICE, &long, Duration::from_millis(1000))
            .await
            .unwrap();
        let ttl = pttl(&mut raw, &key).await;
        assert!(ttl > 300 && ttl <= 1000, "pttl {ttl}");
        store.index_remove(ALICE, &long).await.unwrap();
        let ttl = pttl(&mut raw, &key).await;
        assert!(ttl > 0 && ttl <= 300, "pttl after remove {ttl}");
        // Removing the last entry removes the key.
        store.index_add("bob", &short, TTL).await.unwrap();
        store.index_remove("bob", &short).await.unwrap();
        let exists: bool = raw.exists(principal_key("bob")).await.unwrap();
        assert!(!exists);

        // Left alone, the key goes away by itself: nothing is left in the database, as
        // Redis counts it without being asked about the key.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let keyspace = server.info("keyspace").unwrap();
            if !keyspace.contains("db0:") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keys left: {keyspace}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            server.command(&format!("EXISTS {key}")).unwrap().trim(),
            ":0"
        );

        // Beside a live entry, a lapsed one lingers only until the principal's next
        // add, list or remove.
        for principal in ["carol", "dave", "erin"] {
            store
                .index_add(principal, &short, Duration::from_millis(300))
                .await
                .unwrap();
            store.index_add(principal, &long, TTL).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let touched = SessionId::generate();
        store.index_list("carol").await.unwrap();
        store.index_add("dave", &touched, TTL).await.unwrap();
        store.index_remove("erin", &long).await.unwrap();
        assert_eq!(
            members(&mut raw, &principal_key("carol")).await,
            [long.as_str()]
        );
        assert_eq!(
            members(&mut raw, &principal_key("dave")).await,
            [long.as_str(), touched.as_str()]
        );
        let exists: bool = raw.exists(principal_key("erin")).await.unwrap();
        assert!(
            !exists,
            "erin's lapsed entry went with the removed live one"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_keys_are_tagged_by_the_encoded_principal() {
    within_limit(async {
        let (server, store, mut raw) = setup().await;
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("u-1.2_x:Y", "u-1.2_x:Y"),
            ("a{b}c", "a%7Bb%7Dc"),
            ("a%7Bb", "a%257Bb"),
            ("ü", "%C3%BC"),
            ("a b", "a%20b"),
            ("", ""),
        ];
        for (principal, tag) in cases {
            let id = SessionId::generate();
            store.index_add(principal, &id, TTL).await.unwrap();
            assert_eq!(
                members(&mut raw, &principal_key(tag)).await,
                [id.as_str()],
                "{principal:?}"
            );
        }
        let keys: Vec<String> = raw.keys("sessionhub:principal:*").await.unwrap();
        assert_eq!(keys.len(), cases.len(), "{keys:?}");
        for key in &keys {
            let tag = &key["sessionhub:principal:".len()..];
            assert!(tag.starts_with('{') && tag.ends_with('}'), "{key}");
            assert!(!tag[1..tag.len() - 1].contains(['{', '}']), "{key}");
        }

        // Another prefix keeps its own index.
        let other = RedisStore::connect(&server.url(), "app2:").await.unwrap();
        let id = SessionId::generate();
        other.index_add(ALICE, &id, TTL).await.unwrap();
        let exists: bool = raw
            .exists(format!("app2:principal:{{{ALICE}}}"))
            .await
            .unwrap();
        assert!(exists);
        assert!(!store.index_list(ALICE).await.unwrap().contains(&id));

        // Someone else's key under an index's name is an error, never overwritten.
        let foreign = principal_key("mallory");
        let () = raw.set(&foreign, "not ours").await.unwrap();
        let id = SessionId::generate();
        assert!(matches!(
            store.index_add("mallory", &id, TTL).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.index_list("mallory").await,
            Err(StoreError::Unavailable(_))
        ));
        let value: String = raw.get(&foreign).await.unwrap();
        assert_eq!(value, "not ours");
    })
    .await;
}

#[tokio::test]
async fn connecting_to_nothing_is_unavailable() {
    within_limit(async {
        let port = sessionhub_testkit::free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        assert!(matches!(
            RedisStore::connect(&url, "x:").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(
            RedisStore::connect("http://not-redis", "x:").await,
            Err(StoreError::Unavailable(_))
        ));
    })
    .await;
}

/// A store on a Redis of its own, holding one session whose `n` is 1.
async fn store_with_a_counter() -> (RedisServer, RedisStore, SessionId) {
    let server = RedisServer::start_async().await;
    let store = RedisStore::connect(&server.url(), DEFAULT_PREFIX)
        .await
        .unwrap();
    let (id, _) = created(&store, json!({"n": 1})).await;
    (server, store, id)
}

/// Closes the store's one connection from Redis' side, as Redis' `timeout` or a proxy would.
fn close_the_store_connection(server: &RedisServer) {
    let reply = server.command("CLIENT KILL TYPE normal").unwrap();
    assert!(
        reply.starts_with(":1"),
        "killed the store's connection: {reply}"
    );
}

/// A connection Redis closed (a proxy's idle limit, `CLIENT KILL`) before the store's idle
/// check would PING it costs no read: the load, the expiry and the index are sent again on
/// the next connection. A write with an increment is never sent twice: it fails once, as
/// Unavailable, and applied nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_costs_no_read() {
    within_limit(async {
        let (server, store, id) = store_with_a_counter().await;
        store
            .index_add(ALICE, &id, Duration::from_secs(60))
            .await
            .unwrap();
        let kill = || close_the_store_connection(&server);
        // Time for the FIN to reach redis-rs, as it would during an idle spell.
        let idle = || tokio::time::sleep(Duration::from_millis(50));

        kill();
        idle().await;
        assert_eq!(load(&store, &id).await.unwrap().attributes["n"], 1);
        kill();
        idle().await;
        assert!(store.expires_in(&id).await.unwrap().is_some());
        kill();
        idle().await;
        assert_eq!(
            store.index_list(ALICE).await.unwrap(),
            std::slice::from_ref(&id)
        );

        kill();
        idle().await;
        match store.update(&id, &[incr("n", 1)], TTL).await {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("an increment is sent once: {other:?}"),
        }
        assert_eq!(load(&store, &id).await.unwrap().attributes["n"], 1);
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Applied(vec![2])
        );
    })
    .await;
}

/// After the idle check's interval without a command, a connection that Redis closed
/// meanwhile (its `timeout` setting) is found by a PING and replaced before a write goes
/// out: the increment succeeds, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_an_idle_spell_goes_out_on_a_live_connection() {
    within_limit(async {
        let (server, store, id) = store_with_a_counter().await;
        close_the_store_connection(&server);
        tokio::time::sleep(IDLE_CHECK + Duration::from_millis(100)).await;
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Applied(vec![2])
        );
        assert_eq!(load(&store, &id).await.unwrap().attributes["n"], 2);
    })
    .await;
}
