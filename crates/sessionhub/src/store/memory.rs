//! The embedded default: records in memory, journaled to a redb file.
//!
//! Why this shape: every request on one node touches the session, so reads and writes must
//! not wait for a disk. The map in memory is the source of truth; a background task copies
//! the records that changed to redb once per `flush_interval` (one transaction, one fsync).
//! A graceful stop calls [`SessionStore::persist`]; a SIGKILL loses at most one interval of
//! changes. redb gives a crash-safe single file without a server, so a half-written journal
//! can never corrupt what was there before.
//!
//! The index of sessions by principal lives beside the records and is journaled the same way,
//! in a second table of the same file (one row per principal: a JSON object of session id to
//! deadline in milliseconds since the Unix epoch), written in the same transaction as the
//! records. Lapsed entries are dropped at load, by the periodic purge (which also runs inline,
//! once a minute, in a store without a journal and so without a background task), and
//! whenever their principal is touched, so neither the map nor the file keeps them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Change, Record, SessionStore, Updated, apply_changes, expiry, now_ms};
use crate::error::StoreError;
use crate::session::SessionId;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_v1");
/// Principal to the JSON object `{"<session id>": <deadline ms>, ...}`.
const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals_v1");

/// How often a store purges expired records and lapsed index entries inline, on the next
/// call after this long. That covers a store without a journal, which has no background task:
/// without it, what expires there would stay in memory until its id or principal came back.
const INLINE_PURGE_EVERY_MS: u64 = 60_000;

/// The ids of one principal's sessions and the deadline of each entry, in milliseconds
/// since the Unix epoch; an entry whose deadline is not after now has lapsed.
type Indexed = HashMap<SessionId, u64>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    record: Record,
    expires_ms: u64,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_ms > now
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<SessionId, Entry>,
    /// Ids whose entry changed (or went away) since the last flush to the journal.
    dirty: HashSet<SessionId>,
    /// The index by principal. A principal is present only while it has an entry, so
    /// principals whose sessions are all gone cost nothing.
    index: HashMap<String, Indexed>,
    /// Principals whose entries changed (or went away) since the last flush.
    index_dirty: HashSet<String>,
    /// When the next inline purge is due, in milliseconds since the Unix epoch.
    next_purge_ms: u64,
}

impl State {
    /// Drops every expired record and lapsed index entry, marking what went away dirty.
    fn purge(&mut self, now: u64) {
        let before = self.entries.len();
        let dirty = &mut self.dirty;
        self.entries.retain(|id, entry| {
            let keep = entry.live(now);
            if !keep {
                dirty.insert(id.clone());
            }
            keep
        });
        let purged = before - self.entries.len();
        if purged > 0 {
            tracing::debug!(purged, "expired sessions purged");
        }
        // Entries of principals nobody asks about lapse here, not only on the next touch.
        let principals: Vec<String> = self
            .index
            .iter()
            .filter(|(_, ids)| ids.values().any(|deadline| *deadline <= now))
            .map(|(principal, _)| principal.clone())
            .collect();
        for principal in &principals {
            self.prune(principal, now);
        }
        self.next_purge_ms = now.saturating_add(INLINE_PURGE_EVERY_MS);
    }

    /// Drops the lapsed entries of `principal`, and the principal itself once it has none;
    /// marks it dirty if anything changed.
    fn prune(&mut self, principal: &str, now: u64) {
        let Some(ids) = self.index.get_mut(principal) else {
            return;
        };
        let before = ids.len();
        ids.retain(|_, deadline| *deadline > now);
        if ids.len() != before {
            self.index_dirty.insert(principal.to_owned());
        }
        if ids.is_empty() {
            self.index.remove(principal);
        }
    }
}

struct Inner {
    state: Mutex<State>,
    journal: Option<Database>,
}

