//! The in-memory `SessionStore` with its redb write-behind journal: the store conformance
//! suite (`sessionhub_testkit::conformance::store`), then what only the journal does: what
//! was persisted survives reopening, and lapsed index entries leave the file.

use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use sessionhub::session::SessionId;
use sessionhub::store::{MemoryStore, SessionStore};
use sessionhub_testkit::conformance::store::{
    ALICE, StoreFixture, TTL, created, ids, incr, listed, load, record, set, tick, within_limit,
};

async fn redb() -> StoreFixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MemoryStore::open(&dir.path().join("sessions.redb"), Duration::from_millis(50)).unwrap();
    StoreFixture::new(Arc::new(store), dir)
}

sessionhub_testkit::store_conformance!(redb);

/// Opens the journal at `path` again, once it is free (see `wait_for_lock`).
async fn reopen(path: &std::path::Path) -> MemoryStore {
    wait_for_lock(|| MemoryStore::open(path, Duration::from_secs(3600)).map_err(|e| e.to_string()))
        .await
}

/// The journal is locked while a store has it open, and the flush task may hold the store
/// for a moment after the last handle is dropped: retries `open` for up to 5 s.
async fn wait_for_lock<T>(mut open: impl FnMut() -> Result<T, String>) -> T {
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
