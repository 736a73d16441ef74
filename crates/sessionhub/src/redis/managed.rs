//! A connection that reconnects by itself and, under Sentinel, follows the primary.
//!
//! redis-rs' `ConnectionManager` reconnects to the address it was made with, and so keeps
//! knocking on a primary that died or was demoted by a failover. [`Managed`] keeps one
//! `ConnectionManager` and, in [`Mode::Sentinel`](super::Mode::Sentinel), drops it when a
//! command says its server is gone or no longer the primary, so that the next command asks
//! the Sentinels again. With one Redis server it is just the `ConnectionManager`.

use std::sync::Mutex;

use ::redis::RedisResult;
use ::redis::aio::ConnectionManager;

use super::{Mode, Reconnect, RedisConfig, is_not_primary};

/// A self-reconnecting connection for the session store and presence.
pub(crate) struct Managed {
    config: RedisConfig,
    reconnect: Reconnect,
    /// With one server, the connection for good: no lock on the way to it (a session
    /// request's hot path).
    fixed: Option<ConnectionManager>,
    /// Under Sentinel, the connection to the primary as last found, if any.
    current: Mutex<Option<ConnectionManager>>,
    /// Held while a connection is being set up, so that a burst of commands after a
    /// failover asks the Sentinels once, not once each.
    opening: tokio::sync::Mutex<()>,
}

impl Managed {
    /// A connection opened on first use, so a node can start while Redis is down.
    pub(crate) fn lazy(config: &RedisConfig, reconnect: Reconnect) -> RedisResult<Self> {
        let fixed = match config.standalone_client() {
            Some(client) => Some(ConnectionManager::new_lazy_with_config(
                client,
                reconnect.config(),
            )?),
            None => None,
        };
        Ok(Self::with(config, reconnect, fixed))
    }

    /// A connection opened now: fails if Redis cannot be reached.
    pub(crate) async fn now(config: &RedisConfig, reconnect: Reconnect) -> RedisResult<Self> {
        let client = config.client().await?;
        let connection = ConnectionManager::new_with_config(client, reconnect.config()).await?;
        let mut managed = Self::with(config, reconnect, None);
        match config.mode() {
            Mode::Standalone => managed.fixed = Some(connection),
            Mode::Sentinel | Mode::Cluster => managed.current = Mutex::new(Some(connection)),
        }
        Ok(managed)
    }

    fn with(config: &RedisConfig, reconnect: Reconnect, fixed: Option<ConnectionManager>) -> Self {
        Self {
            config: config.clone(),
            reconnect,
            fixed,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<ConnectionManager> {
        self.current.lock().expect("never poisoned").clone()
    }

    /// The connection to send a command on (a cheap clone sharing it).
    pub(crate) async fn get(&self) -> RedisResult<ConnectionManager> {
        if let Some(connection) = &self.fixed {
            return Ok(connection.clone());
        }
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _opening = self.opening.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let client = self.config.client().await?;
        let connection = ConnectionManager::new_lazy_with_config(client, self.reconnect.config())?;
        *self.current.lock().expect("never poisoned") = Some(connection.clone());
        Ok(connection)
    }

    /// Tells the connection that a command on it failed with `error`. Under Sentinel, an
    /// error that means the server is gone or is no longer the primary makes the next
    /// command ask the Sentinels again; with one server, `ConnectionManager` reconnects by
    /// itself.
    pub(crate) fn failed(&self, error: &::redis::RedisError) {
        if self.fixed.is_some() {
            return;
        }
        if error.is_unrecoverable_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_timeout()
            || is_not_primary(error)
        {
            *self.current.lock().expect("never poisoned") = None;
        }
    }
}
