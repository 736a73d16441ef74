//! The `SessionStore` contract: what the session layer relies on from every store.
//!
//! - every operation is atomic per id, across every node that shares the backend;
//! - only the changed attributes are written;
//! - an update of a session that no longer exists changes nothing (no resurrection);
//! - increments are exact 64-bit integers, and overflow or a non-integer changes nothing;
//! - every successful touch slides the expiry, and looking (`expires_in`) is not touching;
//! - the principal index lists live ids by deadline, and its entries lapse.
//!
//! [`store_conformance!`](crate::store_conformance) runs [`checks`] against a backend. The
//! helpers here (records, changes, [`created`], [`load`]) serve the checks and a backend's
//! own tests alike. One file for one subject, the contract, long because it has thirty
//! clauses; split by clause it would scatter what a backend author reads in one go.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sessionhub::session::SessionId;
use sessionhub::store::{Attributes, Change, Record, SessionStore};

/// Long enough never to expire during a check that is not about expiry.
pub const TTL: Duration = Duration::from_secs(600);
/// Upper bound for one test, setup included.
pub const LIMIT: Duration = Duration::from_secs(60);
/// The creation time of the records the checks make.
pub const CREATED_MS: u64 = 1_700_000_000_123;
/// A principal as the session layer uses them.
pub const ALICE: &str = "alice@example.com";

/// A store under test and whatever must live as long as it (temp dir, redis-server).
pub struct StoreFixture {
    store: Arc<dyn SessionStore>,
    _guard: super::Guard,
}

impl StoreFixture {
    /// `store`, kept working by `guard` (`()` when it needs nothing).
    pub fn new(store: Arc<dyn SessionStore>, guard: impl std::any::Any + Send) -> Self {
        Self {
            store,
            _guard: Box::new(guard),
        }
    }

    /// The store under test.
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }
}

/// Runs `test`, failing it if it takes longer than [`LIMIT`].
pub async fn within_limit(test: impl Future<Output = ()>) {
    super::within(LIMIT, test).await;
}

/// A JSON object as attributes; panics on anything else.
pub fn attrs(value: Value) -> Attributes {
    value.as_object().expect("a JSON object").clone()
}

/// A record holding `value` (a JSON object), created at [`CREATED_MS`].
pub fn record(value: Value) -> Record {
    Record {
        attributes: attrs(value),
        created_ms: CREATED_MS,
    }
}

/// The change that sets `name` to `value`.
pub fn set(name: &str, value: Value) -> (String, Change) {
    (name.to_owned(), Change::Set(value))
}

/// The change that removes `name`.
pub fn remove(name: &str) -> (String, Change) {
    (name.to_owned(), Change::Remove)
}

/// The change that adds `delta` to `name`.
pub fn incr(name: &str, delta: i64) -> (String, Change) {
    (name.to_owned(), Change::Incr(delta))
}

/// Creates a fresh session holding `value`, for [`TTL`].
pub async fn created(store: &dyn SessionStore, value: Value) -> (SessionId, Record) {
    let id = SessionId::generate();
    let record = record(value);
    assert!(store.create(&id, &record, TTL).await.unwrap());
    (id, record)
}

/// Loads `id`, sliding its expiry to [`TTL`].
pub async fn load(store: &dyn SessionStore, id: &SessionId) -> Option<Record> {
    store.load(id, TTL).await.unwrap()
}

/// `index_list` as text: `SessionId`'s `Debug` is redacted, which would make a failing
/// comparison unreadable.
pub async fn listed(store: &dyn SessionStore, principal: &str) -> Vec<String> {
    ids(&store.index_list(principal).await.unwrap())
}

/// Session ids as text (see [`listed`]).
pub fn ids<I: std::borrow::Borrow<SessionId>>(ids: &[I]) -> Vec<String> {
    ids.iter()
        .map(|id| id.borrow().as_str().to_owned())
        .collect()
}

/// Lets the clock pass a millisecond boundary or more, so that the next index deadline is
/// strictly later than the previous one (deadlines are whole milliseconds).
pub async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// The checks, each given the store under test.
pub mod checks {
    use super::*;

    use sessionhub::error::StoreError;
    use sessionhub::store::Updated;

    /// An id never created loads as no session.
    pub async fn load_missing(store: Arc<dyn SessionStore>) {
        assert_eq!(load(&*store, &SessionId::generate()).await, None);
    }

