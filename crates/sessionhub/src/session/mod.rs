//! Server-side HTTP sessions: a tower layer, and an axum extractor to use in handlers.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use sessionhub::{Session, SessionConfig, SessionLayer, store::MemoryStore};
//!
//! async fn visits(session: Session) -> Result<String, sessionhub::ApiError> {
//!     let n = session.incr("visits", 1).await?;
//!     Ok(format!("visit number {n}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(MemoryStore::new(), SessionConfig::default()));
//! ```
//!
//! The session is loaded on first use, not for every request. Changes are tracked per
//! attribute and only those are written, after the handler returns; an increment is sent to
//! the store at once and applied there, so concurrent requests never lose one. When the first
//! use of a stored session is a write (an increment, or changes with no read before the
//! handler returns), the store applies it and returns the record in one step
//! ([`SessionStore::update_and_load`]): one round trip, not a load and then an update.

mod id;
mod layer;

pub use self::id::{MalformedId, SessionId};
pub use self::layer::{SessionLayer, SessionService, presented_id};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::{ApiError, StoreError};
use crate::store::{
    Attributes, Change, Record, SessionStore, Updated, apply_changes, expiry, lifetime_left, now_ms,
};

/// The attribute that holds the logged-in user (see [`Session::login`]).
pub const PRINCIPAL: &str = "sessionhub.principal";
/// When the session was last written to the principal index (ms since the epoch).
const INDEXED: &str = "sessionhub.indexed";

/// How sessions behave: timeouts, and how the id travels.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session not used for this long expires. Every use slides it.
    pub idle_timeout: Duration,
    /// A session expires this long after creation however often it is used, if set.
    pub max_lifetime: Option<Duration>,
    /// The cookie that carries the id (`SESSION`).
    pub cookie_name: String,
    /// The header that carries the id for clients without cookies (`X-Auth-Token`).
    pub header_name: axum::http::HeaderName,
    /// Whether the cookie gets `Secure`: `Some` forces it; `None` sets it when the request
    /// came over HTTPS, as told by `X-Forwarded-Proto` from one of `trusted_proxies`.
    pub cookie_secure: Option<bool>,
    /// Peers whose `X-Forwarded-Proto` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// At most this many sessions per user; a login past it ends the least recently used.
    pub max_sessions_per_user: Option<usize>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(1800),
            max_lifetime: None,
            cookie_name: "SESSION".to_owned(),
            header_name: axum::http::HeaderName::from_static("x-auth-token"),
            cookie_secure: None,
            trusted_proxies: Vec::new(),
            max_sessions_per_user: None,
        }
    }
}

/// Told when a session ends, so that whatever is bound to it (sockets) can end too.
#[async_trait]
pub trait SessionEvents: Send + Sync + 'static {
    /// Session `id` no longer exists: invalidated, rotated to a new id, evicted, or found
    /// past its absolute lifetime (idle expiry is not announced: the store just forgets).
    async fn ended(&self, id: &SessionId);

    /// Session `id` was stored for the first time (a rotation moves a session to a new id:
    /// the old one ends, and the new one is not announced as created).
    async fn created(&self, id: &SessionId) {
        let _ = id;
    }

    /// Session `id` (of `principal`, if it had one) was destroyed: invalidated or evicted,
    /// not rotated. Called after [`SessionEvents::ended`]; the default does nothing.
    async fn destroyed(&self, id: &SessionId, principal: Option<&str>) {
        let _ = (id, principal);
    }

    /// Whether [`SessionEvents::destroyed`] wants the principal: an invalidation then loads
    /// a session it had not loaded, to know it (one store read). The default: no.
    fn wants_destroyed(&self) -> bool {
        false
    }
}

/// How long a per-user index entry must outlive its last refresh: a refresh happens at most
/// every half idle timeout, and the session may then live a whole idle timeout more.
pub(crate) fn index_keep(idle_timeout: Duration) -> Duration {
    idle_timeout * 3 / 2
}