/// Session records in memory, optionally journaled to a redb file.
///
/// Cloning is cheap and shares the records.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store that lives and dies with the process.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                journal: None,
            }),
        }
    }

    /// Opens (or creates) the journal at `path`, loads every live record from it, and starts
    /// a task that purges expired records and flushes changes every `flush_interval`.
    /// Must be called inside a tokio runtime.
    pub fn open(path: &Path, flush_interval: Duration) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(unavailable)?;
        let state = load_journal(&db, now_ms())?;
        tracing::info!(
            sessions = state.entries.len(),
            principals = state.index.len(),
            path = %path.display(),
            "session journal loaded"
        );
        let store = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                journal: Some(db),
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let store = MemoryStore { inner };
                store.purge_expired();
                if let Err(e) = store.persist().await {
                    tracing::error!(error = %e, "session journal flush failed; will retry");
                }
            }
        });
        Ok(store)
    }

    /// Decodes one row of the journal's session table the way [`open`](Self::open) does:
    /// the record and its expiry deadline in milliseconds since the Unix epoch. `None` if the
    /// row is undecodable (`open` skips such rows).
    ///
    /// For tools that read a journal directly, and for fuzzing the decoder.
    pub fn decode_journal_entry(bytes: &[u8]) -> Option<(Record, u64)> {
        let entry = serde_json::from_slice::<Entry>(bytes).ok()?;
        Some((entry.record, entry.expires_ms))
    }

    /// How many live sessions the store holds.
    pub fn len(&self) -> usize {
        let now = now_ms();
        let state = self.inner.state.lock().unwrap();
        state.entries.values().filter(|e| e.live(now)).count()
    }

    /// Whether the store holds no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn purge_expired(&self) {
        let mut state = self.inner.state.lock().unwrap();
        state.purge(now_ms());
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> T {
        let mut state = self.inner.state.lock().unwrap();
        let now = now_ms();
        if now >= state.next_purge_ms {
            state.purge(now);
        }
        f(&mut state, now)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn unavailable(e: impl Into<crate::error::BoxError>) -> StoreError {
    StoreError::unavailable("session journal", e)
}

fn deadline(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(ttl.as_millis() as u64)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        Ok(self.with_state(|state, now| {
            let entry = state.entries.get_mut(id).filter(|e| e.live(now))?;
            entry.expires_ms = deadline(now, ttl);
            let record = entry.record.clone();
            state.dirty.insert(id.clone());
            Some(record)
        }))
    }

    async fn create(
        &self,
        id: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.with_state(|state, now| {
            if state.entries.get(id).is_some_and(|e| e.live(now)) {
                return false;
            }
            state.entries.insert(
                id.clone(),
                Entry {
                    record: record.clone(),
                    expires_ms: deadline(now, ttl),
                },
            );
            state.dirty.insert(id.clone());
            true
        }))
    }

    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.with_state(|state, now| {
            let Some(entry) = state.entries.get_mut(id).filter(|e| e.live(now)) else {
                return Ok(Updated::Missing);
            };
            let values = apply_changes(&mut entry.record.attributes, changes)?;
            entry.expires_ms = deadline(now, ttl);
            state.dirty.insert(id.clone());
            Ok(Updated::Applied(values))
        })
    }

    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        self.with_state(|state, now| {
            let Some(entry) = state.entries.get_mut(id).filter(|e| e.live(now)) else {
                return Ok(None);
            };
            let values = apply_changes(&mut entry.record.attributes, changes)?;
            let ttl = expiry(ttl, lifetime, entry.record.created_ms, now);
            entry.expires_ms = deadline(now, ttl);
            let record = entry.record.clone();
            state.dirty.insert(id.clone());
            Ok(Some((record, values)))
        })
    }

    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.with_state(|state, now| {
            if state.entries.get(new).is_some_and(|e| e.live(now)) {
                return Err(StoreError::RotationTargetTaken);
            }
            let Some(mut entry) = state.entries.remove(old).filter(|e| e.live(now)) else {
                return Ok(Updated::Missing);
            };
            let values = match apply_changes(&mut entry.record.attributes, changes) {
                Ok(values) => values,
                Err(e) => {
                    state.entries.insert(old.clone(), entry);
                    return Err(e);
                }
            };
            entry.expires_ms = deadline(now, ttl);
            state.entries.insert(new.clone(), entry);
            state.dirty.insert(old.clone());
            state.dirty.insert(new.clone());
            Ok(Updated::Applied(values))
        })
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        Ok(self.with_state(|state, now| {
            let existed = state.entries.remove(id).is_some_and(|e| e.live(now));
            state.dirty.insert(id.clone());
            existed
        }))
    }

    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError> {
        Ok(self.with_state(|state, now| {
            let entry = state.entries.get(id).filter(|e| e.live(now))?;
            Some(Duration::from_millis(entry.expires_ms - now))
        }))
    }

    async fn index_add(
        &self,
        principal: &str,
        id: &SessionId,
        keep: Duration,
    ) -> Result<(), StoreError> {
        self.with_state(|state, now| {
            state
                .index
                .entry(principal.to_owned())
                .or_default()
                .insert(id.clone(), deadline(now, keep));
            state.index_dirty.insert(principal.to_owned());
            // After the insert, as in Redis: an entry kept for zero time lapses at once.
            state.prune(principal, now);
        });
        Ok(())
    }

    async fn index_remove(&self, principal: &str, id: &SessionId) -> Result<(), StoreError> {
        self.with_state(|state, now| {
            if let Some(ids) = state.index.get_mut(principal)
                && ids.remove(id).is_some()
            {
                state.index_dirty.insert(principal.to_owned());
                if ids.is_empty() {
                    state.index.remove(principal);
                }
            }
            state.prune(principal, now);
        });
        Ok(())
    }

    async fn index_list(&self, principal: &str) -> Result<Vec<SessionId>, StoreError> {
        Ok(self.with_state(|state, now| {
            state.prune(principal, now);
            let Some(ids) = state.index.get(principal) else {
                return Vec::new();
            };
            let mut listed: Vec<(u64, &SessionId)> =
                ids.iter().map(|(id, deadline)| (*deadline, id)).collect();
            // Ties by id, byte for byte: the order of a Redis sorted set with equal scores.
            listed.sort_unstable();
            listed.into_iter().map(|(_, id)| id.clone()).collect()
        }))
    }

    async fn persist(&self) -> Result<(), StoreError> {
        if self.inner.journal.is_none() {
            return Ok(());
        }
        // Copy the dirty entries out under the lock, write them without it.
        let batch: Batch = self.with_state(|state, _| Batch {
            sessions: state
                .dirty
                .drain()
                .map(|id| {
                    let bytes = state
                        .entries
                        .get(&id)
                        .map(|e| serde_json::to_vec(e).expect("entries serialize"));
                    (id, bytes)
                })
                .collect(),
            principals: state
                .index_dirty
                .drain()
                .map(|principal| {
                    let bytes = state.index.get(&principal).map(|ids| {
                        let row: HashMap<&str, u64> =
                            ids.iter().map(|(id, d)| (id.as_str(), *d)).collect();
                        serde_json::to_vec(&row).expect("index rows serialize")
                    });
                    (principal, bytes)
                })
                .collect(),
        });
        if batch.sessions.is_empty() && batch.principals.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let (batch, written) = tokio::task::spawn_blocking(move || {
            let written = write_batch(inner.journal.as_ref().expect("checked above"), &batch);
            (batch, written)
        })
        .await
        .map_err(unavailable)?;
        if written.is_err() {
            // Keep the ids and principals dirty so the next flush writes them: a failed flush
            // loses nothing while the process lives.
            self.with_state(|state, _| {
                state
                    .dirty
                    .extend(batch.sessions.into_iter().map(|(id, _)| id));
                state
                    .index_dirty
                    .extend(batch.principals.into_iter().map(|(p, _)| p));
            });
        }
        written
    }
}

