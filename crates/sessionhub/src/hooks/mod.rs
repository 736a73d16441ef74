//! Let the application decide: who may connect and as whom, who may join which channel,
//! what a client's message does, and how long a connection may live. Embedders implement
//! [`Hooks`] in Rust and give it to [`Gateway::with_hooks`](crate::gateway::Gateway::with_hooks);
//! `sessionhub serve` uses [`HttpHooks`], which asks the application's backend over HTTP
//! (`docs/hooks.md` has both contracts).
//!
//! Without hooks the gateway never calls any of this: the checks stay the built-in ones
//! (session, token, channel rules) and a connection pays nothing for the feature. With
//! hooks the built-in checks still run first; a hook can only narrow them, never let in a
//! client they refused.

mod http;

pub use self::http::{FailurePolicy, HttpHooks, InvalidProxyUrl, ProxyConfig};

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use axum::http::HeaderMap;
use serde_json::value::RawValue;

use crate::protocol::UserId;
use crate::session::SessionId;

/// The close code of a refusal that named no code of its own (or one outside 4000-4999).
pub const DENIED: u16 = 4403;
/// The close code when a hook could not be asked (timeout, error) and the failure policy
/// is to deny: reconnecting later may work.
pub const UNAVAILABLE: u16 = 4503;
/// The close code of a connection whose lifetime (the connect hook's `expire_at`) ran out
/// and was not extended by the refresh hook.
pub const EXPIRED: u16 = 4430;

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Protocol v1 over WebSocket (`GET /ws`).
    WebSocket,
    /// Protocol v1 over Server-Sent Events (`GET /sse`, `POST /sse/publish`).
    Sse,
}

impl Transport {
    /// Its name in the HTTP hooks' JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// Who a hook is asked about: the connection (or the `POST /sse/publish` request).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user, as the built-in authentication (or an earlier connect hook) found it.
    pub user: UserId,
    /// The connection's id (`node/n`, as in the `connected` frame); `None` before it exists
    /// (the connect hook) and for `POST /sse/publish`.
    pub client: Option<String>,
    /// How it is connected.
    pub transport: Transport,
    /// The headers of the request that opened the connection (or of the publish request).
    /// All of them: [`HttpHooks`] forwards only the ones it is configured to.
    pub headers: Arc<HeaderMap>,
}

/// A refusal: the close code (connect, refresh) and the reason the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// A close code in 4000-4999; anything else is sent as [`DENIED`].
    pub code: u16,
    /// Why, for the client (a close reason is at most 123 bytes; longer ones are cut).
    pub reason: String,
}

impl Denial {
    /// A refusal with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// A refusal with the default code, [`DENIED`].
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(DENIED, reason)
    }

    /// The code to send: an application close code, else [`DENIED`].
    pub fn close_code(&self) -> u16 {
        if (4000..=4999).contains(&self.code) {
            self.code
        } else {
            DENIED
        }
    }

    /// The reason cut to what fits a WebSocket close frame (123 bytes), on a char boundary.
    pub fn close_reason(&self) -> &str {
        let mut end = self.reason.len().min(123);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        &self.reason[..end]
    }
}

/// What the connect hook decided when it let the client in.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Connect as this user instead.
    pub user: Option<UserId>,
    /// Channels to join at once, as the server API's subscribe would (no channel rules).
    pub channels: Vec<String>,
    /// When the connection must end unless [`Hooks::refresh`] extends it.
    pub expire_at: Option<SystemTime>,
}

/// What to do with a client's publish.
#[derive(Debug, Clone)]
pub enum Publish {
    /// Publish it as sent.
    Allow,
    /// Publish this instead (any JSON).
    Replace(Box<RawValue>),
    /// Do not publish it: the application took it. The client's reply says `offset: 0`
    /// (not in history), as for any publication that is not kept.
    Handled,
}

/// The application's say in what clients do. Every method has a default that keeps the
/// built-in behaviour, so an implementation overrides only what it decides.
///
/// The methods are called on the connection's task, so a slow hook delays that
/// connection (and only it); bound their time.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// A client that passed the built-in checks wants to connect (protocol v1, WebSocket or
    /// SSE). `Err` refuses it: a WebSocket is closed with the code, an SSE stream answered
    /// 403 (503 for [`UNAVAILABLE`]).
    async fn connect(&self, caller: &Caller) -> Result<Connect, Denial> {
        let _ = caller;
        Ok(Connect::default())
    }

    /// The client asks to join `channel` (after the channel rules allowed it). `Err`
    /// refuses with v1's `error` reply, code `denied` (over SSE: 403).
    async fn subscribe(&self, caller: &Caller, channel: &str) -> Result<(), Denial> {
        let _ = (caller, channel);
        Ok(())
    }

    /// The client publishes `data` to `channel` (after the channel rules allowed it).
    /// `Err` refuses as [`Hooks::subscribe`] does.
    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &RawValue,
    ) -> Result<Publish, Denial> {
        let _ = (caller, channel, data);
        Ok(Publish::Allow)
    }

    /// The connection's lifetime set by [`Connect::expire_at`] is about to run out: the new
    /// end, or `Ok(None)` / `Err` to let it close at the end it has ([`EXPIRED`], or the
    /// refusal's code).
    async fn refresh(&self, caller: &Caller) -> Result<Option<SystemTime>, Denial> {
        let _ = caller;
        Ok(None)
    }

    /// The connection closed, with `code` (0: the client left).
    async fn disconnect(&self, caller: &Caller, code: u16, reason: &str) {
        let _ = (caller, code, reason);
    }

    /// A session was stored for the first time.
    async fn session_created(&self, id: &SessionId) {
        let _ = id;
    }

    /// A session ended (invalidated, rotated away, evicted, or past its lifetime).
    async fn session_destroyed(&self, id: &SessionId) {
        let _ = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_keep_to_application_close_codes_and_frame_sized_reasons() {
        assert_eq!(Denial::new(4001, "x").close_code(), 4001);
        assert_eq!(Denial::new(1000, "x").close_code(), DENIED);
        assert_eq!(Denial::new(5000, "x").close_code(), DENIED);
        let long = Denial::forbidden("é".repeat(100));
        assert_eq!(long.close_reason().len(), 122, "cut on a char boundary");
    }
}
