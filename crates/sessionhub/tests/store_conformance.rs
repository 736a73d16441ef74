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
/// An absolute lifetime that `CREATED_MS` has not used up.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
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
    within_limit(async {
        let fixture = make().await;
        check(fixture.store.clone()).await;
        drop(fixture);
    })
    .await;
}

/// Runs `test`, failing it if it takes longer than `LIMIT`.
async fn within_limit(test: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, test)
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

/// A principal as the session layer uses them.
const ALICE: &str = "alice@example.com";

/// `index_list` as text: `SessionId`'s `Debug` is redacted, which would make a failing
/// comparison unreadable.
async fn listed(store: &dyn SessionStore, principal: &str) -> Vec<String> {
    ids(&store.index_list(principal).await.unwrap())
}

fn ids<I: std::borrow::Borrow<SessionId>>(ids: &[I]) -> Vec<String> {
    ids.iter()
        .map(|id| id.borrow().as_str().to_owned())
        .collect()
}

/// Lets the clock pass a millisecond boundary or more, so that the next index deadline is
/// strictly later than the previous one (deadlines are whole milliseconds).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
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
                "quote\"back\\slash/": "\u{0}\u{1f}\"\\/\u{7f}\u{2028}",
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

    pub(crate) async fn index_lists_by_deadline(store: Arc<dyn SessionStore>) {
        let added: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
        for id in &added {
            store.index_add(ALICE, id, TTL).await.unwrap();
            tick().await;
        }
        let [a, b, c] = [&added[0], &added[1], &added[2]].map(SessionId::as_str);
        assert_eq!(listed(&*store, ALICE).await, [a, b, c]);
        // Listing changes nothing.
        assert_eq!(listed(&*store, ALICE).await, [a, b, c]);

        // A refresh moves the id to the end: least recently refreshed first.
        store.index_add(ALICE, &added[0], TTL).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, [b, c, a]);

        // The order is by deadline, not by when the id was added.
        let short = SessionId::generate();
        store.index_add(ALICE, &short, TTL / 2).await.unwrap();
        let short = short.as_str();
        assert_eq!(listed(&*store, ALICE).await, [short, b, c, a]);
        // Re-adding with a shorter keep moves an id forward, and never duplicates it.
        store.index_add(ALICE, &added[2], TTL / 4).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, [c, short, b, a]);
    }

    pub(crate) async fn index_remove_forgets(store: Arc<dyn SessionStore>) {
        let (a, b) = (SessionId::generate(), SessionId::generate());
        store.index_add(ALICE, &a, TTL).await.unwrap();
        tick().await;
        store.index_add(ALICE, &b, TTL).await.unwrap();
        store.index_add("bob", &b, TTL).await.unwrap();

        store.index_remove(ALICE, &a).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, ids(&[&b]));
        // Removing what is not there is not an error, and touches nothing else.
        store.index_remove(ALICE, &a).await.unwrap();
        store.index_remove("nobody", &b).await.unwrap();
        store.index_remove("bob", &a).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, ids(&[&b]));

        // The same id under two principals: removing it from one leaves the other.
        store.index_remove(ALICE, &b).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, Vec::<String>::new());
        assert_eq!(listed(&*store, "bob").await, ids(&[&b]));

        // A principal emptied out can be indexed again.
        store.index_add(ALICE, &a, TTL).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, ids(&[&a]));
    }

    pub(crate) async fn index_of_unknown_principal_is_empty(store: Arc<dyn SessionStore>) {
        assert_eq!(listed(&*store, "nobody").await, Vec::<String>::new());
        assert_eq!(listed(&*store, "").await, Vec::<String>::new());
    }

    /// The principal is opaque: any string is its own principal, including ones that look
    /// like another's encoding, or that contain what a key layout might treat specially.
    pub(crate) async fn index_principals_are_opaque(store: Arc<dyn SessionStore>) {
        let long = "x".repeat(1000);
        let principals = [
            "alice",
            "Alice",
            "alice ",
            "",
            "{",
            "}",
            "a{b}c",
            "a%7Bb%7Dc",
            "a%257Bb%257Dc",
            "%",
            "ü ∀ 😀",
            r"tab\tnew\nline",
            "tab\tnew\nline",
            "*",
            "sessionhub:session:{x}",
            &long,
        ];
        let mut expected = Vec::new();
        for principal in principals {
            let id = SessionId::generate();
            store.index_add(principal, &id, TTL).await.unwrap();
            expected.push((principal, id));
        }
        for (principal, id) in &expected {
            assert_eq!(
                listed(&*store, principal).await,
                ids(&[id]),
                "{principal:?}"
            );
        }
        for (principal, id) in &expected {
            store.index_remove(principal, id).await.unwrap();
            assert_eq!(
                listed(&*store, principal).await,
                Vec::<String>::new(),
                "{principal:?}"
            );
        }
    }

    pub(crate) async fn index_entries_lapse(store: Arc<dyn SessionStore>) {
        let keep = Duration::from_millis(300);
        let (lapsing, kept, lone) = (
            SessionId::generate(),
            SessionId::generate(),
            SessionId::generate(),
        );
        store.index_add(ALICE, &lapsing, keep).await.unwrap();
        store.index_add(ALICE, &kept, TTL).await.unwrap();
        store.index_add("bob", &lone, keep).await.unwrap();
        // Added by `index_add` only (never listed) before lapsing: pruned by the next add.
        let (carol_old, carol_new) = (SessionId::generate(), SessionId::generate());
        store.index_add("carol", &carol_old, keep).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, ids(&[&lapsing, &kept]));
        assert_eq!(listed(&*store, "bob").await, ids(&[&lone]));

        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(listed(&*store, ALICE).await, ids(&[&kept]));
        assert_eq!(listed(&*store, "bob").await, Vec::<String>::new());
        store.index_add("carol", &carol_new, TTL).await.unwrap();
        assert_eq!(listed(&*store, "carol").await, ids(&[&carol_new]));
        // A lapsed id can be indexed anew, and then counts from now.
        store.index_add(ALICE, &lapsing, TTL).await.unwrap();
        assert_eq!(listed(&*store, ALICE).await, ids(&[&kept, &lapsing]));

        // Nothing kept for no time.
        let id = SessionId::generate();
        store.index_add("dave", &id, Duration::ZERO).await.unwrap();
        assert_eq!(listed(&*store, "dave").await, Vec::<String>::new());
    }

    /// What the session layer relies on: an entry refreshed while its session is used
    /// outlives its first deadline.
    pub(crate) async fn index_refresh_keeps_entries(store: Arc<dyn SessionStore>) {
        let keep = Duration::from_millis(400);
        let (used, idle) = (SessionId::generate(), SessionId::generate());
        store.index_add(ALICE, &idle, keep).await.unwrap();
        store.index_add(ALICE, &used, keep).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store.index_add(ALICE, &used, keep).await.unwrap();
        }
        assert_eq!(listed(&*store, ALICE).await, ids(&[&used]));
    }

    pub(crate) async fn expires_in_missing_is_none(store: Arc<dyn SessionStore>) {
        assert_eq!(
            store.expires_in(&SessionId::generate()).await.unwrap(),
            None
        );
        let (id, _) = created(&*store, json!({})).await;
        assert!(store.delete(&id).await.unwrap());
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        // Asking does not bring anything into existence.
        assert_eq!(load(&*store, &id).await, None);
    }

    pub(crate) async fn expires_in_is_the_ttl_left(store: Arc<dyn SessionStore>) {
        let (id, _) = created(&*store, json!({})).await;
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(
            left <= TTL && left > TTL - Duration::from_secs(5),
            "{left:?}"
        );

        // Sliding by load, update and rotate shows.
        let short = Duration::from_secs(2);
        let id = SessionId::generate();
        assert!(store.create(&id, &record(json!({})), short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left <= Duration::from_millis(1700), "{left:?}");
        load(&*store, &id).await.unwrap();
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left > TTL - Duration::from_secs(5), "after load {left:?}");
        store.update(&id, &[], short).await.unwrap();
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left <= short, "after update {left:?}");
        let new = SessionId::generate();
        store.rotate(&id, &new, &[], TTL).await.unwrap();
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        let left = store.expires_in(&new).await.unwrap().unwrap();
        assert!(left > short, "after rotate {left:?}");
    }

    /// Looking is not using: a session only asked about expires on time.
    pub(crate) async fn expires_in_does_not_slide(store: Arc<dyn SessionStore>) {
        let ttl = Duration::from_millis(400);
        let id = SessionId::generate();
        assert!(store.create(&id, &record(json!({})), ttl).await.unwrap());
        let started = std::time::Instant::now();
        let mut last = ttl;
        let mut seen = 0;
        while started.elapsed() < Duration::from_millis(800) {
            match store.expires_in(&id).await.unwrap() {
                Some(left) => {
                    assert!(left <= last, "{left:?} after {last:?}");
                    last = left;
                    seen += 1;
                }
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen > 0, "the fresh session was seen");
        // Past the TTL by now, however the loop ended.
        tokio::time::sleep(ttl.saturating_sub(started.elapsed())).await;
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        assert_eq!(store.load(&id, ttl).await.unwrap(), None);
    }

    pub(crate) async fn update_and_load_returns_the_record_after_the_changes(
        store: Arc<dyn SessionStore>,
    ) {
        let (id, _) = created(
            &*store,
            json!({"a": 1, "b": "x", "c": true, "n": 5, "big": 9_007_199_254_740_993_i64}),
        )
        .await;
        let outcome = store
            .update_and_load(
                &id,
                &[
                    set("b", json!("y")),
                    remove("c"),
                    remove("never-there"),
                    incr("n", 2),
                    set("e", json!({"k": [1, 2.5]})),
                    incr("fresh", -3),
                    incr("n", 1),
                    incr("big", 2),
                ],
                TTL,
                None,
            )
            .await
            .unwrap();
        let expected = record(json!({
            "a": 1,
            "b": "y",
            "n": 8,
            "e": {"k": [1, 2.5]},
            "fresh": -3,
            "big": 9_007_199_254_740_995_i64,
        }));
        assert_eq!(
            outcome,
            Some((expected.clone(), vec![7, -3, 8, 9_007_199_254_740_995]))
        );
        // What it returned is what the store holds.
        assert_eq!(load(&*store, &id).await, Some(expected.clone()));

        // One change of each kind (a backend may take a shorter path for a single change).
        let mut expected = expected;
        let single: [(_, &[i64]); 5] = [
            (set("s", json!([true])), &[]),
            (remove("a"), &[]),
            (incr("n", -10), &[-2]),
            (incr("new", 5), &[5]),
            (incr("big", i64::MAX - 9_007_199_254_740_995), &[i64::MAX]),
        ];
        for (change, values) in single {
            let changes = [change];
            let outcome = store
                .update_and_load(&id, &changes, TTL, None)
                .await
                .unwrap();
            match &changes[0] {
                (name, Change::Set(value)) => {
                    expected.attributes.insert(name.clone(), value.clone());
                }
                (name, Change::Remove) => {
                    expected.attributes.remove(name);
                }
                (name, Change::Incr(_)) => {
                    expected.attributes.insert(name.clone(), json!(values[0]));
                }
            }
            assert_eq!(
                outcome,
                Some((expected.clone(), values.to_vec())),
                "{changes:?}"
            );
        }
        assert_eq!(load(&*store, &id).await, Some(expected.clone()));

        // No changes: a load.
        assert_eq!(
            store.update_and_load(&id, &[], TTL, None).await.unwrap(),
            Some((expected, vec![]))
        );
        let (empty, record) = created(&*store, json!({})).await;
        assert_eq!(
            store.update_and_load(&empty, &[], TTL, None).await.unwrap(),
            Some((record, vec![]))
        );
    }

    pub(crate) async fn update_and_load_of_missing_does_not_resurrect(
        store: Arc<dyn SessionStore>,
    ) {
        let id = SessionId::generate();
        for changes in [vec![set("x", json!(1))], vec![incr("n", 1)], vec![]] {
            assert_eq!(
                store
                    .update_and_load(&id, &changes, TTL, Some(TTL))
                    .await
                    .unwrap(),
                None,
                "{changes:?}"
            );
        }
        assert_eq!(load(&*store, &id).await, None);
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        let fresh = record(json!({"fresh": true}));
        assert!(store.create(&id, &fresh, TTL).await.unwrap());

        // Deleted, then written: still gone.
        assert!(store.delete(&id).await.unwrap());
        assert_eq!(
            store
                .update_and_load(&id, &[incr("n", 1)], TTL, None)
                .await
                .unwrap(),
            None
        );
        assert_eq!(load(&*store, &id).await, None);
    }

    pub(crate) async fn update_and_load_failures_change_nothing(store: Arc<dyn SessionStore>) {
        let (id, record) = created(
            &*store,
            json!({"text": "abc", "max": i64::MAX, "n": 1, "float": 1.5}),
        )
        .await;
        let ttl = Duration::from_secs(30);
        match store
            .update_and_load(
                &id,
                &[set("x", json!(1)), incr("n", 1), incr("text", 1)],
                ttl,
                None,
            )
            .await
        {
            Err(StoreError::NotAnInteger(name)) => assert_eq!(name, "text"),
            other => panic!("expected NotAnInteger, got {other:?}"),
        }
        for name in ["text", "float"] {
            match store
                .update_and_load(&id, &[incr(name, 1)], ttl, None)
                .await
            {
                Err(StoreError::NotAnInteger(failed)) => assert_eq!(failed, name),
                other => panic!("expected NotAnInteger, got {other:?}"),
            }
        }
        match store
            .update_and_load(&id, &[incr("max", 1)], ttl, None)
            .await
        {
            Err(StoreError::Overflow(name)) => assert_eq!(name, "max"),
            other => panic!("expected Overflow, got {other:?}"),
        }
        match store
            .update_and_load(&id, &[incr("n", 1), incr("float", 1)], ttl, None)
            .await
        {
            Err(StoreError::NotAnInteger(name)) => assert_eq!(name, "float"),
            other => panic!("expected NotAnInteger, got {other:?}"),
        }
        match store
            .update_and_load(&id, &[remove("n"), incr("max", 1)], ttl, None)
            .await
        {
            Err(StoreError::Overflow(name)) => assert_eq!(name, "max"),
            other => panic!("expected Overflow, got {other:?}"),
        }
        // Not even the expiry moved: a failed write is no use of the session.
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left > ttl, "{left:?}");
        assert_eq!(load(&*store, &id).await, Some(record));
    }

    pub(crate) async fn concurrent_update_and_load_never_loses_an_increment(
        store: Arc<dyn SessionStore>,
    ) {
        let (id, _) = created(&*store, json!({"user": "ann"})).await;
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .update_and_load(&id, &[incr("n", 1)], TTL, None)
                        .await
                        .unwrap()
                        .expect("the session exists")
                })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            let (record, values) = task.await.unwrap();
            // One step: the record returned is the one this increment produced.
            assert_eq!(record.attributes["n"], json!(values[0]));
            assert_eq!(record.attributes["user"], json!("ann"));
            seen.extend(values);
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=200).collect::<Vec<i64>>());
        assert_eq!(
            load(&*store, &id).await.unwrap().attributes["n"],
            json!(200)
        );
    }

    /// The expiry is the idle TTL, cut short by the absolute lifetime counted from the
    /// record's creation (which only the store knows when the call is made).
    pub(crate) async fn update_and_load_slides_expiry_within_the_lifetime(
        store: Arc<dyn SessionStore>,
    ) {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let short = Duration::from_secs(2);
        let id = SessionId::generate();
        let young = Record {
            attributes: attrs(json!({"a": 1})),
            created_ms: now(),
        };
        assert!(store.create(&id, &young, short).await.unwrap());
        // No lifetime, or one far off: the TTL given.
        store
            .update_and_load(&id, &[incr("n", 1)], TTL, None)
            .await
            .unwrap()
            .unwrap();
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left > TTL - Duration::from_secs(5), "{left:?}");
        store
            .update_and_load(&id, &[], short, Some(TTL * 10))
            .await
            .unwrap()
            .unwrap();
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(left <= short && left > Duration::from_secs(1), "{left:?}");

        // Created 10 s ago with a lifetime of 15 s: about 5 s left, whatever the TTL.
        let id = SessionId::generate();
        let older = Record {
            attributes: attrs(json!({})),
            created_ms: now() - 10_000,
        };
        assert!(store.create(&id, &older, TTL).await.unwrap());
        store
            .update_and_load(&id, &[], TTL, Some(Duration::from_secs(15)))
            .await
            .unwrap()
            .unwrap();
        let left = store.expires_in(&id).await.unwrap().unwrap();
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(3),
            "{left:?}"
        );

        // Past its lifetime: returned (the caller decides what an outlived session is), and
        // gone moments later.
        let id = SessionId::generate();
        assert!(store.create(&id, &older, TTL).await.unwrap());
        let (record, values) = store
            .update_and_load(&id, &[incr("n", 1)], TTL, Some(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.created_ms, values), (older.created_ms, vec![1]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.expires_in(&id).await.unwrap(), None);
        assert_eq!(load(&*store, &id).await, None);
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
    update_and_load_returns_the_record_after_the_changes,
    update_and_load_of_missing_does_not_resurrect,
    update_and_load_failures_change_nothing,
    concurrent_update_and_load_never_loses_an_increment,
    update_and_load_slides_expiry_within_the_lifetime,
    index_lists_by_deadline,
    index_remove_forgets,
    index_of_unknown_principal_is_empty,
    index_principals_are_opaque,
    index_entries_lapse,
    index_refresh_keeps_entries,
    expires_in_missing_is_none,
    expires_in_is_the_ttl_left,
    expires_in_does_not_slide,
);