/// What one flush writes: each dirty key with its new value, or `None` to remove the row.
struct Batch {
    sessions: Vec<(SessionId, Option<Vec<u8>>)>,
    principals: Vec<(String, Option<Vec<u8>>)>,
}

/// Reads every live record and index entry from the journal. What is expired, lapsed or
/// undecodable is left out of memory and marked dirty, so the next flush removes it from the
/// file too.
fn load_journal(db: &Database, now: u64) -> Result<State, StoreError> {
    let mut state = State::default();
    let txn = db.begin_read().map_err(unavailable)?;
    match txn.open_table(SESSIONS) {
        Ok(table) => {
            for row in table.iter().map_err(unavailable)? {
                let (key, value) = row.map_err(unavailable)?;
                let (Ok(id), Ok(entry)) = (
                    key.value().parse::<SessionId>(),
                    serde_json::from_slice::<Entry>(value.value()),
                ) else {
                    tracing::warn!("skipping an undecodable record in the session journal");
                    continue;
                };
                if entry.live(now) {
                    state.entries.insert(id, entry);
                } else {
                    state.dirty.insert(id);
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(unavailable(e)),
    }
    match txn.open_table(PRINCIPALS) {
        Ok(table) => {
            for row in table.iter().map_err(unavailable)? {
                let (key, value) = row.map_err(unavailable)?;
                let principal = key.value().to_owned();
                let Ok(row) = serde_json::from_slice::<HashMap<String, u64>>(value.value()) else {
                    tracing::warn!("dropping an undecodable index row in the session journal");
                    state.index_dirty.insert(principal);
                    continue;
                };
                let before = row.len();
                let ids: Indexed = row
                    .into_iter()
                    .filter(|(_, deadline)| *deadline > now)
                    .filter_map(|(id, deadline)| Some((id.parse().ok()?, deadline)))
                    .collect();
                if ids.len() != before {
                    state.index_dirty.insert(principal.clone());
                }
                if !ids.is_empty() {
                    state.index.insert(principal, ids);
                }
            }
        }
        // A journal written before the index existed.
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(unavailable(e)),
    }
    Ok(state)
}

fn write_batch(db: &Database, batch: &Batch) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    write_rows(
        &txn,
        SESSIONS,
        batch.sessions.iter().map(|(id, b)| (id.as_str(), b)),
    )?;
    write_rows(
        &txn,
        PRINCIPALS,
        batch.principals.iter().map(|(p, b)| (p.as_str(), b)),
    )?;
    txn.commit().map_err(unavailable)
}

fn write_rows<'a>(
    txn: &redb::WriteTransaction,
    definition: TableDefinition<&str, &[u8]>,
    rows: impl Iterator<Item = (&'a str, &'a Option<Vec<u8>>)>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition).map_err(unavailable)?;
    for (key, bytes) in rows {
        match bytes {
            Some(bytes) => {
                table.insert(key, bytes.as_slice()).map_err(unavailable)?;
            }
            None => {
                table.remove(key).map_err(unavailable)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `store::redis`'s test of the same name: a float attribute must come back from the
    /// journal as the same f64 (serde_json's default float parsing is not correctly rounded).
    #[test]
    fn float_attributes_survive_a_write_and_a_load() {
        let mut record = Record::new();
        record
            .attributes
            .insert("f".into(), serde_json::Value::from(1.0715660391465826e-75));
        let entry = Entry {
            record: record.clone(),
            expires_ms: 1,
        };
        let row = serde_json::to_vec(&entry).unwrap();
        assert_eq!(MemoryStore::decode_journal_entry(&row), Some((record, 1)));
    }
}
