//! Session records in Redis, shared by every node.
//!
//! # Layout
//!
//! One hash per session, under the key `<prefix>session:{<id>}` (prefix `sessionhub:` by
//! default). The id sits in a `{...}` hash tag so that Redis Cluster routes by it (and keeps
//! a rotation's moving key, `<prefix>session:{<id>}:moving`, in the same slot); session ids
//! are base64url and never contain braces.
//!
//! | field        | value                                                          |
//! |--------------|----------------------------------------------------------------|
//! | `m:v`        | format version, `1`                                            |
//! | `m:created`  | creation time, decimal milliseconds since the Unix epoch      |
//! | `a:<name>`   | the attribute `<name>` as JSON text                            |
//!
//! The meta fields also keep the hash of a session without attributes in existence (Redis
//! deletes an empty hash). The key's TTL is the idle timeout; every operation that touches
//! the record slides it.
//! An integer attribute is stored as a plain decimal, so `HINCRBY` works on it as is.
//! Other `m:` fields are ignored, which leaves room for additions within version 1; a record
//! with any other version, a field outside `a:`/`m:`, or invalid JSON is undecodable: it
//! loads as no session. It is never written to unless it carries version 1: the scripts check
//! only the version, and `update_and_load` writes before the node decodes what it read.
//!
//! ## Index by principal
//!
//! One sorted set per principal, under `<prefix>principal:{<principal>}` (the principal
//! encoded as [`crate::redis::keys`] says): member = session
//! id, score = the entry's deadline in milliseconds since the Unix epoch, by the Redis
//! server's clock (`TIME` inside the script), so nodes with skewed clocks still agree on
//! the order and on what has lapsed. Every index script first drops the members whose
//! deadline has passed; the ones that add or remove a member then set the key's TTL to the
//! latest remaining deadline. So the key never outlives its last entry: a principal whose
//! sessions all expired leaves nothing behind, with nobody having to clean up, and a lapsed
//! member beside live ones lasts only until the principal's next index call.
//!
//! A session key and a principal key are in different hash slots by design: every index
//! script touches exactly one key, so none of this stands in the way of Redis Cluster.
//!
//! # Atomicity
//!
//! Every operation is one Lua script (`src/redis/scripts/store_*.lua`), so it is one round
//! trip and atomic; but a rotation on Redis Cluster, whose two ids are in different slots,
//! takes three steps ([`rotation`] says how it keeps the same guarantees). Redis does not
//! roll back a script that fails halfway, so the update scripts first compute every change
//! (with exact 64-bit arithmetic: Lua numbers are doubles) and only then write.
//!
//! Each command a script runs costs Redis CPU (the call, and turning its reply into Lua
//! values and back), so the scripts read once: one HMGET for the format version and the
//! values to increment (`update`, `rotate`), or one HGETALL that is at once the existence
//! check, the values to increment and the record returned (`update_and_load`).
//!
//! What the scripts answer is decoded in [`reply`].

mod reply;
mod rotation;

use std::sync::Arc;
use std::time::Duration;

use ::redis::{Script, ScriptInvocation, Value};
use async_trait::async_trait;
use serde_json::Value as Json;

use self::reply::{decode_fields, decode_json_reply, decode_outcome, failure, increments_of, text};
use super::{Change, Record, SessionStore, Updated, apply_results, now_ms};
use crate::error::StoreError;
use crate::redis::scripts::{self, STORE_VERSION as VERSION};
use crate::redis::{Keys, Managed, Mode, Reconnect, RedisConfig};
use crate::session::SessionId;

const FIELD_VERSION: &str = "m:v";
const FIELD_CREATED: &str = "m:created";
const ATTRIBUTE: &str = "a:";
const META: &str = "m:";