mod redb_journal {
    use super::*;

    /// Opens the journal at `path` again, once it is free (see `wait_for_lock`).
    pub(crate) async fn reopen(path: &std::path::Path) -> MemoryStore {
        wait_for_lock(|| {
            MemoryStore::open(path, Duration::from_secs(3600)).map_err(|e| e.to_string())
        })
        .await
    }

    /// The journal is locked while a store has it open, and the flush task may hold the store
    /// for a moment after the last handle is dropped: retries `open` for up to 5 s.
    pub(crate) async fn wait_for_lock<T>(mut open: impl FnMut() -> Result<T, String>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match open() {
                Ok(opened) => return opened,
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
        within_limit(async {
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
        .await;
    }
}

mod redb_index {
    use super::*;

    // `::`: the `redb` backend's test module shadows the crate here.
    use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    use super::redb_journal::{reopen, wait_for_lock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_after_persist_keeps_the_index() {
        within_limit(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sessions.redb");
            // A flush interval longer than the test: only persist() writes.
            let store = MemoryStore::open(&path, Duration::from_secs(3600)).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let [a, removed, b, lapsing, bobs] = std::array::from_fn(|_| SessionId::generate());
            for id in [&a, &removed, &b] {
                store.index_add(ALICE, id, TTL).await.unwrap();
                tick().await;
            }
            store.index_remove(ALICE, &removed).await.unwrap();
            let short = Duration::from_millis(300);
            store.index_add(ALICE, &lapsing, short).await.unwrap();
            store.index_add("bob", &bobs, TTL).await.unwrap();
            store.index_add("carol", &lapsing, short).await.unwrap();
            store.persist().await.unwrap();
            drop(store);
            // The short entries lapse while the store is closed.
            tokio::time::sleep(Duration::from_millis(600)).await;

            let store = reopen(&path).await;
            assert_eq!(listed(&store, ALICE).await, ids(&[&a, &b]));
            assert_eq!(listed(&store, "bob").await, ids(&[&bobs]));
            assert_eq!(listed(&store, "carol").await, Vec::<String>::new());
        })
        .await;
    }

    /// The periodic purge alone (no add or list touches the principal again) removes lapsed
    /// entries, from memory and then from the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lapsed_index_entries_leave_the_journal() {
        within_limit(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sessions.redb");
            let store = MemoryStore::open(&path, Duration::from_millis(50)).unwrap();
            let (lapsing, kept) = (SessionId::generate(), SessionId::generate());
            store
                .index_add("carol", &lapsing, Duration::from_millis(300))
                .await
                .unwrap();
            store.index_add(ALICE, &kept, TTL).await.unwrap();
            store
                .index_add(ALICE, &lapsing, Duration::from_millis(300))
                .await
                .unwrap();
            // Flushed while live, then lapsed, purged and flushed again.
            tokio::time::sleep(Duration::from_millis(800)).await;
            drop(store);

            let db = wait_for_lock(|| Database::open(&path).map_err(|e| e.to_string())).await;
            let txn = db.begin_read().unwrap();
            let table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new("principals_v1"))
                .unwrap();
            let rows: Vec<(String, Value)> = table
                .iter()
                .unwrap()
                .map(|row| {
                    let (key, value) = row.unwrap();
                    let value = serde_json::from_slice(value.value()).unwrap();
                    (key.value().to_owned(), value)
                })
                .collect();
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].0, ALICE);
            let entries = rows[0].1.as_object().unwrap();
            assert_eq!(
                entries.keys().collect::<Vec<_>>(),
                [kept.as_str()],
                "only the live entry"
            );
        })
        .await;
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
            let (run, loaded) =
                commands_run(&server, store.update_and_load(&id, &[], TTL, None)).await;
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
            let (run, outcome) =
                commands_run(&server, store.rotate(&fresh, &rotated, &[], TTL)).await;
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
}
