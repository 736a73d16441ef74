//! `pusher:signin` on a Pusher connection: the signed-in user, the events sent to it, and
//! its watchlist. The frames are [`crate::protocol::pusher_user`]'s.
//!
//! Signing in as `U` (the app's signature of `socket_id::user::user_data` checked in
//! constant time) joins the hub channel `#server-to-user-U`, counted in presence as `U`:
//! what the Pusher server SDKs' `sendToUser` publishes there reaches every connection
//! signed in as `U` on every node, and `U` is online, cluster-wide, while some connection
//! is signed in as `U` (the presence backend decides when the first comes and the last
//! goes, a killed node's included). The connection becomes `U`'s hub connection too
//! ([`Connection::rename`]), so `terminate_connections` of `U` closes it wherever it is.
//! With several apps, all of these are behind the app's namespace (hub channel
//! `{namespace}#server-to-user-U`, hub user `{namespace}U`): each app's users are its own.
//!
//! The watchlist reuses that presence: a watcher joins the presence events channel of each
//! watched user's `#server-to-user-…` (without being counted there), so it hears of exactly
//! the users it watches, and asks the presence backend who of them is online right after.
//! Each watched user's last known state is kept here, so an event that crosses the first
//! look is not told twice.
//!
//! A bad signature or `user_data` is answered as Pusher answers an unauthorized
//! connection: `pusher:error` with code 4009, then a close with 4009 (pusher-js does not
//! reconnect, since the same signature would be refused again). A second sign-in of a
//! signed-in connection is refused with `pusher:error` and the connection stays as it was.

use std::collections::HashMap;

use futures_util::future::join_all;
use tungstenite::Utf8Bytes;

use super::super::state::Gateway;
use crate::hub::{Connection, Delivery, PRESENCE_EVENTS_PREFIX, presence_events_channel};
use crate::protocol::UserId;
use crate::protocol::pusher::{self, close};
use crate::protocol::pusher_user::{self as user, SignedInUser};
use crate::pusher::PusherApp;

/// A connection's sign-in.
pub(super) struct SignedIn {
    /// Who `user_data` named.
    pub(super) user: SignedInUser,
    /// The app's namespace ([`PusherApp::namespace`]), in front of every hub channel below.
    namespace: String,
    /// The hub channel of `#server-to-user-<id>`.
    channel: String,
    /// Watched user -> whether they are online, as last told to the client.
    watched: HashMap<String, bool>,
    /// The hub channels the sign-in joined (the user's, and one per watched user).
    pub(super) hub_channels: usize,
}

impl SignedIn {
    /// What to send for a delivery on the sign-in's channels: the event sent to the user,
    /// or a watched user's coming online or going offline when that is news; `None` for
    /// anything else (others' channels, an event excluding `socket_id`, no news).
    pub(super) fn outbound(&mut self, delivery: &Delivery, socket_id: &str) -> Option<Utf8Bytes> {
        let channel = delivery.channel();
        if channel == self.channel {
            let except = delivery.envelope().and_then(|e| e.except.as_deref());
            return (except != Some(socket_id)).then(|| delivery.pusher_frame());
        }
        let watched = channel
            .strip_prefix(PRESENCE_EVENTS_PREFIX)?
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(user::USER_CHANNEL_PREFIX)?;
        let (online, who) = user::presence_change(delivery.publication().data.as_str())?;
        let known = self.watched.get_mut(watched).filter(|_| who == watched)?;
        if *known == online {
            return None;
        }
        *known = online;
        let (on, off): (&[&str], &[&str]) = if online {
            (&[watched], &[])
        } else {
            (&[], &[watched])
        };
        Some(user::watchlist_events(on, off).into())
    }

    /// Answers `pusher:subscribe` to `#server-to-user-…` (which pusher-js sends after
    /// `pusher:signin_success`): granted to the connection signed in as that user only.
    pub(super) fn subscribe(this: Option<&Self>, channel: &str) -> String {
        if this.is_some_and(|s| s.channel.strip_prefix(s.namespace.as_str()) == Some(channel)) {
            return pusher::subscription_succeeded(channel, "{}");
        }
        let message = "a #server-to-user- channel is the signed-in user's own: pusher:signin \
                       as that user first";
        pusher::subscription_error(channel, "AuthError", 403, message)
    }
}

