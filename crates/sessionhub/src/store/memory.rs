//! The embedded default: records in memory, journaled to a redb file.
//!
//! Why this shape: every request on one node touches the session, so reads and writes must
//! not wait for a disk. The map in memory is the source of truth; a background task copies
//! the records that changed to redb once per `flush_interval` (one transaction, one fsync).
//! A graceful stop calls [`SessionStore::persist`]; a SIGKILL loses at most one interval of
//! changes. redb gives a crash-safe single file without a server, so a half-written journal
//! can never corrupt what was there before.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Change, Record, SessionStore, Updated, apply_changes, now_ms};
use crate::error::StoreError;
use crate::session::SessionId;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_v1");

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
        let now = now_ms();
        let mut state = State::default();
        {
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
        }
        tracing::info!(sessions = state.entries.len(), path = %path.display(), "session journal loaded");
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
        let now = now_ms();
        let mut guard = self.inner.state.lock().unwrap();
        let state = &mut *guard;
        let before = state.entries.len();
        let dirty = &mut state.dirty;
        state.entries.retain(|id, entry| {
            let keep = entry.live(now);
            if !keep {
                dirty.insert(id.clone());
            }
            keep
        });
        let purged = before - state.entries.len();
        if purged > 0 {
            tracing::debug!(purged, "expired sessions purged");
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> T {
        let mut state = self.inner.state.lock().unwrap();
        f(&mut state, now_ms())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("session journal: {e}"))
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

    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.with_state(|state, now| {
            if state.entries.get(new).is_some_and(|e| e.live(now)) {
                return Err(StoreError::Unavailable(
                    "rotation target id is taken".into(),
                ));
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

    async fn persist(&self) -> Result<(), StoreError> {
        if self.inner.journal.is_none() {
            return Ok(());
        }
        // Copy the dirty entries out under the lock, write them without it.
        let batch: Vec<(SessionId, Option<Vec<u8>>)> = self.with_state(|state, _| {
            state
                .dirty
                .drain()
                .map(|id| {
                    let bytes = state
                        .entries
                        .get(&id)
                        .map(|e| serde_json::to_vec(e).expect("entries serialize"));
                    (id, bytes)
                })
                .collect()
        });
        if batch.is_empty() {
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
            // Keep the ids dirty so the next flush writes them: a failed flush loses nothing
            // while the process lives.
            self.with_state(|state, _| state.dirty.extend(batch.into_iter().map(|(id, _)| id)));
        }
        written
    }
}

fn write_batch(db: &Database, batch: &[(SessionId, Option<Vec<u8>>)]) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut table = txn.open_table(SESSIONS).map_err(unavailable)?;
        for (id, bytes) in batch {
            match bytes {
                Some(bytes) => {
                    table
                        .insert(id.as_str(), bytes.as_slice())
                        .map_err(unavailable)?;
                }
                None => {
                    table.remove(id.as_str()).map_err(unavailable)?;
                }
            }
        }
    }
    txn.commit().map_err(unavailable)
}
