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
//! the store at once and applied there, so concurrent requests never lose one.

mod id;
mod layer;

pub use self::id::{MalformedId, SessionId};
pub use self::layer::{SessionLayer, SessionService};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::{ApiError, StoreError};
use crate::store::{Attributes, Change, Record, SessionStore, Updated, apply_changes, now_ms};

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
        }
    }
}

/// The session of the current request. Extract it in a handler; clones share state.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    config: Arc<SessionConfig>,
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
    /// Changes to a stored record not yet written.
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
        presented: Option<SessionId>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
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
        let mut state = self.loaded().await?;
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
        let mut state = self.loaded().await?;
        let change = (name.to_owned(), Change::Incr(delta));
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
        Ok(())
    }

    /// Ends the session: the store forgets it now, and the client is told to drop the id.
    /// Writes after this go into a new session.
    pub async fn invalidate(&self) -> Result<(), StoreError> {
        let mut state = self.inner.state.lock().await;
        if let Some(id) = state.id.clone().filter(|_| state.stored || !state.loaded) {
            self.inner.store.delete(&id).await?;
        }
        state.loaded = true;
        state.reset_after_end();
        Ok(())
    }

    /// Writes what the handler changed. Called by the layer after the handler returns.
    pub(crate) async fn finish(&self) -> Result<Outcome, StoreError> {
        let mut state = self.inner.state.lock().await;
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
        if state.loaded {
            return Ok(state);
        }
        if let Some(id) = state.presented.clone() {
            let config = &self.inner.config;
            match self.inner.store.load(&id, config.idle_timeout).await? {
                Some(record) if !self.outlived(&record) => {
                    state.record = record;
                    state.stored = true;
                }
                Some(_) => {
                    self.inner.store.delete(&id).await?;
                    state.id = None;
                }
                None => state.id = None,
            }
        }
        state.loaded = true;
        Ok(state)
    }

    fn outlived(&self, record: &Record) -> bool {
        self.inner
            .config
            .max_lifetime
            .is_some_and(|max| now_ms() >= record.created_ms.saturating_add(max.as_millis() as u64))
    }

    /// The expiry to give a record on write: the idle timeout, cut short by the absolute
    /// lifetime.
    fn ttl(&self, record: &Record) -> Duration {
        let config = &self.inner.config;
        let idle = config.idle_timeout;
        match config.max_lifetime {
            Some(max) => {
                let end = record.created_ms.saturating_add(max.as_millis() as u64);
                let left = Duration::from_millis(end.saturating_sub(now_ms()).max(1));
                idle.min(left)
            }
            None => idle,
        }
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