/// Session records in Redis (or anything that speaks its protocol and runs Lua scripts).
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Arc<Managed>,
    keys: Keys,
    /// On Redis Cluster, where a rotation's two ids are in different slots, it takes three
    /// steps instead of one script (see `rotation.rs`).
    cluster: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://`, or `rediss://` for TLS verified against the system's
    /// root certificates) and keeps every key under `prefix`.
    ///
    /// Fails if the server cannot be reached now; once connected, the connection is
    /// re-established on its own after a failure, and the calls made while it is down fail
    /// with [`StoreError::Unavailable`].
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let config = RedisConfig::new(url)
            .map_err(|e| StoreError::unavailable("redis", e))?
            .prefix(prefix);
        let connection = Managed::now(&config, Reconnect::SESSIONS)
            .await
            .map_err(|e| StoreError::unavailable("cannot connect to redis", e))?;
        Ok(Self::with(connection, &config))
    }

    /// Like [`RedisStore::connect`], but connects on first use: a node can start while
    /// Redis is down, answer 503 and stay unready, and serve as soon as Redis is back.
    pub fn lazy(config: &RedisConfig) -> Result<Self, StoreError> {
        let connection = Managed::lazy(config, Reconnect::SESSIONS)
            .map_err(|e| StoreError::unavailable("cannot set up redis", e))?;
        Ok(Self::with(connection, config))
    }

    fn with(connection: Managed, config: &RedisConfig) -> Self {
        Self {
            connection: Arc::new(connection),
            keys: config.keys().clone(),
            cluster: config.mode() == Mode::Cluster,
        }
    }

    /// Decodes a session hash given as its field/value pairs (what `HGETALL` returns), with
    /// the same rules as [`load`](SessionStore::load): `m:v` must be `1`, `m:created` decimal
    /// milliseconds, every `a:<name>` JSON text, and no field outside `a:`/`m:`. `None` if the
    /// hash is empty or is not such a record.
    ///
    /// For tools that read records from Redis directly, and for fuzzing the decoder.
    pub fn decode_hash(fields: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Option<Record> {
        let items: Vec<Vec<u8>> = fields
            .into_iter()
            .flat_map(|(field, value)| [field, value])
            .collect();
        decode_fields(&items).ok().flatten()
    }

    fn key(&self, id: &SessionId) -> String {
        self.keys.session(id.as_str())
    }

    /// A command failed: tell the connection (it may have to find a new primary).
    fn failed(&self, e: ::redis::RedisError) -> StoreError {
        self.connection.failed(&e);
        redis_error(e)
    }

    /// Runs an index script; each of them may run twice (see [`Repeat`]).
    async fn invoke_index(
        &self,
        script: &Script,
        principal: &str,
        args: &[&str],
    ) -> Result<Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(self.keys.principal(principal));
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke_with(&invocation, Repeat::IfLost).await
    }

    /// Runs a script once, whatever happens.
    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        self.invoke_with(invocation, Repeat::Never).await
    }

    async fn invoke_with(
        &self,
        invocation: &ScriptInvocation<'_>,
        repeat: Repeat,
    ) -> Result<Value, StoreError> {
        let mut connection = self.connection.get().await.map_err(redis_error)?;
        match invocation.invoke_async(&mut connection).await {
            Err(e) if repeat == Repeat::IfLost && lost(&e) => {
                tracing::debug!(error = %e, "redis store: connection lost, sending again");
                self.connection.failed(&e);
                let mut connection = self.connection.get().await.map_err(redis_error)?;
                invocation.invoke_async(&mut connection).await
            }
            result => result,
        }
        .map_err(|e| self.failed(e))
    }

    /// An invocation of `script` on `keys` with ARGV: the TTL in ms, `extra`, then each change
    /// as a triple (see `compute` in `scripts/lib/store_changes.lua`).
    fn changes_invocation<'s>(
        script: &'s Script,
        keys: &[String],
        ttl: Duration,
        extra: &[String],
        changes: &[(String, Change)],
    ) -> Result<ScriptInvocation<'s>, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(ttl_ms(ttl));
        for arg in extra {
            invocation.arg(arg);
        }
        for (name, change) in changes {
            let field = format!("{ATTRIBUTE}{name}");
            match change {
                Change::Set(value) => invocation.arg("s").arg(field).arg(json_text(value)?),
                Change::Remove => invocation.arg("r").arg(field).arg(""),
                Change::Incr(delta) => invocation.arg("i").arg(field).arg(delta.to_string()),
            };
        }
        Ok(invocation)
    }

    async fn apply(
        &self,
        script: &Script,
        keys: &[String],
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        let invocation = Self::changes_invocation(script, keys, ttl, &[], changes)?;
        let reply = self.invoke(&invocation).await?;
        decode_outcome(reply, changes)
    }
}

