//! Where session records live.
//!
//! The [`SessionStore`] trait is deliberately narrow: every operation is one atomic step on
//! one session, so that a backend can implement it as one round trip (a Lua script in Redis,
//! one critical section in memory). The session layer never reads, modifies and writes a
//! whole record: it sends only the changed attributes, and increments are applied by the
//! store. That is what keeps two concurrent requests from losing each other's writes.
//!
//! Beside the records, a store keeps an index of session ids by principal (the logged-in
//! user), for listing a user's sessions, logging out everywhere and capping sessions per
//! user. Each index operation is likewise one atomic step, on one principal. Index entries
//! carry their own deadline instead of following the records' expiry: a store never has to
//! notice that a session expired to keep the index from growing without bound.

mod instrumented;
mod memory;
mod redis;

pub use self::instrumented::Instrumented;
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::StoreError;
use crate::session::SessionId;

/// Attribute name to JSON value.
pub type Attributes = Map<String, Value>;

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The application's attributes.
    pub attributes: Attributes,
    /// When the session was created, in milliseconds since the Unix epoch; the absolute
    /// lifetime counts from here.
    pub created_ms: u64,
}

impl Record {
    /// An empty record created now.
    pub fn new() -> Self {
        Self {
            attributes: Attributes::new(),
            created_ms: now_ms(),
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

/// One change to one attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Replace the attribute's value.
    Set(Value),
    /// Remove the attribute.
    Remove,
    /// Add to an integer attribute (a missing attribute counts as 0), atomically.
    Incr(i64),
}

/// The outcome of [`SessionStore::update`] and [`SessionStore::rotate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// The session existed and every change was applied. Holds the new value of each
    /// [`Change::Incr`], in the order the changes were given.
    Applied(Vec<i64>),
    /// The session does not exist (never did, expired or was invalidated); nothing changed.
    Missing,
}

/// A backend that keeps session records.
///
/// Every method is atomic with respect to every other method on the same id, across every
/// node that shares the backend. `ttl` is the idle time after which the record expires; each
/// call that succeeds on an existing record slides its expiry to now + `ttl`.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Reads a record and slides its expiry in the same step. `None` when it does not exist,
    /// has expired, or cannot be decoded (logged, never an error: a corrupt record must not
    /// turn into a 500 on every request).
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError>;

    /// Stores a new record unless the id is taken. Returns `false` if it was.
    async fn create(
        &self,
        id: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Applies `changes` if and only if the record still exists, so a request that started
    /// before an invalidation cannot bring the session back.
    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError>;

    /// Applies `changes` like [`update`](Self::update) and returns the record as it is after
    /// them, in the same step: `None` if the record does not exist (nothing changed, as for
    /// [`Updated::Missing`]); otherwise the record and the new value of each
    /// [`Change::Incr`], in the order the changes were given. A request whose first use of a
    /// session is a write needs both, and so pays one round trip instead of a
    /// [`load`](Self::load) and an `update`.
    ///
    /// The caller cannot know the record's creation time before this call, so the expiry is
    /// worked out here, as the session layer does for `update`: now + `ttl`, but never past
    /// the record's `created_ms` + `lifetime` when `lifetime` is given, and at least 1 ms
    /// from now (see [`expiry()`]). An undecodable record is `None`, as for `load`.
    ///
    /// The default implementation is a `load` and an `update`: two steps, not one. A deletion
    /// that lands between them makes it return `None` as if it had come first.
    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        let Some(mut record) = self.load(id, ttl).await? else {
            return Ok(None);
        };
        let ttl = expiry(ttl, lifetime, record.created_ms, now_ms());
        match self.update(id, changes, ttl).await? {
            Updated::Applied(values) => {
                apply_results(&mut record.attributes, changes, &values);
                Ok(Some((record, values)))
            }
            Updated::Missing => Ok(None),
        }
    }

    /// Moves the record from `old` to `new` and applies `changes`, in one step. `old` stops
    /// existing. [`Updated::Missing`] if `old` does not exist.
    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError>;

    /// Removes a record. Returns whether it existed.
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError>;

    /// How long until session `id` expires if it is not used, without sliding its expiry
    /// (looking at a session, e.g. to list it, is not using it). `None` if it does not exist
    /// or has expired. `Duration::MAX` for a record that carries no expiry at all, which this
    /// crate never writes.
    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError>;

    /// Records that session `id` belongs to `principal` (the logged-in user), keeping the
    /// entry for at least `keep`. The caller passes about 1.5 times the idle timeout and
    /// re-adds the id while the session is used, so an entry outlives its session a little
    /// but never indefinitely: that is what keeps the index from leaking the ids of sessions
    /// that simply expired, without the store having to notice each expiry.
    ///
    /// Re-adding an id moves its deadline to now + `keep` (which is what orders
    /// [`index_list`](Self::index_list)). Lapsed entries of this principal are pruned in the
    /// same step. `principal` is opaque: any string, compared byte for byte.
    async fn index_add(
        &self,
        principal: &str,
        id: &SessionId,
        keep: Duration,
    ) -> Result<(), StoreError>;