/// Answers `pusher:signin`: the frames to send and the connection stays (signed in, or
/// refused with `pusher:error`), or `Err` with the `pusher:error` to send before closing
/// with 4009.
#[allow(clippy::too_many_arguments)]
pub(super) async fn sign_in(
    signed_in: &mut Option<SignedIn>,
    app: &PusherApp,
    socket_id: &str,
    auth: Option<String>,
    user_data: String,
    connection: &mut Connection,
    gateway: &Gateway,
) -> Result<Vec<String>, String> {
    let refuse = |message: &str| pusher::error(Some(close::UNAUTHORIZED.0), message);
    let message = user::signed_message(socket_id, &user_data);
    if !app.verify_auth(auth.as_deref(), &message) {
        return Err(refuse(
            "invalid signature: auth must be KEY:HMAC-SHA256(secret, socket_id::user::user_data)",
        ));
    }
    let user = SignedInUser::parse(&user_data).map_err(|e| refuse(&e.to_string()))?;
    if user
        .info
        .as_ref()
        .is_some_and(|i| i.len() > app.max_user_info_bytes)
    {
        let limit = app.max_user_info_bytes;
        return Err(refuse(&format!(
            "user_data.user_info is over {limit} bytes"
        )));
    }
    if let Some(current) = signed_in {
        let message = format!(
            "already signed in as {}: a connection signs in once",
            current.user.id
        );
        return Ok(vec![pusher::error(None, &message)]);
    }
    let namespace = app.namespace().to_owned();
    // The hub user the connection becomes: the app's, so that another app's
    // `terminate_connections` of the same id leaves it alone.
    let Ok(hub_user) = [namespace.as_str(), user.id.as_str()]
        .concat()
        .parse::<UserId>()
    else {
        let message = format!("user_data.id is too long for app {}'s namespace", app.id);
        return Err(refuse(&message));
    };
    let channel = [namespace.as_str(), &user::user_channel(user.id.as_str())].concat();
    let joined = join(&user, &namespace, &channel, connection, gateway).await;
    let (watched, hub_channels) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            let message = format!("cannot sign in now: {e}");
            return Ok(vec![pusher::error(Some(close::OVER_CAPACITY.0), &message)]);
        }
    };
    connection.rename(&hub_user);
    let mut frames = vec![user::signin_success(&user_data)];
    if !watched.is_empty() {
        let ids = |online: bool| {
            let mut ids: Vec<&str> = (watched.iter())
                .filter(|(_, o)| **o == online)
                .map(|(id, _)| id.as_str())
                .collect();
            ids.sort_unstable();
            ids
        };
        frames.push(user::watchlist_events(&ids(true), &ids(false)));
    }
    *signed_in = Some(SignedIn {
        user,
        namespace,
        channel,
        watched,
        hub_channels,
    });
    Ok(frames)
}

/// Joins the user's channel (counted in presence as the user) and the presence events of
/// every watched user's, then asks who of them is online: each watched user's state, and
/// how many hub channels were joined. On an error, leaves what it joined.
async fn join(
    user: &SignedInUser,
    namespace: &str,
    channel: &str,
    connection: &mut Connection,
    gateway: &Gateway,
) -> Result<(HashMap<String, bool>, usize), String> {
    connection
        .join_as(channel, &user.id, user.info.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut joined = vec![channel.to_owned()];
    // Without presence on user channels (a library gateway that tracks none), there is no
    // one to watch: the sign-in works, the watchlist stays silent.
    let watching = gateway.hub.has_presence(channel);
    let watchlist: Vec<&UserId> = user.watchlist.iter().filter(|_| watching).collect();
    let result = async {
        for watched in &watchlist {
            if **watched == user.id {
                // Its own presence events come with its channel already.
                continue;
            }
            let watched = [namespace, &user::user_channel(watched.as_str())].concat();
            let events = presence_events_channel(&watched);
            connection.join(&events).await.map_err(|e| e.to_string())?;
            joined.push(events);
        }
        // Asked after joining, so that no change falls between the look and the events.
        let looks = watchlist.iter().map(|watched| async move {
            let channel = [namespace, &user::user_channel(watched.as_str())].concat();
            let stats = gateway.presence.stats(&channel).await;
            stats.map(|s| (watched.as_str().to_owned(), s.users > 0))
        });
        let states = join_all(looks).await;
        states
            .into_iter()
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(watched) => Ok((watched, joined.len())),
        Err(e) => {
            for channel in &joined {
                connection.leave(channel);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Envelope, Publication};

    fn publication(data: tungstenite::Utf8Bytes) -> Publication {
        Publication {
            offset: 0,
            epoch: "".into(),
            data,
        }
    }

    /// A `join` or `leave` of `user`'s sign-ins, as the hub's presence tracker sends it.
    fn change(kind: &str, user: &str, version: u64) -> Delivery {
        let channel = user::user_channel(user);
        let frame =
            serde_json::json!({"type": kind, "channel": channel, "user": user, "version": version});
        let events = presence_events_channel(&channel);
        Delivery::new(&events, publication(frame.to_string().into()))
    }

    #[test]
    fn a_watched_user_s_change_is_told_once_and_an_excluded_socket_skips_user_events() {
        let mut signed = SignedIn {
            user: SignedInUser::parse(r#"{"id":"me"}"#).unwrap(),
            namespace: String::new(),
            channel: user::user_channel("me"),
            watched: [("ann".to_owned(), true)].into(),
            hub_channels: 2,
        };
        let told = |frame: Option<Utf8Bytes>| frame.map(|f| f.as_str().to_owned());
        assert_eq!(
            told(signed.outbound(&change("join", "ann", 1), "1.1")),
            None,
            "online already, as the first look found"
        );
        let offline = told(signed.outbound(&change("leave", "ann", 2), "1.1")).unwrap();
        assert!(offline.contains(r#"\"name\":\"offline\""#), "{offline}");
        assert_eq!(
            told(signed.outbound(&change("leave", "ann", 3), "1.1")),
            None
        );
        assert_eq!(
            told(signed.outbound(&change("join", "bob", 1), "1.1")),
            None,
            "not watched"
        );
        let envelope = Envelope {
            event: Some("note".into()),
            except: Some("1.1".into()),
            ..Envelope::default()
        };
        let note = Delivery::new(&signed.channel, publication(envelope.wrap("{}")));
        assert_eq!(told(signed.outbound(&note, "1.1")), None);
        let sent = told(signed.outbound(&note, "1.2")).unwrap();
        assert!(
            sent.starts_with(r##"{"event":"note","channel":"#server-to-user-me""##),
            "{sent}"
        );
    }
}
