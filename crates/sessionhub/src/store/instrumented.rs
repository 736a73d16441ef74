//! A store wrapper that records metrics for every operation.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Change, Record, SessionStore, Updated};
use crate::error::StoreError;
use crate::session::SessionId;

/// Wraps a store and records, through the `metrics` facade:
/// `sessionhub_session_reads_total`, `sessionhub_session_writes_total`,
/// `sessionhub_session_creates_total`, `sessionhub_session_invalidations_total`,
/// `sessionhub_store_duration_seconds{op}` and `sessionhub_store_errors_total{op}`.
pub struct Instrumented<S> {
    inner: S,
}

impl<S> Instrumented<S> {
    /// Records metrics for `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

async fn timed<T>(
    op: &'static str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = work.await;
    metrics::histogram!("sessionhub_store_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("sessionhub_store_errors_total", "op" => op).increment(1);
    }
    result
}

#[async_trait]
impl<S: SessionStore> SessionStore for Instrumented<S> {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        metrics::counter!("sessionhub_session_reads_total").increment(1);
        timed("load", self.inner.load(id, ttl)).await
    }

    async fn create(
        &self,
        id: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        metrics::counter!("sessionhub_session_creates_total").increment(1);
        timed("create", self.inner.create(id, record, ttl)).await
    }

    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        metrics::counter!("sessionhub_session_writes_total").increment(1);
        timed("update", self.inner.update(id, changes, ttl)).await
    }

    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        // A read and a write, in one step.
        metrics::counter!("sessionhub_session_reads_total").increment(1);
        metrics::counter!("sessionhub_session_writes_total").increment(1);
        timed(
            "update_and_load",
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
        metrics::counter!("sessionhub_session_writes_total").increment(1);
        timed("rotate", self.inner.rotate(old, new, changes, ttl)).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        metrics::counter!("sessionhub_session_invalidations_total").increment(1);
        timed("delete", self.inner.delete(id)).await
    }

    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError> {
        timed("expires_in", self.inner.expires_in(id)).await
    }

    async fn index_add(
        &self,
        principal: &str,
        id: &SessionId,
        keep: Duration,
    ) -> Result<(), StoreError> {
        timed("index_add", self.inner.index_add(principal, id, keep)).await
    }

    async fn index_remove(&self, principal: &str, id: &SessionId) -> Result<(), StoreError> {
        timed("index_remove", self.inner.index_remove(principal, id)).await
    }

    async fn index_list(&self, principal: &str) -> Result<Vec<SessionId>, StoreError> {
        timed("index_list", self.inner.index_list(principal)).await
    }

    async fn persist(&self) -> Result<(), StoreError> {
        timed("persist", self.inner.persist()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