/// The session of the current request. Extract it in a handler; clones share state.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// Shows no id or attribute: both may be credentials.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn SessionStore>,
    config: Arc<SessionConfig>,
    events: Option<Arc<dyn SessionEvents>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The well-formed id the client presented, if any.
    presented: Option<SessionId>,
    /// The id the client holds after this response, once known.
    id: Option<SessionId>,
    loaded: bool,
    /// Whether a record exists in the store under `id`.
    stored: bool,
    /// The attributes as this request sees them, local changes included.
    record: Record,
    /// Changes to a stored record not yet written. Before the record is loaded, the sets and
    /// removals made so far (only with a presented id): they are applied to the record when
    /// it is loaded, or sent together with the load when nothing reads it first.
    pending: Vec<(String, Change)>,
    /// The presented session was ended by this request or by a concurrent one.
    ended: bool,
}

/// What the layer must tell the client after the handler ran.
pub(crate) enum Outcome {
    /// Nothing changed for the client.
    Unchanged,
    /// The client must hold this id from now on.
    Issue(SessionId),
    /// The client's id no longer names a session: remove it.
    Clear,
}

impl Session {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        config: Arc<SessionConfig>,
        events: Option<Arc<dyn SessionEvents>>,
        presented: Option<SessionId>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                events,
                state: Mutex::new(State {
                    id: presented.clone(),
                    presented,
                    ..State::default()
                }),
            }),
        }
    }

    /// The session id the client will hold after this response. A new session gets its id
    /// here; it is stored only if the request writes something.
    pub async fn id(&self) -> Result<SessionId, StoreError> {
        let mut state = self.loaded().await?;
        Ok(state.id.get_or_insert_with(SessionId::generate).clone())
    }

    /// Whether a stored session came with the request (false for a new one).
    pub async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.loaded().await?.stored)
    }

    /// One attribute, decoded. `None` if absent or not of type `T`.
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let state = self.loaded().await?;
        Ok(state
            .record
            .attributes
            .get(name)
            .and_then(|v| T::deserialize(v).ok()))
    }

    /// Every attribute.
    pub async fn attributes(&self) -> Result<Attributes, StoreError> {
        Ok(self.loaded().await?.record.attributes.clone())
    }

    /// Calls `f` with every attribute, by reference: what [`attributes`](Self::attributes)
    /// returns, without copying it (e.g. to serialize them). The session is locked while `f`
    /// runs.
    pub async fn with_attributes<T>(
        &self,
        f: impl FnOnce(&Attributes) -> T,
    ) -> Result<T, StoreError> {
        Ok(f(&self.loaded().await?.record.attributes))
    }

    /// Sets an attribute; written when the handler returns.
    ///
    /// # Panics
    /// If `value` cannot be represented as JSON (a map with non-string keys).
    pub async fn insert(&self, name: &str, value: impl Serialize) -> Result<(), StoreError> {
        let value = serde_json::to_value(value).expect("session attributes are JSON");
        self.change(name, Change::Set(value)).await
    }

    /// Removes an attribute; written when the handler returns.
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.change(name, Change::Remove).await
    }

    async fn change(&self, name: &str, change: Change) -> Result<(), StoreError> {
        let mut state = self.inner.state.lock().await;
        if !state.loaded && state.presented.is_some() {
            // Nothing read yet: no need to load for this. It is applied to the record when a
            // read loads it, or sent with the load at the end (`finish`).
            state.pending.push((name.to_owned(), change));
            return Ok(());
        }
        self.load(&mut state).await?;
        let change = [(name.to_owned(), change)];
        apply_changes(&mut state.record.attributes, &change)?;
        if state.stored {
            state.pending.extend(change);
        }
        Ok(())
    }

    /// Adds `delta` to an integer attribute (absent counts as 0) and returns the new value.
    /// Applied by the store at once, together with any pending changes, so that concurrent
    /// requests on the same session never lose an increment.
    pub async fn incr(&self, name: &str, delta: i64) -> Result<i64, StoreError> {
        let mut state = self.inner.state.lock().await;
        let change = (name.to_owned(), Change::Incr(delta));
        if !state.loaded
            && let Some(id) = state.presented.clone()
        {
            // The first use is a write: apply it and load the record in one step.
            let mut changes = std::mem::take(&mut state.pending);
            changes.push(change);
            let values = self.load_by_writing(&mut state, &id, changes).await?;
            return Ok(*values.last().expect("one value per increment"));
        }
        self.load(&mut state).await?;
        if state.stored {
            let id = state.id.clone().expect("a stored session has an id");
            let mut changes = std::mem::take(&mut state.pending);
            changes.push(change.clone());
            let ttl = self.ttl(&state.record);
            match self.inner.store.update(&id, &changes, ttl).await? {
                Updated::Applied(values) => {
                    let value = *values.last().expect("one value per increment");
                    state
                        .record
                        .attributes
                        .insert(name.to_owned(), Value::from(value));
                    return Ok(value);
                }
                Updated::Missing => {
                    // Invalidated or expired by someone else since we loaded it: that wins.
                    // What this request does from here on goes into a new session.
                    state.reset_after_end();
                }
            }
        }
        let values = apply_changes(&mut state.record.attributes, &[change])?;
        Ok(values[0])
    }

    /// Gives the session a new id and keeps its data, in one atomic step. Call it when the
    /// user's privileges change (login), so an id planted before login is worthless after.
    pub async fn rotate(&self) -> Result<(), StoreError> {
        let mut state = self.loaded().await?;
        if !state.stored {
            // Not stored yet: the id it will get is fresh anyway, but never the presented one.
            state.id = Some(SessionId::generate());
            return Ok(());
        }
        let old = state.id.clone().expect("a stored session has an id");
        let new = SessionId::generate();
        let changes = std::mem::take(&mut state.pending);
        let ttl = self.ttl(&state.record);
        match self.inner.store.rotate(&old, &new, &changes, ttl).await? {
            Updated::Applied(_) => state.id = Some(new),
            Updated::Missing => state.reset_after_end(),
        }
        drop(state);
        // Whatever was bound to the old id belonged to the old privileges.
        self.announce_end(&old).await;
        Ok(())
    }

    /// The logged-in user, if any (see [`Session::login`]).
    pub async fn principal(&self) -> Result<Option<String>, StoreError> {
        self.get(PRINCIPAL).await
    }

    /// Logs `principal` in: records it in the session, rotates the id (fixation
    /// protection), adds the session to the user's index (for "log out everywhere"), and,
    /// with a per-user session limit, ends the user's least recently used sessions past it.
    pub async fn login(&self, principal: &str) -> Result<(), StoreError> {
        let previous = {
            let state = self.loaded().await?;
            let principal = state
                .record
                .attributes
                .get(PRINCIPAL)
                .and_then(|p| p.as_str());
            match (principal, &state.id, state.stored) {
                (Some(p), Some(id), true) => Some((p.to_owned(), id.clone())),
                _ => None,
            }
        };
        self.insert(PRINCIPAL, principal).await?;
        self.insert(INDEXED, now_ms()).await?;
        self.rotate().await?;
        let id = self.id().await?;
        let store = &self.inner.store;
        if let Some((previous, old)) = previous {
            store.index_remove(&previous, &old).await?;
        }
        store.index_add(principal, &id, self.index_keep()).await?;
        if let Some(max) = self.inner.config.max_sessions_per_user {
            self.evict_past(principal, max, &id).await?;
        }
        Ok(())
    }

    /// Ends `principal`'s sessions other than `current` past the `max` most recently used.
    async fn evict_past(
        &self,
        principal: &str,
        max: usize,
        current: &SessionId,
    ) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let mut live = Vec::new();
        // Least recently used first; the index may still name sessions that ended.
        for id in store.index_list(principal).await? {
            if &id == current {
                continue;
            }
            if store.expires_in(&id).await?.is_some() {
                live.push(id);
            } else {
                store.index_remove(principal, &id).await?;
            }
        }
        let excess = (live.len() + 1).saturating_sub(max.max(1));
        for id in live.into_iter().take(excess) {
            store.delete(&id).await?;
            store.index_remove(principal, &id).await?;
            self.announce_end(&id).await;
            self.announce_destroyed(&id, Some(principal)).await;
        }
        Ok(())
    }

    fn index_keep(&self) -> Duration {
        index_keep(self.inner.config.idle_timeout)
    }

    async fn announce_end(&self, id: &SessionId) {
        if let Some(events) = &self.inner.events {
            events.ended(id).await;
        }
    }

    async fn announce_destroyed(&self, id: &SessionId, principal: Option<&str>) {
        if let Some(events) = &self.inner.events {
            events.destroyed(id, principal).await;
        }
    }

    /// Ends the session: the store forgets it now, and the client is told to drop the id.
    /// Writes after this go into a new session.
    pub async fn invalidate(&self) -> Result<(), StoreError> {
        let mut state = self.inner.state.lock().await;
        let wants_principal = !state.loaded
            && (self.inner.events.as_ref()).is_some_and(|events| events.wants_destroyed());
        if !state.pending.is_empty() || wants_principal {
            // Changes waiting for the load: load now (they are dropped with the session), so
            // that the principal is known and its index entry goes too.
            self.load(&mut state).await?;
        }
        let ended = state.id.clone().filter(|_| state.stored || !state.loaded);
        let principal = state
            .record
            .attributes
            .get(PRINCIPAL)
            .and_then(|p| p.as_str())
            .map(str::to_owned);
        if let Some(id) = &ended {
            self.inner.store.delete(id).await?;
            // Unloaded, the principal is unknown; its index entry then lapses on its own
            // and readers of the index skip ended sessions.
            if let Some(principal) = &principal {
                self.inner.store.index_remove(principal, id).await?;
            }
        }
        state.loaded = true;
        state.reset_after_end();
        drop(state);
        if let Some(id) = ended {
            self.announce_end(&id).await;
            self.announce_destroyed(&id, principal.as_deref()).await;
        }
        Ok(())
    }

    /// Writes what the handler changed. Called by the layer after the handler returns.
    pub(crate) async fn finish(&self) -> Result<Outcome, StoreError> {
        let mut state = self.inner.state.lock().await;
        if !state.loaded && !state.pending.is_empty() {
            // Written, never read: apply the changes and load in one step.
            let id = state
                .presented
                .clone()
                .expect("changes wait for a load only with an id");
            let changes = std::mem::take(&mut state.pending);
            self.load_by_writing(&mut state, &id, changes).await?;
        }
        if state.stored && !state.pending.is_empty() {
            let id = state.id.clone().expect("a stored session has an id");
            let changes = std::mem::take(&mut state.pending);
            let ttl = self.ttl(&state.record);
            if self.inner.store.update(&id, &changes, ttl).await? == Updated::Missing {
                // Invalidated concurrently: the invalidation wins, the writes are dropped.
                tracing::debug!("session ended by a concurrent request; changes dropped");
                state.reset_after_end();
            }
        }
        if !state.stored && !state.record.attributes.is_empty() {
            let ttl = self.ttl(&state.record);
            let mut id = state.id.take().unwrap_or_else(SessionId::generate);
            // A presented id is never adopted as a new session's id.
            if state.presented.as_ref() == Some(&id) {
                id = SessionId::generate();
            }
            while !self.inner.store.create(&id, &state.record, ttl).await? {
                id = SessionId::generate();
            }
            if let Some(events) = &self.inner.events {
                events.created(&id).await;
            }
            state.id = Some(id);
            state.stored = true;
        }
        Ok(match (&state.id, state.stored) {
            (Some(id), true) if state.presented.as_ref() != Some(id) => Outcome::Issue(id.clone()),
            (_, true) => Outcome::Unchanged,
            (_, false) if state.ended || (state.loaded && state.presented.is_some()) => {
                Outcome::Clear
            }
            _ => Outcome::Unchanged,
        })
    }

    /// Locks the state, loading the record on first use.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>, StoreError> {
        let mut state = self.inner.state.lock().await;
        self.load(&mut state).await?;
        Ok(state)
    }

    /// Loads the presented session unless that was done already. Changes made before (see
    /// `pending`) are applied to what was loaded, and stay pending for a stored record.
    async fn load(&self, state: &mut State) -> Result<(), StoreError> {
        if state.loaded {
            return Ok(());
        }
        if let Some(id) = state.presented.clone() {
            let config = &self.inner.config;
            match self.inner.store.load(&id, config.idle_timeout).await? {
                Some(record) if !self.outlived(&record) => {
                    state.record = record;
                    state.stored = true;
                    let State {
                        record, pending, ..
                    } = &mut *state;
                    apply_changes(&mut record.attributes, pending)?;
                    self.refresh_index(state, &id).await?;
                }
                found => {
                    let pending = std::mem::take(&mut state.pending);
                    self.start_over(state, &id, found.is_some(), &pending)
                        .await?;
                }
            }
        }
        state.loaded = true;
        Ok(())
    }

    /// Loads the presented session `id` by applying `changes` to it in the store, in one step.
    /// Returns the new value of each increment among them. If the session does not exist (or
    /// has outlived its absolute lifetime), the changes go into a new session instead, as they
    /// would after a load that found nothing.
    async fn load_by_writing(
        &self,
        state: &mut State,
        id: &SessionId,
        changes: Vec<(String, Change)>,
    ) -> Result<Vec<i64>, StoreError> {
        let config = &self.inner.config;
        let store = &self.inner.store;
        let found = store
            .update_and_load(id, &changes, config.idle_timeout, config.max_lifetime)
            .await?;
        state.loaded = true;
        match found {
            Some((record, values)) if !self.outlived(&record) => {
                state.record = record;
                state.stored = true;
                self.refresh_index(state, id).await?;
                Ok(values)
            }
            found => self.start_over(state, id, found.is_some(), &changes).await,
        }
    }

    /// What follows a load that found no live session `id`: a record that was found had
    /// outlived its lifetime, so it is deleted now and whatever is bound to it (sockets) is
    /// told; and a new session, if anything is written, starts with `changes`.
    async fn start_over(
        &self,
        state: &mut State,
        id: &SessionId,
        outlived: bool,
        changes: &[(String, Change)],
    ) -> Result<Vec<i64>, StoreError> {
        if outlived && self.inner.store.delete(id).await? {
            self.announce_end(id).await;
        }
        state.id = None;
        apply_changes(&mut state.record.attributes, changes)
    }

    /// Keeps a logged-in session's index entry from lapsing while the session is in use:
    /// at most once per half idle timeout, one index write and one attribute write.
    async fn refresh_index(&self, state: &mut State, id: &SessionId) -> Result<(), StoreError> {
        let attributes = &state.record.attributes;
        let Some(principal) = attributes.get(PRINCIPAL).and_then(|p| p.as_str()) else {
            return Ok(());
        };
        let indexed = attributes.get(INDEXED).and_then(Value::as_u64).unwrap_or(0);
        let half_idle = self.inner.config.idle_timeout.as_millis() as u64 / 2;
        if now_ms() < indexed.saturating_add(half_idle) {
            return Ok(());
        }
        self.inner
            .store
            .index_add(principal, id, self.index_keep())
            .await?;
        let now = Value::from(now_ms());
        state
            .record
            .attributes
            .insert(INDEXED.to_owned(), now.clone());
        state.pending.push((INDEXED.to_owned(), Change::Set(now)));
        Ok(())
    }

    fn outlived(&self, record: &Record) -> bool {
        lifetime_left(self.inner.config.max_lifetime, record.created_ms, now_ms())
            .is_some_and(|left| left.is_zero())
    }

    /// The expiry to give a record on write: the idle timeout, cut short by the absolute
    /// lifetime.
    fn ttl(&self, record: &Record) -> Duration {
        let config = &self.inner.config;
        expiry(
            config.idle_timeout,
            config.max_lifetime,
            record.created_ms,
            now_ms(),
        )
    }
}

impl State {
    fn reset_after_end(&mut self) {
        self.id = None;
        self.stored = false;
        self.record = Record::new();
        self.pending.clear();
        self.ended = true;
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "session_layer_missing",
                "the Session extractor needs SessionLayer on the route",
            )
        })
    }
}
