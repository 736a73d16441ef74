//! One local connection: its queue, the channels it joined, its presence counts.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::protocol::UserId;

use super::registry::Direct;
use super::{
    Hub, Member, Outbound, PRESENCE_EVENTS_PREFIX, PRESENCE_WAIT, PresenceChange, Render, Straight,
    presence_events_channel,
};

/// One local connection: its outbound queue and the channels it joined. Dropping it leaves
/// every channel. Public only for [`Hub::connect`]'s test use.
#[doc(hidden)]
pub struct Connection {
    pub(super) hub: Hub,
    pub(super) user: UserId,
    pub(super) member: Member,
    pub(super) channels: Vec<String>,
    /// Presence channel -> the user the connection counts as there, where it joined as
    /// another user than its own ([`Connection::join_as`]).
    pub(super) joined_as: HashMap<String, UserId>,
}

impl Connection {
    /// Joins `channel`. Messages published after this returns reach the connection.
    pub async fn join(&mut self, channel: &str) -> Result<(), BrokerError> {
        self.join_counted(channel, None, None).await.map(drop)
    }

    /// Joins `channel` as [`Connection::join`] does, but on a presence channel counts the
    /// connection as `user`'s (not its own user's), with `info` (JSON text; text that is
    /// not JSON is kept as a JSON string) as what the user's first connection to the
    /// channel tells about them: a Pusher socket names its presence user per subscription.
    /// Leaving the channel, or dropping the connection, takes exactly that back. On a
    /// channel without presence, `user` and `info` are not used; on a channel the
    /// connection joined already, nothing changes.
    pub async fn join_as(
        &mut self,
        channel: &str,
        user: &UserId,
        info: Option<String>,
    ) -> Result<(), BrokerError> {
        let info = info.map(|info| Arc::from(crate::presence::info_json(info)));
        self.join_counted(channel, Some((user.clone(), info)), None)
            .await
            .map(drop)
    }

    /// Joins presence channel `channel` as [`Connection::join_as`] does, unless the channel
    /// has `limit` users already (cluster-wide, decided by the presence backend atomically
    /// with the join): `Ok(false)` then, and the connection is not on the channel. A user
    /// already on the channel may always add a connection. If the backend does not answer
    /// in time, the join goes on, as [`Connection::join_as`]'s does.
    pub async fn join_within(
        &mut self,
        channel: &str,
        user: &UserId,
        info: Option<String>,
        limit: usize,
    ) -> Result<bool, BrokerError> {
        let info = info.map(|info| Arc::from(crate::presence::info_json(info)));
        self.join_counted(channel, Some((user.clone(), info)), Some(limit))
            .await
    }

