//! Pusher's user sign-in (protocol 7), both directions, pure: what `pusher:signin` carries
//! and how it is signed, the signed-in user it names ([`SignedInUser`]), and the frames the
//! server answers with (`pusher:signin_success`, `pusher_internal:watchlist_events`). The
//! connection that uses them is `gateway/pusher/user.rs`; the other frames are in
//! [`super::pusher`].
//!
//! A signed-in user `U` gets the events sent to it on `#server-to-user-U` (what the Pusher
//! server SDKs' `sendToUser` publishes to, and what pusher-js subscribes to after
//! `pusher:signin_success`). No client may subscribe to that channel by name: the
//! Pusher endpoint grants it to the connection signed in as `U` only, and the name is not a
//! channel name protocol v1 clients may use (`#` is outside their alphabet).

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::UserId;

/// Where the events sent to a signed-in user go: `#server-to-user-<id>`.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// Most users one watchlist may name (Pusher's limit).
pub const MAX_WATCHLIST: usize = 100;

/// The channel of the events sent to `user`.
pub fn user_channel(user: &str) -> String {
    [USER_CHANNEL_PREFIX, user].concat()
}

/// The user whose channel `channel` (a Pusher name) is, if it is one and names a user id
/// a sign-in may have.
pub fn user_of_channel(channel: &str) -> Option<UserId> {
    signed_in_id(channel.strip_prefix(USER_CHANNEL_PREFIX)?)
}

/// `id` as the id of a signed-in user: a sessionhub user id without `:` (so letters,
/// digits and `- _ . @`, all of which Pusher allows), since a `:` would end an app's
/// namespace in the hub channel that carries the user's `#server-to-user-` channel.
fn signed_in_id(id: &str) -> Option<UserId> {
    id.parse().ok().filter(|_| !id.contains(':'))
}

/// The message a sign-in's `auth` signs: `socket_id::user::user_data`.
pub fn signed_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Who a `pusher:signin`'s `user_data` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    /// `id`, as sessionhub's user id.
    pub id: UserId,
    /// `user_info`, as JSON text, if any: the user's info on presence channels it joins
    /// without `channel_data`.
    pub info: Option<String>,
    /// `watchlist`: the users whose coming online and going offline the connection is told,
    /// without duplicates, in the order given.
    pub watchlist: Vec<UserId>,
}

/// Why `user_data` names no user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    /// Not a JSON object.
    #[error("user_data is the text of a JSON object with an id")]
    NotAnObject,
    /// No `id`, or one that is not a valid user id.
    #[error("user_data.id is a string of 1 to 128 letters, digits and - _ . @")]
    Id,
    /// `watchlist` is not an array of valid user ids.
    #[error("user_data.watchlist is an array of user ids (1 to 128 letters, digits and - _ . @)")]
    Watchlist,
    /// A longer watchlist than Pusher allows.
    #[error("user_data.watchlist names {0} users, over the {MAX_WATCHLIST} allowed")]
    WatchlistTooLong(usize),
}

impl SignedInUser {
    /// Reads `user_data` (the text that was signed).
    pub fn parse(user_data: &str) -> Result<Self, UserDataError> {
        #[derive(Deserialize)]
        struct Data<'a> {
            id: Option<Value>,
            #[serde(borrow)]
            user_info: Option<&'a RawValue>,
            watchlist: Option<Value>,
        }
        let data: Data<'_> =
            serde_json::from_str(user_data).map_err(|_| UserDataError::NotAnObject)?;
        // pusher-js takes a string id only (`user.ts`, `_onSigninSuccess`).
        let Some(Value::String(id)) = data.id else {
            return Err(UserDataError::Id);
        };
        let id = signed_in_id(&id).ok_or(UserDataError::Id)?;
        let info = data
            .user_info
            .map(|i| i.get().to_owned())
            .filter(|i| i != "null");
        let watched = match data.watchlist {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids,
            Some(_) => return Err(UserDataError::Watchlist),
        };
        if watched.len() > MAX_WATCHLIST {
            return Err(UserDataError::WatchlistTooLong(watched.len()));
        }
        let mut watchlist: Vec<UserId> = Vec::with_capacity(watched.len());
        for id in watched {
            let Value::String(id) = id else {
                return Err(UserDataError::Watchlist);
            };
            let id = signed_in_id(&id).ok_or(UserDataError::Watchlist)?;
            if !watchlist.contains(&id) {
                watchlist.push(id);
            }
        }
        Ok(Self {
            id,
            info,
            watchlist,
        })
    }

    /// The `channel_data` of this user on a presence channel it joins without one
    /// (pusher-js sends none when the connection is signed in).
    pub fn channel_data(&self) -> String {
        let info = self.info.as_deref().map(crate::presence::raw_info);
        serde_json::json!({"user_id": self.id.as_str(), "user_info": info}).to_string()
    }
}

/// `pusher:signin_success`, with the `user_data` that was signed, as pusher-js parses it.
pub fn signin_success(user_data: &str) -> String {
    let data = serde_json::json!({"user_data": user_data});
    super::pusher::frame("pusher:signin_success", None, &data.to_string())
}