    /// Forgets that `id` belongs to `principal`. Not an error if it was not indexed.
    async fn index_remove(&self, principal: &str, id: &SessionId) -> Result<(), StoreError>;

    /// The ids indexed under `principal` whose entries have not lapsed, least recently
    /// refreshed first (ascending deadline; equal deadlines by id), so that the first ones are
    /// what to evict under a per-user session limit. Prunes lapsed entries in the same step.
    ///
    /// May include ids whose session already ended (the caller checks, e.g. with
    /// [`expires_in`](Self::expires_in)); never omits a live session whose entry is kept
    /// fresh. Empty for a principal never seen.
    async fn index_list(&self, principal: &str) -> Result<Vec<SessionId>, StoreError>;

    /// Makes every change so far durable (the embedded store's journal); a no-op for stores
    /// that are durable on every write.
    async fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the backend answers right now (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The expiry to give a record created at `created_ms` when it is used at `now_ms`: `ttl`
/// (the idle timeout), cut short by the absolute `lifetime` counted from creation, and never
/// less than 1 ms.
pub fn expiry(ttl: Duration, lifetime: Option<Duration>, created_ms: u64, now_ms: u64) -> Duration {
    match lifetime_left(lifetime, created_ms, now_ms) {
        Some(left) => ttl.min(left.max(Duration::from_millis(1))),
        None => ttl,
    }
}

/// How long a record created at `created_ms` has left at `now_ms` before its absolute
/// `lifetime` ends: `None` without a lifetime, zero once it has ended.
pub(crate) fn lifetime_left(
    lifetime: Option<Duration>,
    created_ms: u64,
    now_ms: u64,
) -> Option<Duration> {
    let lifetime = lifetime?;
    let end = created_ms.saturating_add(lifetime.as_millis().min(u128::from(u64::MAX)) as u64);
    Some(Duration::from_millis(end.saturating_sub(now_ms)))
}

/// Applies changes that a store has applied already to a copy of the record's attributes:
/// sets and removals as given, each increment's result from `results` (in order). What an
/// `update` leaves in the store, without recomputing the increments.
pub(crate) fn apply_results(
    attributes: &mut Attributes,
    changes: &[(String, Change)],
    results: &[i64],
) {
    let mut results = results.iter();
    for (name, change) in changes {
        match change {
            Change::Set(value) => {
                attributes.insert(name.clone(), value.clone());
            }
            Change::Remove => {
                attributes.remove(name);
            }
            Change::Incr(_) => {
                if let Some(value) = results.next() {
                    attributes.insert(name.clone(), Value::from(*value));
                }
            }
        }
    }
}

/// Applies changes to attributes in memory, with the same semantics every backend must have:
/// all or nothing, in order. Used by the memory store, and by the session layer for a session
/// that is not stored yet.
pub(crate) fn apply_changes(
    attributes: &mut Attributes,
    changes: &[(String, Change)],
) -> Result<Vec<i64>, StoreError> {
    let mut next = attributes.clone();
    let mut results = Vec::new();
    for (name, change) in changes {
        match change {
            Change::Set(value) => {
                next.insert(name.clone(), value.clone());
            }
            Change::Remove => {
                next.remove(name);
            }
            Change::Incr(delta) => {
                let current = match next.get(name) {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_i64()
                        .ok_or_else(|| StoreError::NotAnInteger(name.clone()))?,
                };
                let value = current
                    .checked_add(*delta)
                    .ok_or_else(|| StoreError::Overflow(name.clone()))?;
                next.insert(name.clone(), Value::from(value));
                results.push(value);
            }
        }
    }
    *attributes = next;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{expiry, lifetime_left};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_lifetime_counts_from_creation_and_caps_the_idle_timeout() {
        assert_eq!(lifetime_left(None, 1_000, 5_000), None);
        assert_eq!(lifetime_left(Some(10 * S), 1_000, 5_000), Some(6 * S));
        assert_eq!(
            lifetime_left(Some(4 * S), 1_000, 5_000),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime_left(Some(4 * S), 1_000, 9_000),
            Some(Duration::ZERO)
        );
        assert_eq!(expiry(30 * S, None, 1_000, 5_000), 30 * S);
        assert_eq!(expiry(30 * S, Some(10 * S), 1_000, 5_000), 6 * S);
        assert_eq!(expiry(3 * S, Some(10 * S), 1_000, 5_000), 3 * S);
        // Ended: the shortest expiry a store can set, never zero (which would mean none).
        let ended = expiry(30 * S, Some(4 * S), 1_000, 9_000);
        assert_eq!(ended, Duration::from_millis(1));
    }
}