    /// What `create` stored loads back equal: every JSON type, the ends of the integer
    /// ranges, and names and strings with separators, escapes and non-ASCII characters.
    pub async fn create_then_load_round_trips(store: Arc<dyn SessionStore>) {
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

    /// `create` refuses an id that is taken and leaves its record alone.
    pub async fn create_refuses_taken_id(store: Arc<dyn SessionStore>) {
        let (id, first) = created(&*store, json!({"owner": "first"})).await;
        let second = record(json!({"owner": "second", "extra": 1}));
        assert!(!store.create(&id, &second, TTL).await.unwrap());
        assert_eq!(load(&*store, &id).await, Some(first));
    }

    /// `update` sets and removes only the attributes it is given, the last change to a name
    /// winning; an empty batch only touches the record.
    pub async fn update_applies_only_given_attributes(store: Arc<dyn SessionStore>) {
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

    /// Concurrent updates of different attributes of one session all stick.
    pub async fn concurrent_updates_keep_every_attribute(store: Arc<dyn SessionStore>) {
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

    /// Concurrent increments of one attribute are never lost, and each sees its own result.
    pub async fn concurrent_increments_are_never_lost(store: Arc<dyn SessionStore>) {
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

    /// Increments are exact 64-bit integer arithmetic (beyond 2^53 too), start from 0 for
    /// a missing or null attribute and see earlier changes of the same batch.
    pub async fn increments_are_exact(store: Arc<dyn SessionStore>) {
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

    /// An update of a session that does not exist changes nothing and leaves nothing behind.
    pub async fn update_of_missing_does_not_resurrect(store: Arc<dyn SessionStore>) {
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

    /// After `delete`, the id is gone: updating or rotating it finds nothing.
    pub async fn delete_then_update_is_missing(store: Arc<dyn SessionStore>) {
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

    /// Incrementing an attribute that is not an integer fails with `NotAnInteger`, and the
    /// whole batch changes nothing.
    pub async fn incr_of_non_integer_changes_nothing(store: Arc<dyn SessionStore>) {
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

    /// An increment past the `i64` range fails with `Overflow`, and the whole batch changes
    /// nothing.
    pub async fn incr_overflow_changes_nothing(store: Arc<dyn SessionStore>) {
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

    /// `rotate` moves the record, with the batch applied, to the new id; the old id is gone,
    /// and a failing change leaves the record where it was.
    pub async fn rotate_moves_the_record(store: Arc<dyn SessionStore>) {
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

    /// `rotate` onto an id that is taken fails and changes neither record.
    pub async fn rotate_refuses_a_taken_target(store: Arc<dyn SessionStore>) {
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

    /// A record left alone for its TTL is gone, and its id is free again.
    pub async fn records_expire(store: Arc<dyn SessionStore>) {
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

    /// Every `load` slides the expiry; left alone, the record still expires.
    pub async fn load_slides_expiry(store: Arc<dyn SessionStore>) {
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

    /// The principal index lists ids by deadline, least recently refreshed first, each once.
    pub async fn index_lists_by_deadline(store: Arc<dyn SessionStore>) {
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

    /// `index_remove` forgets one id of one principal, and is no error when there is nothing
    /// to remove.
    pub async fn index_remove_forgets(store: Arc<dyn SessionStore>) {
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

    /// A principal never indexed lists nothing.
    pub async fn index_of_unknown_principal_is_empty(store: Arc<dyn SessionStore>) {
        assert_eq!(listed(&*store, "nobody").await, Vec::<String>::new());
        assert_eq!(listed(&*store, "").await, Vec::<String>::new());
    }

    /// The principal is opaque: any string is its own principal, including ones that look
    /// like another's encoding, or that contain what a key layout might treat specially.
    pub async fn index_principals_are_opaque(store: Arc<dyn SessionStore>) {
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

    /// Index entries lapse at their deadline, and a lapsed id can be indexed anew.
    pub async fn index_entries_lapse(store: Arc<dyn SessionStore>) {
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
    pub async fn index_refresh_keeps_entries(store: Arc<dyn SessionStore>) {
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

    /// `expires_in` of a missing session is `None`, and asking creates nothing.
    pub async fn expires_in_missing_is_none(store: Arc<dyn SessionStore>) {
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

    /// `expires_in` is the TTL left, and shows every slide (load, update, rotate).
    pub async fn expires_in_is_the_ttl_left(store: Arc<dyn SessionStore>) {
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
    pub async fn expires_in_does_not_slide(store: Arc<dyn SessionStore>) {
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

    /// `update_and_load` applies the changes and returns the record as stored after them,
    /// with the results of the increments.
    pub async fn update_and_load_returns_the_record_after_the_changes(
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

    /// `update_and_load` of a missing or deleted session returns `None` and writes nothing.
    pub async fn update_and_load_of_missing_does_not_resurrect(store: Arc<dyn SessionStore>) {
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

    /// A failing `update_and_load` changes nothing, not even the expiry.
    pub async fn update_and_load_failures_change_nothing(store: Arc<dyn SessionStore>) {
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

    /// Concurrent `update_and_load` increments are never lost, and each returns the record
    /// its own increment produced.
    pub async fn concurrent_update_and_load_never_loses_an_increment(store: Arc<dyn SessionStore>) {
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
    pub async fn update_and_load_slides_expiry_within_the_lifetime(store: Arc<dyn SessionStore>) {
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

    /// Every `update` slides the expiry.
    pub async fn update_slides_expiry(store: Arc<dyn SessionStore>) {
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

/// Runs every store check against the backend `$factory` returns, one test each:
/// `sessionhub_testkit::store_conformance!(my_factory);` where
/// `async fn my_factory() -> StoreFixture`. See [`conformance`](crate::conformance).
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::__conformance_tests!(
            suite: store,
            worker_threads: 4,
            factory: $factory,
            fixture => fixture.store(),
            checks: [
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
            ]
        );
    };
}
