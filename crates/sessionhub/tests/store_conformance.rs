//! One conformance suite for every `SessionStore` backend: the in-memory store, the same
//! with a redb journal, and Redis (a `redis-server` of each test's own, never port 6379).
//!
//! Every check runs against every backend (see `every_backend!`), so a behaviour the session
//! layer relies on cannot hold for one backend and silently not for another. Backend-specific
//! properties (journal reopening, Redis round trips and key layout) follow at the end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sessionhub::error::StoreError;
use sessionhub::session::SessionId;
use sessionhub::store::{
    Attributes, Change, MemoryStore, Record, RedisStore, SessionStore, Updated,
};
use sessionhub_testkit::RedisServer;

/// Long enough never to expire during a check that is not about expiry.
const TTL: Duration = Duration::from_secs(600);
/// Upper bound for one test, setup included.
const LIMIT: Duration = Duration::from_secs(60);
const CREATED_MS: u64 = 1_700_000_000_123;

/// A store and whatever must live as long as it (temp dir, redis-server).
struct Fixture {
    store: Arc<dyn SessionStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn run<M, MF, C, CF>(make: M, check: C)
where
    M: FnOnce() -> MF,
    MF: Future<Output = Fixture>,
    C: FnOnce(Arc<dyn SessionStore>) -> CF,
    CF: Future<Output = ()>,
{
    tokio::time::timeout(LIMIT, async {
        let fixture = make().await;
        check(fixture.store.clone()).await;
        drop(fixture);
    })
    .await
    .expect("the test did not finish in time");
}

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server starts")
}

mod backends {
    use super::*;

    pub(crate) async fn memory() -> Fixture {
        Fixture {
            store: Arc::new(MemoryStore::new()),
            _guard: Box::new(()),
        }
    }

    pub(crate) async fn redb() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::open(&dir.path().join("sessions.redb"), Duration::from_millis(50))
            .unwrap();
        Fixture {
            store: Arc::new(store),
            _guard: Box::new(dir),
        }
    }

    pub(crate) async fn redis() -> Fixture {
        let server = start_redis().await;
        let store = RedisStore::connect(&server.url(), RedisStore::DEFAULT_PREFIX)
            .await
            .unwrap();
        Fixture {
            store: Arc::new(store),
            _guard: Box::new(server),
        }
    }
}

fn attrs(value: Value) -> Attributes {
    value.as_object().expect("a JSON object").clone()
}

fn record(value: Value) -> Record {
    Record {
        attributes: attrs(value),
        created_ms: CREATED_MS,
    }
}

fn set(name: &str, value: Value) -> (String, Change) {
    (name.to_owned(), Change::Set(value))
}

fn remove(name: &str) -> (String, Change) {
    (name.to_owned(), Change::Remove)
}

fn incr(name: &str, delta: i64) -> (String, Change) {
    (name.to_owned(), Change::Incr(delta))
}

/// Creates a fresh session holding `value`.
async fn created(store: &dyn SessionStore, value: Value) -> (SessionId, Record) {
    let id = SessionId::generate();
    let record = record(value);
    assert!(store.create(&id, &record, TTL).await.unwrap());
    (id, record)
}

async fn load(store: &dyn SessionStore, id: &SessionId) -> Option<Record> {
    store.load(id, TTL).await.unwrap()
}

mod checks {
    use super::*;

    pub(crate) async fn load_missing(store: Arc<dyn SessionStore>) {
        assert_eq!(load(&*store, &SessionId::generate()).await, None);
    }

    pub(crate) async fn create_then_load_round_trips(store: Arc<dyn SessionStore>) {
        let (id, record) = created(
            &*store,
            json!({
                "name": "Ada",
                "n": 42,
                "neg": -7,
                "beyond_f64": 9_007_199_254_740_993_i64,
                "max": i64::MAX,
                "min": i64::MIN,
                "u64": u64::MAX,
                "float": 3.5,
                "yes": true,
                "nothing": null,
                "list": [1, "two", {"three": 3}],
                "nested": {"a": {"b": []}},
                "": "empty name",
                "a:b {x} m:v": "name with separators",
                "ünï": "çødé ✓",
            }),
        )
        .await;
        assert_eq!(load(&*store, &id).await, Some(record));

        let (empty, record) = created(&*store, json!({})).await;
        assert_eq!(load(&*store, &empty).await, Some(record));
    }

    pub(crate) async fn create_refuses_taken_id(store: Arc<dyn SessionStore>) {
        let (id, first) = created(&*store, json!({"owner": "first"})).await;
        let second = record(json!({"owner": "second", "extra": 1}));
        assert!(!store.create(&id, &second, TTL).await.unwrap());
        assert_eq!(load(&*store, &id).await, Some(first));
    }

