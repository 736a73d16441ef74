//! The Lua scripts, each in its own file under `scripts/` (`<component>_<operation>.lua`),
//! with what it takes and answers at its top. Fragments that several scripts share live in
//! `scripts/lib/` and are put in front of them at compile time.
//!
//! Every operation on a session or a channel's history is one script: one round trip, and
//! atomic (but a session's rotation on Redis Cluster, which spans two slots: see
//! `store/redis/rotation.rs`). redis-rs sends a script by its SHA1 (EVALSHA) and only on
//! NOSCRIPT its text.

use std::sync::LazyLock;

use ::redis::Script;

/// A script from `scripts/`, after the fragment from `scripts/lib/` it builds on, if any.
macro_rules! script {
    ($file:literal $(after $lib:literal)?) => {
        LazyLock::new(|| {
            Script::new(concat!(
                $(include_str!(concat!("scripts/lib/", $lib)),)?
                include_str!(concat!("scripts/", $file))
            ))
        })
    };
}

pub(crate) static STORE_LOAD: LazyLock<Script> = script!("store_load.lua");
pub(crate) static STORE_CREATE: LazyLock<Script> = script!("store_create.lua");
pub(crate) static STORE_UPDATE: LazyLock<Script> =
    script!("store_update.lua" after "store_changes.lua");
pub(crate) static STORE_UPDATE_LOAD: LazyLock<Script> =
    script!("store_update_load.lua" after "store_changes.lua");
pub(crate) static STORE_ROTATE: LazyLock<Script> =
    script!("store_rotate.lua" after "store_changes.lua");
pub(crate) static STORE_ROTATE_TAKE: LazyLock<Script> =
    script!("store_rotate_take.lua" after "store_changes.lua");
pub(crate) static STORE_ROTATE_RESTORE: LazyLock<Script> = script!("store_rotate_restore.lua");
pub(crate) static STORE_EXPIRES_IN: LazyLock<Script> = script!("store_expires_in.lua");
pub(crate) static STORE_INDEX_ADD: LazyLock<Script> =
    script!("store_index_add.lua" after "store_index.lua");
pub(crate) static STORE_INDEX_REMOVE: LazyLock<Script> =
    script!("store_index_remove.lua" after "store_index.lua");
pub(crate) static STORE_INDEX_LIST: LazyLock<Script> =
    script!("store_index_list.lua" after "store_index.lua");

pub(crate) static PRESENCE_BEAT: LazyLock<Script> = script!("presence_beat.lua");
pub(crate) static PRESENCE_WITHDRAW: LazyLock<Script> = script!("presence_withdraw.lua");
pub(crate) static PRESENCE_CHANNEL_SET: LazyLock<Script> = script!("presence_channel_set.lua");
pub(crate) static PRESENCE_CHANNEL_REAP: LazyLock<Script> = script!("presence_channel_reap.lua");
pub(crate) static PRESENCE_CHANNEL_STATS: LazyLock<Script> = script!("presence_channel_stats.lua");
pub(crate) static PRESENCE_CHANNEL_MEMBERS: LazyLock<Script> =
    script!("presence_channel_members.lua");

pub(crate) static LIMITS_TAKE: LazyLock<Script> = script!("limits_take.lua");
pub(crate) static WEBHOOK_PUSH: LazyLock<Script> = script!("webhook_push.lua");
pub(crate) static WEBHOOK_CLAIM: LazyLock<Script> = script!("webhook_claim.lua");
pub(crate) static WEBHOOK_ACK: LazyLock<Script> = script!("webhook_ack.lua");
pub(crate) static WEBHOOK_RETRY: LazyLock<Script> = script!("webhook_retry.lua");
pub(crate) static WEBHOOK_HOLD: LazyLock<Script> = script!("webhook_hold.lua");
pub(crate) static WEBHOOK_CANCEL: LazyLock<Script> = script!("webhook_cancel.lua");

pub(crate) static BROKER_PUBLISH_UNKEPT: LazyLock<Script> = script!("broker_publish_unkept.lua");
pub(crate) static BROKER_RECOVER: LazyLock<Script> =
    script!("broker_recover.lua" after "broker_epoch.lua");
pub(crate) static BROKER_HISTORY: LazyLock<Script> =
    script!("broker_history.lua" after "broker_epoch.lua");

/// The record format the session scripts write and accept; `scripts/lib/store_changes.lua`
/// spells it too (checked below).
pub(crate) const STORE_VERSION: &str = "1";

/// What the publish script is made for: one broker's history settings (see the top of
/// `broker_publish.lua` for why they are in its text) and the publish command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishSettings {
    pub(crate) size: usize,
    pub(crate) ttl_ms: u128,
    pub(crate) meta_ttl_ms: u128,
    pub(crate) idem_ms: u128,
    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    pub(crate) command: &'static str,
}

/// The publish script's text for one broker, its settings written into it (a `Script` is
/// made of it; the text is kept to load it where a pipeline finds it missing).
pub(crate) fn broker_publish_text(settings: PublishSettings) -> String {
    concat!(
        include_str!("scripts/lib/broker_epoch.lua"),
        include_str!("scripts/broker_publish.lua")
    )
    .replacen("{size}", &settings.size.to_string(), 1)
    .replacen("{ttl}", &settings.ttl_ms.to_string(), 1)
    .replacen("{meta_ttl}", &settings.meta_ttl_ms.to_string(), 1)
    .replacen("{idem}", &settings.idem_ms.to_string(), 1)
    .replacen("{publish}", settings.command, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lua_version_is_the_rust_version() {
        let changes = include_str!("scripts/lib/store_changes.lua");
        assert!(changes.contains(&format!("\nlocal VERSION = '{STORE_VERSION}'\n")));
    }

    #[test]
    fn publish_settings_are_written_into_the_text() {
        let text = broker_publish_text(PublishSettings {
            size: 100,
            ttl_ms: 300_000,
            meta_ttl_ms: 600_000,
            idem_ms: 120_000,
            command: "SPUBLISH",
        });
        let line = "\nlocal SIZE, TTL, META_TTL, IDEM = '100', '300000', '600000', '120000'\n";
        assert!(text.contains(line));
        assert!(text.contains("\nlocal PUBLISH = 'SPUBLISH'\n"));
        assert!(
            !text.contains("{size}") && !text.contains("{idem}") && !text.contains("{publish}")
        );
    }
}