/// Whether a script may be sent again when its connection was lost under it.
///
/// A connection Redis closed while idle (its `timeout` setting, a proxy's or a managed
/// service's idle limit, `CLIENT KILL`) is found dead only by the next command, which fails
/// with "broken pipe" while `ConnectionManager` reconnects. redis-rs reports the same error
/// for a command that died in flight and may have run, so only a script that can run twice
/// without harm is sent again: one that reads, or sets what it sets to the same end (a
/// load slides the TTL it would slide anyway). Writes with increments, creations (a second
/// run would find the first's record) and rotations are sent once, and their caller sees
/// [`StoreError::Unavailable`]; what spares them the idle case is the PING that
/// [`Managed::get`] sends first on a connection left idle (`crate::redis::idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Never,
    IfLost,
}

/// Whether `error` means the connection is gone (the next `get` reconnects).
fn lost(error: &::redis::RedisError) -> bool {
    error.is_unrecoverable_error() || error.is_connection_dropped()
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        let mut invocation = scripts::STORE_LOAD.prepare_invoke();
        invocation.key(self.key(id)).arg(ttl_ms(ttl));
        let reply = self.invoke_with(&invocation, Repeat::IfLost).await?;
        let decoded = match &reply {
            Value::Nil => Ok(None),
            Value::Int(-1) => Err("the key is not a hash"),
            Value::BulkString(json) => decode_json_reply(json, 0).map(|(record, _)| record),
            _ => Err("unexpected reply"),
        };
        match decoded {
            Ok(record) => Ok(record),
            Err(reason) => {
                // Without the id: it is a credential. A corrupt record must not fail every
                // request that presents it, so it reads as no session.
                tracing::warn!(
                    reason,
                    "undecodable session record in redis; treating it as absent"
                );
                Ok(None)
            }
        }
    }

    async fn create(
        &self,
        id: &SessionId,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = scripts::STORE_CREATE.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(ttl_ms(ttl))
            .arg(FIELD_VERSION)
            .arg(VERSION)
            .arg(FIELD_CREATED)
            .arg(record.created_ms.to_string());
        for (name, value) in &record.attributes {
            invocation
                .arg(format!("{ATTRIBUTE}{name}"))
                .arg(json_text(value)?);
        }
        match self.invoke(&invocation).await? {
            Value::Int(created) => Ok(created == 1),
            other => Err(unexpected(&other)),
        }
    }

    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.apply(&scripts::STORE_UPDATE, &[self.key(id)], changes, ttl)
            .await
    }

    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        let oldest = match lifetime {
            // Capped like index deadlines, so that the difference stays exact in Lua; may be
            // negative for a lifetime longer than the epoch is old.
            Some(lifetime) => {
                (i128::from(now_ms()) - i128::from(index_keep_ms(lifetime))).to_string()
            }
            None => String::new(),
        };
        let keys = [self.key(id)];
        let invocation =
            Self::changes_invocation(&scripts::STORE_UPDATE_LOAD, &keys, ttl, &[oldest], changes)?;
        let reply = self.invoke(&invocation).await?;
        let json = match &reply {
            Value::BulkString(text) if text.first() == Some(&b'[') => text,
            _ => return failure(&reply, changes).map(|()| None),
        };
        let increments = changes
            .iter()
            .filter(|(_, change)| matches!(change, Change::Incr(_)))
            .count();
        match decode_json_reply(json, increments) {
            Ok((Some(mut record), results)) => {
                let results = increments_of(&results).ok_or_else(|| unexpected(&reply))?;
                apply_results(&mut record.attributes, changes, &results);
                Ok(Some((record, results)))
            }
            Ok((None, _)) => Ok(None),
            Err(reason) => {
                tracing::warn!(
                    reason,
                    "undecodable session record in redis; treating it as absent"
                );
                Ok(None)
            }
        }
    }

    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        if self.cluster {
            return self.rotate_across_slots(old, new, changes, ttl).await;
        }
        self.apply(
            &scripts::STORE_ROTATE,
            &[self.key(old), self.key(new)],
            changes,
            ttl,
        )
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let mut connection = self.connection.get().await.map_err(redis_error)?;
        let removed: i64 = ::redis::cmd("DEL")
            .arg(self.key(id))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(removed > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.connection.ping().await.map_err(redis_error)
    }

    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError> {
        let mut invocation = scripts::STORE_EXPIRES_IN.prepare_invoke();
        invocation.key(self.key(id)).arg(VERSION);
        match self.invoke_with(&invocation, Repeat::IfLost).await? {
            Value::Int(-2) => Ok(None),
            // A key without a TTL; this crate never writes one.
            Value::Int(-1) => Ok(Some(Duration::MAX)),
            Value::Int(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms as u64))),
            other => Err(unexpected(&other)),
        }
    }

    async fn index_add(
        &self,
        principal: &str,
        id: &SessionId,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let keep = index_keep_ms(keep).to_string();
        self.invoke_index(&scripts::STORE_INDEX_ADD, principal, &[id.as_str(), &keep])
            .await
            .map(drop)
    }

    async fn index_remove(&self, principal: &str, id: &SessionId) -> Result<(), StoreError> {
        self.invoke_index(&scripts::STORE_INDEX_REMOVE, principal, &[id.as_str()])
            .await
            .map(drop)
    }

    async fn index_list(&self, principal: &str) -> Result<Vec<SessionId>, StoreError> {
        let reply = self
            .invoke_index(&scripts::STORE_INDEX_LIST, principal, &[])
            .await?;
        let Value::Array(members) = &reply else {
            return Err(unexpected(&reply));
        };
        let mut ids = Vec::with_capacity(members.len());
        for member in members {
            match text(member).map(str::parse::<SessionId>) {
                Some(Ok(id)) => ids.push(id),
                // Only this store writes members, so this is someone else's data under our
                // prefix; skipping it keeps the user's other sessions listable.
                _ => tracing::warn!("skipping a malformed session id in a principal index"),
            }
        }
        Ok(ids)
    }
}

/// How long to keep an index entry, in milliseconds, capped so that the deadline (now plus
/// this) stays an exact integer both as a Lua number and as a sorted-set score (doubles,
/// exact below 2^53). 2^50 ms is some 35,000 years.
fn index_keep_ms(keep: Duration) -> u64 {
    const MAX_MS: u64 = 1 << 50;
    keep.as_millis().min(u128::from(MAX_MS)) as u64
}

/// The TTL in milliseconds as PEXPIRE takes it, capped far below the point where Redis
/// rejects it (now + ttl overflowing a signed 64-bit integer).
fn ttl_ms(ttl: Duration) -> u64 {
    const MAX_MS: u64 = 1 << 60;
    ttl.as_millis().min(u128::from(MAX_MS)) as u64
}

fn json_text(value: &Json) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::Encode)
}

fn redis_error(e: ::redis::RedisError) -> StoreError {
    StoreError::unavailable("redis", e)
}

fn unexpected(reply: &Value) -> StoreError {
    StoreError::unavailable(
        "redis",
        format!("unexpected reply from a session script: {reply:?}"),
    )
}