    pub(crate) async fn update_applies_only_given_attributes(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({"a": 1, "b": "x", "c": true, "d": [1]})).await;
        let outcome = store
            .update(
                &id,
                &[
                    set("b", json!("y")),
                    remove("c"),
                    remove("never-there"),
                    set("e", json!({"k": "v"})),
                    set("f", json!(1)),
                    set("f", json!(2)),
                    set("g", json!(1)),
                    remove("g"),
                ],
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Updated::Applied(vec![]));
        assert_eq!(
            load(&*store, &id).await,
            Some(record(
                json!({"a": 1, "b": "y", "d": [1], "e": {"k": "v"}, "f": 2})
            ))
        );
        // An empty batch only touches the record.
        assert_eq!(
            store.update(&id, &[], TTL).await.unwrap(),
            Updated::Applied(vec![])
        );
    }

    pub(crate) async fn concurrent_updates_keep_every_attribute(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({"base": 0})).await;
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .update(&id, &[set(&format!("k{i}"), json!(i))], TTL)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Updated::Applied(vec![]));
        }
        let mut expected = attrs(json!({"base": 0}));
        for i in 0..50 {
            expected.insert(format!("k{i}"), json!(i));
        }
        assert_eq!(load(&*store, &id).await.unwrap().attributes, expected);
    }

    pub(crate) async fn concurrent_increments_are_never_lost(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({})).await;
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move { store.update(&id, &[incr("n", 1)], TTL).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Updated::Applied(values) => seen.extend(values),
                Updated::Missing => panic!("the session vanished"),
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=200).collect::<Vec<i64>>(),
            "each increment saw its own value"
        );
        assert_eq!(
            load(&*store, &id).await.unwrap().attributes["n"],
            json!(200)
        );
    }

    pub(crate) async fn increments_are_exact(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({"null": null, "five": 5, "gone": 1})).await;
        let outcome = store
            .update(
                &id,
                &[
                    incr("fresh", 3),
                    incr("fresh", -10),
                    incr("null", 2),
                    set("five", json!(40)),
                    incr("five", 2),
                    remove("gone"),
                    incr("gone", 1),
                ],
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Updated::Applied(vec![3, -7, 2, 42, 1]));
        assert_eq!(
            load(&*store, &id).await.unwrap().attributes,
            attrs(json!({"fresh": -7, "null": 2, "five": 42, "gone": 1}))
        );

        // Around 2^53 (where doubles stop being exact), the 1e9 boundary, zero and the ends
        // of the range.
        let cases: &[(i64, i64, i64)] = &[
            (9_007_199_254_740_993, 2, 9_007_199_254_740_995),
            (-9_007_199_254_740_993, -2, -9_007_199_254_740_995),
            (999_999_999, 1, 1_000_000_000),
            (-1_000_000_000, 1, -999_999_999),
            (-1, 1_000_000_001, 1_000_000_000),
            (1, -1_000_000_001, -1_000_000_000),
            (-5, 3, -2),
            (5, -5, 0),
            (i64::MAX - 1, 1, i64::MAX),
            (i64::MIN + 1, -1, i64::MIN),
            (i64::MAX, i64::MIN, -1),
            (i64::MIN, i64::MAX, -1),
            (i64::MIN, 0, i64::MIN),
            (
                123_456_789_012_345_678,
                876_543_210_987_654_321,
                999_999_999_999_999_999,
            ),
        ];
        for &(start, delta, end) in cases {
            let (id, _) = created(&*store, json!({"v": start})).await;
            assert_eq!(
                store.update(&id, &[incr("v", delta)], TTL).await.unwrap(),
                Updated::Applied(vec![end]),
                "{start} + {delta}"
            );
            assert_eq!(
                load(&*store, &id).await.unwrap().attributes["v"],
                json!(end),
                "{start} + {delta}"
            );
        }
    }

    pub(crate) async fn update_of_missing_does_not_resurrect(store: Arc<dyn SessionStore>) {
        let id = SessionId::generate();
        assert_eq!(
            store.update(&id, &[set("x", json!(1))], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(load(&*store, &id).await, None);
        // Nothing was left behind under the id: creating it still succeeds.
        let fresh = record(json!({"fresh": true}));
        assert!(store.create(&id, &fresh, TTL).await.unwrap());
        assert_eq!(load(&*store, &id).await, Some(fresh));
    }

    pub(crate) async fn delete_then_update_is_missing(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({"a": 1})).await;
        assert!(store.delete(&id).await.unwrap());
        assert!(!store.delete(&id).await.unwrap());
        assert_eq!(
            store.update(&id, &[set("a", json!(2))], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(load(&*store, &id).await, None);
        let new = SessionId::generate();
        assert_eq!(
            store.rotate(&id, &new, &[], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(load(&*store, &new).await, None);
        assert_eq!(load(&*store, &id).await, None);
    }

    pub(crate) async fn incr_of_non_integer_changes_nothing(store: Arc<dyn SessionStore>) {
        let original = json!({
            "text": "abc",
            "numeric_text": "12",
            "float": 1.5,
            "integral_float": 2.0,
            "bool": true,
            "list": [1],
            "object": {"n": 1},
            "u64": u64::MAX,
            "n": 5,
        });
        let (id, record) = created(&*store, original).await;
        for name in [
            "text",
            "numeric_text",
            "float",
            "integral_float",
            "bool",
            "list",
            "object",
            "u64",
        ] {
            let batch = [
                set("x", json!(1)),
                incr("n", 1),
                incr(name, 1),
                set("y", json!(2)),
            ];
            match store.update(&id, &batch, TTL).await {
                Err(StoreError::NotAnInteger(failed)) => assert_eq!(failed, name),
                other => panic!("incr of {name}: expected NotAnInteger, got {other:?}"),
            }
            assert_eq!(
                load(&*store, &id).await.as_ref(),
                Some(&record),
                "after {name}"
            );
        }
        // The same when the batch itself made the attribute a non-integer.
        match store
            .update(&id, &[set("n", json!("five")), incr("n", 1)], TTL)
            .await
        {
            Err(StoreError::NotAnInteger(failed)) => assert_eq!(failed, "n"),
            other => panic!("expected NotAnInteger, got {other:?}"),
        }
        assert_eq!(load(&*store, &id).await, Some(record));
    }

    pub(crate) async fn incr_overflow_changes_nothing(store: Arc<dyn SessionStore>) {
        let (id, record) =
            created(&*store, json!({"max": i64::MAX, "min": i64::MIN, "n": 0})).await;
        let batches: [(&str, Vec<(String, Change)>); 4] = [
            (
                "max",
                vec![set("x", json!(1)), incr("n", 1), incr("max", 1)],
            ),
            (
                "min",
                vec![incr("n", 1), incr("min", -1), set("x", json!(1))],
            ),
            ("n", vec![incr("n", i64::MAX), incr("n", 1)]),
            ("n", vec![incr("n", i64::MIN), incr("n", -1)]),
        ];
        for (name, batch) in batches {
            match store.update(&id, &batch, TTL).await {
                Err(StoreError::Overflow(failed)) => assert_eq!(failed, name),
                other => panic!("expected Overflow of {name}, got {other:?}"),
            }
            assert_eq!(load(&*store, &id).await.as_ref(), Some(&record));
        }
    }

    pub(crate) async fn rotate_moves_the_record(store: Arc<dyn SessionStore>) {
        let (old, _) = created(&*store, json!({"a": 1, "n": 1, "drop": true})).await;
        let new = SessionId::generate();
        let outcome = store
            .rotate(
                &old,
                &new,
                &[set("b", json!(2)), incr("n", 5), remove("drop")],
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Updated::Applied(vec![6]));
        assert_eq!(load(&*store, &old).await, None);
        assert_eq!(
            load(&*store, &new).await,
            Some(record(json!({"a": 1, "b": 2, "n": 6})))
        );
        assert_eq!(
            store
                .update(&old, &[set("a", json!(9))], TTL)
                .await
                .unwrap(),
            Updated::Missing
        );
        assert_eq!(load(&*store, &old).await, None);

        let (missing, elsewhere) = (SessionId::generate(), SessionId::generate());
        assert_eq!(
            store.rotate(&missing, &elsewhere, &[], TTL).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(load(&*store, &elsewhere).await, None);
        assert_eq!(load(&*store, &missing).await, None);

        // A failing change leaves the record where it was, untouched.
        let (kept, record) = created(&*store, json!({"s": "x"})).await;
        let target = SessionId::generate();
        match store
            .rotate(&kept, &target, &[set("t", json!(1)), incr("s", 1)], TTL)
            .await
        {
            Err(StoreError::NotAnInteger(name)) => assert_eq!(name, "s"),
            other => panic!("expected NotAnInteger, got {other:?}"),
        }
        assert_eq!(load(&*store, &kept).await, Some(record));
        assert_eq!(load(&*store, &target).await, None);
    }

    pub(crate) async fn rotate_refuses_a_taken_target(store: Arc<dyn SessionStore>) {
        let (a, record_a) = created(&*store, json!({"who": "a"})).await;
        let (b, record_b) = created(&*store, json!({"who": "b"})).await;
        assert!(
            store
                .rotate(&a, &b, &[set("who", json!("c"))], TTL)
                .await
                .is_err()
        );
        assert_eq!(load(&*store, &a).await, Some(record_a));
        assert_eq!(load(&*store, &b).await, Some(record_b));
    }

    pub(crate) async fn records_expire(store: Arc<dyn SessionStore>) {
        let ttl = Duration::from_millis(300);
        let id = SessionId::generate();
        let record = record(json!({"a": 1}));
        assert!(store.create(&id, &record, ttl).await.unwrap());
        assert_eq!(store.load(&id, ttl).await.unwrap(), Some(record.clone()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.load(&id, ttl).await.unwrap(), None);
        assert_eq!(
            store.update(&id, &[incr("n", 1)], ttl).await.unwrap(),
            Updated::Missing
        );
        assert_eq!(store.load(&id, ttl).await.unwrap(), None);
        // An expired id is free again.
        assert!(store.create(&id, &record, ttl).await.unwrap());
    }

    pub(crate) async fn load_slides_expiry(store: Arc<dyn SessionStore>) {
        let ttl = Duration::from_millis(400);
        let id = SessionId::generate();
        let record = record(json!({"a": 1}));
        assert!(store.create(&id, &record, ttl).await.unwrap());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(store.load(&id, ttl).await.unwrap(), Some(record.clone()));
        }
        // Sliding, not immortality: left alone, it expires.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(store.load(&id, ttl).await.unwrap(), None);
    }

    pub(crate) async fn update_slides_expiry(store: Arc<dyn SessionStore>) {
        let ttl = Duration::from_millis(400);
        let id = SessionId::generate();
        assert!(store.create(&id, &record(json!({})), ttl).await.unwrap());
        for i in 1..=5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                store.update(&id, &[incr("n", 1)], ttl).await.unwrap(),
                Updated::Applied(vec![i])
            );
        }
        assert_eq!(
            store.load(&id, ttl).await.unwrap().unwrap().attributes["n"],
            json!(5)
        );
    }
}

macro_rules! conformance {
    ($backend:ident: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::run(super::backends::$backend, super::checks::$check).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($check:ident),* $(,)?) => {
        conformance!(memory: $($check),*);
        conformance!(redb: $($check),*);
        conformance!(redis: $($check),*);
    };
}

every_backend!(
    load_missing,
    create_then_load_round_trips,
    create_refuses_taken_id,
    update_applies_only_given_attributes,
    concurrent_updates_keep_every_attribute,
    concurrent_increments_are_never_lost,
    increments_are_exact,
    update_of_missing_does_not_resurrect,
    delete_then_update_is_missing,
    incr_of_non_integer_changes_nothing,
    incr_overflow_changes_nothing,
    rotate_moves_the_record,
    rotate_refuses_a_taken_target,
    records_expire,
    load_slides_expiry,
    update_slides_expiry,
);

mod redb_journal {
    use super::*;

    /// The journal is locked while a store has it open, and the flush task may hold the store
    /// for a moment after the last handle is dropped.
    async fn reopen(path: &std::path::Path) -> MemoryStore {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match MemoryStore::open(path, Duration::from_secs(3600)) {
                Ok(store) => return store,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("reopening the journal: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_after_persist_keeps_records() {
        tokio::time::timeout(LIMIT, async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sessions.redb");
            // A flush interval longer than the test: only persist() writes.
            let store = MemoryStore::open(&path, Duration::from_secs(3600)).unwrap();
            // Let the first (immediate) tick of the flush task pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (kept, _) = created(&store, json!({"a": 1, "n": 1})).await;
            let (deleted, _) = created(&store, json!({"b": 2})).await;
            let (old, _) = created(&store, json!({"c": 3})).await;
            let new = SessionId::generate();
            store
                .update(&kept, &[set("a", json!("one")), incr("n", 2)], TTL)
                .await
                .unwrap();
            assert!(store.delete(&deleted).await.unwrap());
            store.rotate(&old, &new, &[], TTL).await.unwrap();
            store.persist().await.unwrap();
            drop(store);

            let store = reopen(&path).await;
            assert_eq!(
                load(&store, &kept).await,
                Some(record(json!({"a": "one", "n": 3})))
            );
            assert_eq!(load(&store, &deleted).await, None);
            assert_eq!(load(&store, &old).await, None);
            assert_eq!(load(&store, &new).await, Some(record(json!({"c": 3}))));
            assert_eq!(store.len(), 2);
        })
        .await
        .expect("the test did not finish in time");
    }
}

mod redis_only {
    use super::*;

    use ::redis::AsyncCommands;

    async fn setup() -> (RedisServer, RedisStore, ::redis::aio::MultiplexedConnection) {
        let server = start_redis().await;
        let store = RedisStore::connect(&server.url(), RedisStore::DEFAULT_PREFIX)
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
    fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
        let info = server.info("commandstats").unwrap();
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.strip_prefix("calls=")?.split(',').next()?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    /// The commands `operation` made Redis execute, by name. Redis counts the commands a
    /// script runs as well as the script itself, so `total_commands()` alone cannot tell one
    /// round trip from several; per-command counts can: only EVALSHA/EVAL/SCRIPT/DEL/... come
    /// from the client.
    async fn commands_run<F: Future>(
        server: &RedisServer,
        operation: F,
    ) -> (HashMap<String, u64>, F::Output) {
        let before = command_calls(server);
        let total_before = server.total_commands().unwrap();
        let output = operation.await;
        let total_after = server.total_commands().unwrap();
        let mut delta: HashMap<String, u64> = command_calls(server)
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
        tokio::time::timeout(LIMIT, async {
            let (server, store, _raw) = setup().await;
            let (id, _) = created(&store, json!({"n": 1})).await;
            // Warm up: the first call of each script costs a NOSCRIPT + SCRIPT LOAD.
            load(&store, &id).await.unwrap();
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap();
            let (scratch, _) = created(&store, json!({})).await;
            store
                .rotate(&scratch, &SessionId::generate(), &[], TTL)
                .await
                .unwrap();

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
            // HGET: the version check, and the current value of `n`.
            assert_eq!(
                run,
                calls(&[("evalsha", 1), ("hget", 2), ("hset", 1), ("pexpire", 1)]),
                "update"
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
            let (run, outcome) =
                commands_run(&server, store.rotate(&fresh, &rotated, &[], TTL)).await;
            assert_eq!(outcome.unwrap(), Updated::Applied(vec![]));
            assert_eq!(
                run,
                calls(&[
                    ("evalsha", 1),
                    ("hget", 1),
                    ("exists", 1),
                    ("rename", 1),
                    ("pexpire", 1)
                ]),
                "rotate"
            );

            let (run, deleted) = commands_run(&server, store.delete(&rotated)).await;
            assert!(deleted.unwrap());
            assert_eq!(run, calls(&[("del", 1)]), "delete");
        })
        .await
        .expect("the test did not finish in time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_records_load_as_none() {
        tokio::time::timeout(LIMIT, async {
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
            let a: String = raw.hget(key(&id), "a:a").await.unwrap();
            assert_eq!(a, "1");

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
            }

            // A key of another type.
            let id = SessionId::generate();
            let () = raw.set(key(&id), "a string").await.unwrap();
            assert_eq!(load(&store, &id).await, None);
            assert_eq!(
                store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
                Updated::Missing
            );
            assert!(!store.create(&id, &record(json!({})), TTL).await.unwrap());

            // Unknown meta fields are room for compatible additions.
            let id = SessionId::generate();
            let fields: &[(&str, &str)] = &[
                ("m:v", "1"),
                ("m:created", "7"),
                ("m:future", "x"),
                ("a:k", "\"v\""),
            ];
            let () = raw.hset_multiple(key(&id), fields).await.unwrap();
            assert_eq!(
                load(&store, &id).await,
                Some(Record {
                    attributes: attrs(json!({"k": "v"})),
                    created_ms: 7
                })
            );
        })
        .await
        .expect("the test did not finish in time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_are_hash_tagged_hashes_with_a_ttl() {
        tokio::time::timeout(LIMIT, async {
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
        .await
        .expect("the test did not finish in time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_unavailable_and_passes() {
        tokio::time::timeout(LIMIT, async {
            let (mut server, store, _raw) = setup().await;
            let (id, _) = created(&store, json!({})).await;
            store.ping().await.unwrap();

            server.stop();
            // Every request during an outage fails, and fast: it must not hang the request
            // for the whole reconnection schedule.
            for _ in 0..3 {
                let started = std::time::Instant::now();
                match store.load(&id, TTL).await {
                    Err(StoreError::Unavailable(message)) => assert!(message.contains("redis")),
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
        .await
        .expect("the test did not finish in time");
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_unavailable() {
        tokio::time::timeout(LIMIT, async {
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
        .await
        .expect("the test did not finish in time");
    }
}
