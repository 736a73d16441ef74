//! A store wrapper that records metrics for every operation.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Histogram};

use super::{Change, Record, SessionStore, Updated};
use crate::error::StoreError;
use crate::session::SessionId;

/// Wraps a store and records, through the `metrics` facade:
/// `sessionhub_session_reads_total`, `sessionhub_session_writes_total`,
/// `sessionhub_session_creates_total`, `sessionhub_session_invalidations_total`,
/// `sessionhub_store_duration_seconds{op}` and `sessionhub_store_errors_total{op}`.
///
/// Each metric is registered with the recorder installed at its first use and kept (looking
/// it up on every call cost some 4 % of a request's instructions), so install the recorder
/// before the first store operation.
pub struct Instrumented<S> {
    inner: S,
    kinds: [OnceLock<Counter>; KINDS.len()],
    durations: [OnceLock<Histogram>; OPS.len()],
    errors: [OnceLock<Counter>; OPS.len()],
}

impl<S: std::fmt::Debug> std::fmt::Debug for Instrumented<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The counters of operations by kind.
const KINDS: [&str; 4] = [
    "sessionhub_session_reads_total",
    "sessionhub_session_writes_total",
    "sessionhub_session_creates_total",
    "sessionhub_session_invalidations_total",
];
const READS: usize = 0;
const WRITES: usize = 1;
const CREATES: usize = 2;
const INVALIDATIONS: usize = 3;

/// The `op` label of each operation, indexed by the constants below.
const OPS: [&str; 11] = [
    "load",
    "create",
    "update",
    "update_and_load",
    "rotate",
    "delete",
    "expires_in",
    "index_add",
    "index_remove",
    "index_list",
    "persist",
];
const LOAD: usize = 0;
const CREATE: usize = 1;
const UPDATE: usize = 2;
const UPDATE_AND_LOAD: usize = 3;
const ROTATE: usize = 4;
const DELETE: usize = 5;
const EXPIRES_IN: usize = 6;
const INDEX_ADD: usize = 7;
const INDEX_REMOVE: usize = 8;
const INDEX_LIST: usize = 9;
const PERSIST: usize = 10;

impl<S> Instrumented<S> {
    /// Records metrics for `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            kinds: Default::default(),
            durations: Default::default(),
            errors: Default::default(),
        }
    }

    fn count(&self, kind: usize) {
        self.kinds[kind]
            .get_or_init(|| metrics::counter!(KINDS[kind]))
            .increment(1);
    }

    async fn timed<T>(
        &self,
        op: usize,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work.await;
        self.durations[op]
            .get_or_init(
                || metrics::histogram!("sessionhub_store_duration_seconds", "op" => OPS[op]),
            )
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors[op]
                .get_or_init(|| metrics::counter!("sessionhub_store_errors_total", "op" => OPS[op]))
                .increment(1);
        }
        result
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Instrumented<S> {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        self.count(READS);
        self.timed(LOAD, self.inner.load(id, ttl)).await
    }

    async fn create(
        &self,
        id: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.count(CREATES);
        self.timed(CREATE, self.inner.create(id, record, ttl)).await
    }

    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.count(WRITES);
        self.timed(UPDATE, self.inner.update(id, changes, ttl))
            .await
    }

    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        // A read and a write, in one step.
        self.count(READS);
        self.count(WRITES);
        self.timed(
            UPDATE_AND_LOAD,
            self.inner.update_and_load(id, changes, ttl, lifetime),
        )
        .await
    }

    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.count(WRITES);
        self.timed(ROTATE, self.inner.rotate(old, new, changes, ttl))
            .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.count(INVALIDATIONS);
        self.timed(DELETE, self.inner.delete(id)).await
    }

    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError> {
        self.timed(EXPIRES_IN, self.inner.expires_in(id)).await
    }

    async fn index_add(
        &self,
        principal: &str,
        id: &SessionId,
        keep: Duration,
    ) -> Result<(), StoreError> {
        self.timed(INDEX_ADD, self.inner.index_add(principal, id, keep))
            .await
    }

    async fn index_remove(&self, principal: &str, id: &SessionId) -> Result<(), StoreError> {
        self.timed(INDEX_REMOVE, self.inner.index_remove(principal, id))
            .await
    }

    async fn index_list(&self, principal: &str) -> Result<Vec<SessionId>, StoreError> {
        self.timed(INDEX_LIST, self.inner.index_list(principal))
            .await
    }

    async fn persist(&self) -> Result<(), StoreError> {
        self.timed(PERSIST, self.inner.persist()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
