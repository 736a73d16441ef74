//! Rotation on Redis Cluster: moving a session to a new id when the two ids hash to
//! different slots.
//!
//! With one server (or Sentinel) a rotation is one script (`store_rotate.lua`) that renames
//! the record. On a cluster that script fails with `CROSSSLOT`: the old and the new key are
//! in the slots of their ids, usually on different primaries, and no command or script spans
//! two slots. So there a rotation takes three round trips, only there and only for a rotation
//! (the session layer rotates at login and on privilege changes, not per request):
//!
//! 1. On the old id's slot (`store_rotate_take.lua`): check that the old id holds a session
//!    of this format and that the changes apply to it (an increment of a non-integer fails
//!    here, with nothing changed), then rename the record, unchanged, to its *moving* key
//!    (`<session key>:moving`, the same hash tag, so the same slot) with a short TTL, and
//!    answer the record as it will be after the changes. From this instant the old id is no
//!    session for anyone: an update racing the rotation either ran before it and is carried
//!    over, or finds no session ([`Updated::Missing`], as after a rotation in one step), so no
//!    acknowledged update is lost; a logout (`delete`) racing it either ran before it (the
//!    rotation then finds nothing: [`Updated::Missing`]) or deletes nothing, exactly as when it
//!    comes after a one-step rotation.
//! 2. On the new id's slot (`store_create.lua`, which is exactly "write this record unless
//!    the id is taken"): write the record under the new id with the session's TTL.
//! 3. Created: delete the moving key. Taken (ids are 256 random bits, so this is a bug):
//!    put the record back under the old id (`store_rotate_restore.lua`, which renames it
//!    back unless the old id holds a record again) and answer
//!    [`StoreError::RotationTargetTaken`], as the one-step script does.
//!
//! If the outcome of step 2 is unknown (the connection was lost or the reply timed out after
//! the script was sent), the old id is *not* put back: if step 2 did run, both ids would then
//! be valid, which is session fixation's precondition. The moving key is left to expire and
//! the caller gets [`StoreError::Unavailable`]; at worst the user signs in again. Step 2 is
//! put back only when the cluster refused it (`MOVED`, `CLUSTERDOWN`... once the connection's
//! own resending gave up), since then it did not run. This is also why the cluster connection
//! never resends a command on its own after a lost connection (see `redis/managed.rs`): a
//! resent step 2 would find its own record and answer "taken".
//!
//! Nothing between the steps makes a session reappear: only this rotation knows the moving
//! key, and no reader or writer of either id looks at it. A crash between steps 1 and 2
//! loses the session (the moving key expires after [`MOVING_TTL`]); it never duplicates it.
//! If step 1's reply is lost, the record sits in the moving key unused until it expires and
//! the caller gets [`StoreError::Unavailable`]: the same end as a crash.
//!
//! What a cluster rotation does not promise that the one-step script does: between steps 1
//! and 2 (one round trip) neither id loads; and a rotation refused for a taken target lets a
//! concurrent `delete` of the old id answer `false` although the session is then put back.

use std::time::Duration;

use ::redis::Value;

use super::reply::{failure, increments_of, text};
use super::{RedisStore, redis_error, ttl_ms, unexpected};
use crate::error::StoreError;
use crate::redis::{Managed, scripts};
use crate::session::SessionId;
use crate::store::{Change, Updated};

/// How long a record waits under its moving key for the second step: far longer than a
/// rotation's round trips take, short enough that a rotation cut off by a crash does not keep
/// a copy of the session for long.
pub(super) const MOVING_TTL: Duration = Duration::from_secs(60);

impl RedisStore {
    /// [`rotate`](crate::store::SessionStore::rotate) in three steps, for Redis Cluster (see
    /// the module doc).
    pub(super) async fn rotate_across_slots(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        let moving = self.keys.session_moving(old.as_str());
        let keys = [self.key(old), moving.clone()];
        let take =
            Self::changes_invocation(&scripts::STORE_ROTATE_TAKE, &keys, MOVING_TTL, &[], changes)?;
        let reply = self.invoke(&take).await?;
        let (increments, fields) = match &reply {
            Value::Array(parts) => match parts.as_slice() {
                [Value::Array(increments), Value::Array(fields)] => (increments, fields),
                _ => return Err(unexpected(&reply)),
            },
            _ => return failure(&reply, changes).map(|()| Updated::Missing),
        };
        let increments = increments
            .iter()
            .map(|v| text(v).map(str::as_bytes))
            .collect::<Option<Vec<_>>>()
            .and_then(|texts| increments_of(&texts))
            .ok_or_else(|| unexpected(&reply))?;

        let mut create = scripts::STORE_CREATE.prepare_invoke();
        create.key(self.key(new)).arg(ttl_ms(ttl));
        for field in fields {
            let Value::BulkString(bytes) = field else {
                return Err(unexpected(&reply));
            };
            create.arg(bytes.as_slice());
        }
        let mut connection = self.connection.get().await.map_err(redis_error)?;
        match create.invoke_async(&mut connection).await {
            Ok(Value::Int(1)) => {
                self.forget(&moving).await;
                Ok(Updated::Applied(increments))
            }
            Ok(Value::Int(0)) => {
                self.restore(&moving, old, ttl).await;
                Err(StoreError::RotationTargetTaken)
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) if Managed::refused(&e) => {
                self.restore(&moving, old, ttl).await;
                Err(self.failed(e))
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "a session rotation's outcome is unknown; its old id stays withdrawn"
                );
                Err(self.failed(e))
            }
        }
    }

    /// Deletes the moving key of a finished rotation; if that fails, it expires anyway.
    async fn forget(&self, moving: &str) {
        let deleted = async {
            let mut connection = self.connection.get().await?;
            ::redis::cmd("DEL")
                .arg(moving)
                .query_async::<()>(&mut connection)
                .await
        };
        if let Err(e) = deleted.await {
            self.connection.failed(&e);
            tracing::debug!(error = %e, "a rotated session's moving key is left to expire");
        }
    }

    /// Puts the record back under its old id after a second step that did not run.
    async fn restore(&self, moving: &str, old: &SessionId, ttl: Duration) {
        let mut invocation = scripts::STORE_ROTATE_RESTORE.prepare_invoke();
        invocation.key(moving).key(self.key(old)).arg(ttl_ms(ttl));
        match self.invoke(&invocation).await {
            Ok(Value::Int(1)) => {}
            Ok(_) => tracing::warn!("a session whose rotation failed could not be put back"),
            Err(e) => tracing::warn!(
                error = %e,
                "a session whose rotation failed could not be put back"
            ),
        }
    }
}
