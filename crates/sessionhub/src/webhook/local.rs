//! The queue of a single node: in memory, optionally written through to a redb file so that
//! queued events survive a restart (held ones still held until their grace is over).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Claimed, Event, Queue, QueueError};
use crate::store::now_ms;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_events_v1");

/// How long a claim lasts before the event may be claimed again; on one node only a
/// delivery task that died mid-flight (a panic) leaves one, so it can be generous.
const LEASE: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct Row {
    event: Event,
    attempts: u32,
    /// When a held event is due (ms since the Unix epoch); others are due at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due_ms: Option<u64>,
    /// The key it is held under, until it is first claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<String>,
}

struct Entry {
    row: Row,
    due: Instant,
    leased_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    next: u64,
    /// Hold key -> the entry held under it, not claimed yet.
    held: HashMap<String, u64>,
}

impl State {
    /// Takes `key`'s held entry out of the queue, if it was not claimed yet.
    fn unhold(&mut self, key: &str) -> Option<u64> {
        let entry = self.held.remove(key)?;
        self.entries.remove(&entry).map(|_| entry)
    }
}

/// When a row is due, as an instant of this process.
fn due(row: &Row, now: Instant) -> Instant {
    let wait = row.due_ms.map_or(0, |due| due.saturating_sub(now_ms()));
    now + Duration::from_millis(wait)
}

/// Events in memory, optionally journaled to redb (one transaction per change, so what
/// was queued when the process died is still there when it starts again).
pub struct LocalQueue {
    bound: usize,
    state: Mutex<State>,
    db: Option<Arc<Database>>,
}

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue")
            .field("bound", &self.bound)
            .field("journaled", &self.db.is_some())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl Into<redb::Error>) -> QueueError {
    QueueError::new("redb", e.into())
}

impl LocalQueue {
    /// A queue in memory holding at most `bound` events.
    pub fn new(bound: usize) -> Self {
        Self {
            bound,
            state: Mutex::default(),
            db: None,
        }
    }

    /// A queue journaled to the redb file at `path` (created if missing), holding at most
    /// `bound` events; what the file holds is due at once, but held events stay held (and
    /// cancellable) until their grace is over.
    pub fn open(path: &Path, bound: usize) -> Result<Self, QueueError> {
        let db = Database::create(path).map_err(unavailable)?;
        let mut state = State::default();
        let now = Instant::now();
        {
            let txn = db.begin_read().map_err(unavailable)?;
            match txn.open_table(EVENTS) {
                Ok(table) => {
                    for row in table.iter().map_err(unavailable)? {
                        let (key, value) = row.map_err(unavailable)?;
                        let Ok(row) = serde_json::from_slice::<Row>(value.value()) else {
                            tracing::warn!("skipping an undecodable webhook event in the journal");
                            continue;
                        };
                        if let Some(held) = &row.held {
                            state.held.insert(held.clone(), key.value());
                        }
                        let entry = Entry {
                            due: due(&row, now),
                            row,
                            leased_until: None,
                        };
                        state.entries.insert(key.value(), entry);
                        state.next = state.next.max(key.value() + 1);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(Self {
            bound,
            state: Mutex::new(state),
            db: Some(Arc::new(db)),
        })
    }

    /// Writes `row` under `key` (or removes it), off the async threads: a commit syncs.
    async fn journal(&self, key: u64, row: Option<Vec<u8>>) -> Result<(), QueueError> {
        let Some(db) = self.db.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(EVENTS).map_err(unavailable)?;
                match &row {
                    Some(bytes) => table.insert(key, bytes.as_slice()).map(drop),
                    None => table.remove(key).map(drop),
                }
                .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })
        .await
        .map_err(|e| QueueError::new("redb", e))?
    }
}

fn key(claimed: &Claimed) -> Result<u64, QueueError> {
    claimed.receipt.parse().map_err(|_| {
        QueueError::new(
            "memory",
            format!("not a receipt of this queue: {:?}", claimed.receipt),
        )
    })
}

fn encode(row: &Row) -> Vec<u8> {
    serde_json::to_vec(row).expect("events serialize")
}

impl LocalQueue {
    /// Queues `row`, due after `wait`; held under its key if it has one (replacing what was
    /// held under it and not claimed yet).
    async fn add(&self, row: Row, wait: Duration) -> Result<bool, QueueError> {
        let bytes = self.db.as_ref().map(|_| encode(&row));
        let (key, replaced) = {
            let mut state = self.state.lock().unwrap();
            let replaced = row.held.as_deref().and_then(|held| state.unhold(held));
            if replaced.is_none() && state.entries.len() >= self.bound {
                return Ok(false);
            }
            let key = state.next;
            state.next += 1;
            if let Some(held) = &row.held {
                state.held.insert(held.clone(), key);
            }
            let entry = Entry {
                row,
                due: Instant::now() + wait,
                leased_until: None,
            };
            state.entries.insert(key, entry);
            (key, replaced)
        };
        if let Err(e) = self.journal(key, bytes).await {
            let mut state = self.state.lock().unwrap();
            if let Some(held) = state.entries.remove(&key).and_then(|e| e.row.held) {
                state.held.remove(&held);
            }
            return Err(e);
        }
        if let Some(replaced) = replaced {
            self.journal(replaced, None).await?;
        }
        Ok(true)
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn push(&self, event: &Event) -> Result<bool, QueueError> {
        let row = Row {
            event: event.clone(),
            attempts: 0,
            due_ms: None,
            held: None,
        };
        self.add(row, Duration::ZERO).await
    }

    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let State { entries, held, .. } = &mut *state;
        Ok(entries
            .iter_mut()
            .filter(|(_, e)| e.due <= now && e.leased_until.is_none_or(|until| until <= now))
            .take(max)
            .map(|(key, entry)| {
                entry.leased_until = Some(now + LEASE);
                // Claimed: on its way, past cancelling (the journal keeps the key until a
                // retry rewrites the row; a restart before that lets it be cancelled).
                if let Some(key) = entry.row.held.take() {
                    held.remove(&key);
                }
                Claimed {
                    event: entry.row.event.clone(),
                    attempts: entry.row.attempts,
                    receipt: key.to_string(),
                }
            })
            .collect())
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), QueueError> {
        let key = key(claimed)?;
        if self.state.lock().unwrap().entries.remove(&key).is_some() {
            self.journal(key, None).await?;
        }
        Ok(())
    }

    async fn retry(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError> {
        let key = key(claimed)?;
        let bytes = {
            let mut state = self.state.lock().unwrap();
            let Some(entry) = state.entries.get_mut(&key) else {
                return Ok(());
            };
            entry.row.attempts = claimed.attempts + 1;
            // Due at once after a restart, as everything but a held event is.
            entry.row.due_ms = None;
            entry.row.held = None;
            entry.due = Instant::now() + delay;
            entry.leased_until = None;
            self.db.as_ref().map(|_| encode(&entry.row))
        };
        if bytes.is_some() {
            self.journal(key, bytes).await?;
        }
        Ok(())
    }

    async fn hold(&self, event: &Event, key: &str, grace: Duration) -> Result<bool, QueueError> {
        let row = Row {
            event: event.clone(),
            attempts: 0,
            due_ms: Some(now_ms() + grace.as_millis() as u64),
            held: Some(key.to_owned()),
        };
        self.add(row, grace).await
    }

    async fn cancel(&self, key: &str) -> Result<bool, QueueError> {
        let Some(entry) = self.state.lock().unwrap().unhold(key) else {
            return Ok(false);
        };
        self.journal(entry, None).await?;
        Ok(true)
    }
}