    /// Joins `channel`, counted on a presence channel as `counted` (the user and their
    /// info), or as this connection's user without info, within `limit` users if given;
    /// `Ok(false)` if the limit refused it.
    async fn join_counted(
        &mut self,
        channel: &str,
        counted: Option<(UserId, Option<Arc<str>>)>,
        limit: Option<usize>,
    ) -> Result<bool, BrokerError> {
        if self.channels.iter().any(|c| c == channel) {
            return Ok(true);
        }
        let events = self
            .hub
            .has_presence(channel)
            .then(|| presence_events_channel(channel));
        let subscribed = self.add_member(channel);
        let events_subscribed = events.as_deref().map(|events| self.add_member(events));
        self.channels.push(channel.to_owned());
        let mut result = subscribed.await;
        if let Some(events_subscribed) = events_subscribed {
            result = result.and(events_subscribed.await);
        }
        if let Err(e) = result {
            // Not `leave`: the user was not counted on the channel yet.
            self.channels.retain(|c| c != channel);
            self.remove_member(channel);
            if let Some(events) = &events {
                self.remove_member(events);
            }
            return Err(e);
        }
        if events.is_some() {
            let (user, info) = match counted {
                Some((user, info)) => {
                    self.joined_as.insert(channel.to_owned(), user.clone());
                    (user, info)
                }
                None => (self.user.clone(), None),
            };
            let (done, taken) = oneshot::channel();
            self.count_presence(channel, &user, 1, info, Some((limit, done)));
            let refused = matches!(
                tokio::time::timeout(PRESENCE_WAIT, taken).await,
                Ok(Ok(false))
            );
            if refused {
                // Counted here but not by the backend: taking it back sends an absolute
                // count the backend already has, so nobody hears of a leave.
                self.leave(channel);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds this connection to `channel`'s members; the returned future ends once the node
    /// is subscribed to it.
    fn add_member(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let mut channels = self.hub.inner.registry.channels.lock().unwrap();
        let members = channels.entry(channel.to_owned()).or_default();
        if members.is_empty() {
            self.hub.count_occupancy(channel, 1);
        }
        members.push(self.member.clone());
        // Asked on every join, not only the first: an earlier member's SUBSCRIBE may still
        // be in flight, and this member must not be told it is subscribed before the node
        // is. The broker answers once a subscription round that started after this call
        // is confirmed (a no-op round when nothing changes). Queued under the lock so
        // subscribe and unsubscribe keep their order.
        self.hub.inner.broker.subscribe(channel)
    }

    /// Removes this connection from `channel`'s members; the node unsubscribes when its last
    /// connection leaves.
    fn remove_member(&self, channel: &str) {
        let mut channels = self.hub.inner.registry.channels.lock().unwrap();
        if let Some(members) = channels.get_mut(channel) {
            members.retain(|m| m.id != self.member.id);
            if members.is_empty() {
                channels.remove(channel);
                self.hub.count_occupancy(channel, 0);
                self.hub.inner.broker.unsubscribe(channel);
                if channel.starts_with(PRESENCE_EVENTS_PREFIX) {
                    let registry = &self.hub.inner.registry;
                    registry.announced.lock().unwrap().remove(channel);
                }
            }
        }
    }

    /// Adds `delta` to `user`'s connections to presence channel `channel` (their first
    /// connection here gives the `info` kept for them) and queues the change for the
    /// tracker; under the lock, so the tracker gets the changes in the order they happened.
    /// `done`: the member limit of the join, if any, and who is told whether the backend
    /// took it.
    fn count_presence(
        &self,
        channel: &str,
        user: &UserId,
        delta: isize,
        info: Option<Arc<str>>,
        done: Option<(Option<usize>, oneshot::Sender<bool>)>,
    ) {
        let Some(tracking) = self.hub.inner.tracking.get() else {
            return;
        };
        let mut presence = self.hub.inner.registry.presence.lock().unwrap();
        let users = presence.entry(channel.to_owned()).or_default();
        let counted = users.entry(user.clone()).or_default();
        let was = counted.connections;
        if was == 0 {
            counted.info = info;
        }
        counted.connections = was.saturating_add_signed(delta);
        let now = counted.connections;
        let info = (now > was).then(|| counted.info.clone()).flatten();
        if now == 0 {
            users.remove(user);
            if users.is_empty() {
                presence.remove(channel);
            }
        }
        let _ = tracking.changes.send(PresenceChange {
            channel: channel.to_owned(),
            user: user.clone(),
            was,
            now,
            info,
            limit: done.as_ref().and_then(|(limit, _)| *limit),
            done: done.map(|(_, done)| done),
        });
    }

    /// Makes the connection `user`'s from now on (a Pusher socket that signed in): the
    /// server API's commands for `user` reach it, and it counts among `user`'s connections
    /// online. Presence channels it joined already stay counted as the user they were.
    pub(crate) fn rename(&mut self, user: &UserId) {
        if *user == self.user {
            return;
        }
        for channel in &self.channels {
            if self.hub.has_presence(channel) && !self.joined_as.contains_key(channel) {
                self.joined_as.insert(channel.clone(), self.user.clone());
            }
        }
        let mut users = self.hub.inner.registry.users.lock().unwrap();
        users.remove(&self.user, self.member.id);
        users.add(user, &self.member);
        drop(users);
        self.user = user.clone();
    }

    /// Leaves `channel`; the node unsubscribes when its last connection leaves.
    pub fn leave(&mut self, channel: &str) {
        let was_joined = self.channels.iter().any(|c| c == channel);
        self.channels.retain(|c| c != channel);
        self.remove_member(channel);
        let joined_as = self.joined_as.remove(channel);
        if self.hub.has_presence(channel) {
            self.remove_member(&presence_events_channel(channel));
            if was_joined {
                let user = joined_as.unwrap_or_else(|| self.user.clone());
                self.count_presence(channel, &user, -1, None, None);
            }
        }
    }

    /// The next thing to send. Cancel-safe.
    pub(crate) async fn recv(&self) -> Outbound {
        self.member.outbox.pop().await
    }

    /// Lets deliveries go straight to `wire` as `render` makes them, on the channels
    /// [`Connection::deliver`] names ([`crate::wire`]). Once per connection.
    pub(crate) fn attach(&self, wire: Arc<crate::wire::Wire>, render: Render) {
        let direct = Direct { wire, render };
        let _ = self.member.outbox.direct.set(direct);
    }

    /// How deliveries on `channel`, which the connection joined, reach it from now on:
    /// [`Straight::Yes`] or [`Straight::At`] once what must reach the client before them
    /// (a subscribe reply) is out, when the wire is free ([`Connection::attach`]);
    /// [`Straight::No`] before the channel's state on the connection's side changes again.
    pub(crate) fn deliver(&self, channel: &str, straight: Straight) {
        let mut channels = self.hub.inner.registry.channels.lock().unwrap();
        let me = channels
            .get_mut(channel)
            .and_then(|members| members.iter_mut().find(|m| m.id == self.member.id));
        if let Some(me) = me {
            me.straight = straight;
        }
    }

    /// The connection's task is done with what it took from [`Connection::recv`]: with
    /// nothing queued, deliveries may go straight to the socket again.
    pub(crate) fn idle(&self) {
        self.member.outbox.idle();
    }

    /// This connection's id on this node.
    pub(crate) fn id(&self) -> u64 {
        self.member.id
    }

    /// How many channels the connection joined.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Cancelled when the connection fell too far behind and must be closed.
    pub(crate) fn slow(&self) -> &CancellationToken {
        &self.member.slow
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.member.id)
            .field("user", &self.user)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // One by one rather than taken at once: `leave` counts a presence channel's leave only
        // for a channel the connection is still in.
        while let Some(channel) = self.channels.first().cloned() {
            self.leave(&channel);
        }
        let mut users = self.hub.inner.registry.users.lock().unwrap();
        users.connections -= 1;
        users.remove(&self.user, self.member.id);
    }
}