/// `pusher_internal:watchlist_events`: the `online` users came (or are) online, the
/// `offline` ones went (or are) offline, as `{"events":[{"name":"online","user_ids":[…]},
/// {"name":"offline","user_ids":[…]}]}` without the empty ones.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let events: Vec<Value> = [("online", online), ("offline", offline)]
        .into_iter()
        .filter(|(_, users)| !users.is_empty())
        .map(|(name, users)| serde_json::json!({"name": name, "user_ids": users}))
        .collect();
    let data = serde_json::json!({ "events": events });
    super::pusher::frame("pusher_internal:watchlist_events", None, &data.to_string())
}

/// Whether a `join` or `leave` frame of the hub's presence tracker (on the events channel
/// of `#server-to-user-<user>`) says the user came online (`true`) or went offline, and who.
pub fn presence_change(frame: &str) -> Option<(bool, String)> {
    #[derive(Deserialize)]
    struct Change<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        user: String,
    }
    let change: Change<'_> = serde_json::from_str(frame).ok()?;
    match change.kind {
        "join" => Some((true, change.user)),
        "leave" => Some((false, change.user)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(frame: &str) -> Value {
        let mut frame: Value = serde_json::from_str(frame).unwrap();
        frame["data"] = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        frame
    }

    #[test]
    fn user_data_names_a_user_with_info_and_a_watchlist() {
        let user = SignedInUser::parse(
            r#"{"id":"u-1","user_info":{"name":"Ann"},"watchlist":["u-2","u-3","u-2"]}"#,
        )
        .unwrap();
        assert_eq!(user.id.as_str(), "u-1");
        assert_eq!(user.info.as_deref(), Some(r#"{"name":"Ann"}"#));
        let watched: Vec<&str> = user.watchlist.iter().map(UserId::as_str).collect();
        assert_eq!(watched, ["u-2", "u-3"], "duplicates dropped");
        assert_eq!(
            serde_json::from_str::<Value>(&user.channel_data()).unwrap(),
            json!({"user_id": "u-1", "user_info": {"name": "Ann"}})
        );
        let bare = SignedInUser::parse(r#"{"id":"7"}"#).unwrap();
        assert_eq!((bare.info, bare.watchlist.len()), (None, 0));
    }

    #[test]
    fn bad_user_data_is_refused_with_a_reason() {
        let long =
            json!({"id": "a", "watchlist": (0..101).map(|n| n.to_string()).collect::<Vec<_>>()});
        for (bad, error) in [
            ("", UserDataError::NotAnObject),
            ("[]", UserDataError::NotAnObject),
            ("{}", UserDataError::Id),
            (r#"{"id":""}"#, UserDataError::Id),
            (r#"{"id":42}"#, UserDataError::Id),
            (r#"{"id":"a b"}"#, UserDataError::Id),
            (r#"{"id":"a:b"}"#, UserDataError::Id),
            (r#"{"id":"a","watchlist":"b"}"#, UserDataError::Watchlist),
            (r#"{"id":"a","watchlist":[1]}"#, UserDataError::Watchlist),
            (
                r#"{"id":"a","watchlist":["b c"]}"#,
                UserDataError::Watchlist,
            ),
            (&long.to_string(), UserDataError::WatchlistTooLong(101)),
        ] {
            assert_eq!(SignedInUser::parse(bad), Err(error), "{bad}");
        }
    }

    #[test]
    fn frames_and_names() {
        assert_eq!(
            signed_message("1.2", r#"{"id":"a"}"#),
            r#"1.2::user::{"id":"a"}"#
        );
        assert_eq!(user_channel("a"), "#server-to-user-a");
        assert_eq!(
            user_of_channel("#server-to-user-a").map(|u| u.to_string()),
            Some("a".into())
        );
        assert_eq!(user_of_channel("#server-to-user-a b"), None);
        assert_eq!(user_of_channel("#server-to-user-a:b"), None);
        assert_eq!(user_of_channel("server-to-user-a"), None);
        let success = parsed(&signin_success(r#"{"id":"a"}"#));
        assert_eq!(
            success,
            json!({"event": "pusher:signin_success", "data": {"user_data": "{\"id\":\"a\"}"}})
        );
        let online = parsed(&watchlist_events(&["a", "b"], &[]));
        assert_eq!(
            online,
            json!({"event": "pusher_internal:watchlist_events",
                "data": {"events": [{"name": "online", "user_ids": ["a", "b"]}]}})
        );
        let both = parsed(&watchlist_events(&["a"], &["c"]));
        assert_eq!(
            both["data"]["events"],
            json!([{"name": "online", "user_ids": ["a"]}, {"name": "offline", "user_ids": ["c"]}])
        );
        assert_eq!(
            presence_change(
                r##"{"type":"leave","channel":"#server-to-user-b","user":"b","version":2}"##
            ),
            Some((false, "b".into()))
        );
        assert_eq!(presence_change("nonsense"), None);
    }
}
