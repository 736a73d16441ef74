//! What a frame means on a protocol v1 connection (`GET /ws`): a v1 connection has state
//! (its channels and positions), which the seed's has not, so its decisions live here and
//! its wire formats in [`crate::protocol::v1`]. `docs/protocol.md` specifies every frame.
//!
//! The connection keeps, per channel, the position of the last publication it sent. A live
//! publication is sent only if it is the next one; an older one is a duplicate (it was
//! already sent, e.g. during a recovery) and is dropped; a newer one means something was
//! lost, and the client is told to reconnect and recover ([`close::INSUFFICIENT_STATE`]),
//! so a client never silently skips a publication.
//!
//! Over 700 lines with its tests, which drive that state through whole conversations on a
//! real local hub (subscribe, recover, live delivery, limits). The code is about 720 lines:
//! who may join a channel (rules, private-channel tokens, the token's claim, hooks), the
//! join with its recovery, publishes (rates, hooks) and the server's own orders. The access
//! checks (`may_join`, `may_subscribe`, `may_publish`) are the piece to move out next.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use super::admission::{Credentials, expires_in};
use super::hooked::{self, Hooked, Publishing};
use super::plan::Plan;
use super::state::Gateway;
use super::tokens;
use crate::auth::TokenError;
use crate::broker::{Publication, PublishOptions, StreamPosition};
use crate::error::{ApiError, BrokerError, PresenceError};
use crate::hooks::{Denial, Hooks};
use crate::hub::{
    Connection, Delivery, Outbound, PRESENCE_EVENTS_PREFIX, Position, Straight,
    presence_events_channel, session_channel,
};
use crate::limits::{Limited, Per};
use crate::protocol::v1::{MAX_SUBSCRIPTIONS, Recovered, Reply, Request};
use crate::protocol::{FrameError, UserId, close, is_public_channel_name};

/// A v1 connection's state.
pub(super) struct V1 {
    user: UserId,
    /// Channels a token lets the user join (its `channels` claim).
    token_channels: Vec<String>,
    /// Seconds the token had left when the connection opened, for the greeting.
    expires_in: Option<u64>,
    /// Channel -> the epoch and offset of the last publication sent, shared with the
    /// delivering task once the channel takes deliveries straight ([`V1::deliver_straight`]).
    positions: HashMap<String, Joined>,
    /// What the application's hooks know of it, if the gateway has hooks.
    hooked: Option<Box<Hooked>>,
    /// The client's address, for the per-address publish rate.
    address: Option<IpAddr>,
    /// Channels joined at connect for the token's claim that the client has not subscribed
    /// to itself yet: its first `subscribe` to one recovers from its `recover` position
    /// instead of being refused, so a reconnecting client loses nothing on them.
    claimed_unconfirmed: HashSet<String>,
}

/// One channel the connection joined.
struct Joined {
    /// Where it is in the channel's history.
    position: Arc<Position>,
    /// Whether deliveries on it go straight to the wire (told to the hub once the channel's
    /// `subscribed` reply was out).
    straight: bool,
}

fn error(id: Option<u64>, code: &str, message: String) -> String {
    Reply::Error {
        id,
        code,
        message,
        app_code: None,
    }
    .to_text()
}

/// The error reply to a refused frame, with the frame's `id` if it had one.
pub(super) fn refusal(id: Option<u64>, e: &FrameError) -> String {
    error(id, e.code(), e.to_string())
}

impl V1 {
    /// The connection comes from `address` (publishes are rate limited per address too).
    pub(super) fn with_address(mut self, address: Option<IpAddr>) -> Self {
        self.address = address;
        self
    }

    pub(super) fn new(user: UserId, credentials: &Credentials) -> Self {
        let token_channels = match credentials {
            Credentials::Token { channels, .. } => channels.clone(),
            _ => Vec::new(),
        };
        Self {
            user,
            token_channels,
            expires_in: expires_in(credentials),
            positions: HashMap::new(),
            hooked: None,
            claimed_unconfirmed: HashSet::new(),
            address: None,
        }
    }

    /// The connection as the hooks know it (see [`hooked::connect`]).
    pub(super) fn with_hooks(mut self, hooked: Option<Box<Hooked>>) -> Self {
        self.hooked = hooked;
        self
    }

    /// Its hook state, if the gateway has hooks.
    pub(super) fn hooked_ref(&self) -> Option<&Hooked> {
        self.hooked.as_deref()
    }

    /// Its hook state, to change, if the gateway has hooks.
    pub(super) fn hooked(&mut self) -> Option<&mut Hooked> {
        self.hooked.as_deref_mut()
    }

    pub(super) fn greeting(&mut self, node: &str, connection: u64) -> String {
        if let Some(hooked) = &mut self.hooked {
            hooked.set_client(format!("{node}/{connection}"));
        }
        Reply::Connected {
            client: format!("{node}/{connection}"),
            node,
            user: self.user.as_str(),
            expires_in: self.expires_in,
        }
        .to_text()
    }

    /// What to send for a live publication: the frame, nothing (a duplicate, or a channel
    /// left meanwhile), or a close when something was lost.
    pub(super) fn outbound(
        &mut self,
        delivery: &Delivery,
    ) -> Result<Option<Utf8Bytes>, (u16, &'static str)> {
        // A presence channel's join or leave: its data is the frame already.
        if let Some(channel) = delivery.channel().strip_prefix(PRESENCE_EVENTS_PREFIX) {
            let subscribed = self.positions.contains_key(channel);
            return Ok(subscribed.then(|| delivery.publication().data.clone()));
        }
        let Some(joined) = self.positions.get(delivery.channel()) else {
            return Ok(None);
        };
        let position = &joined.position;
        let publication = delivery.publication();
        if publication.offset == 0 {
            return Ok(Some(delivery.v1_frame()));
        }
        if publication.epoch != position.epoch {
            return Err(close::INSUFFICIENT_STATE);
        }
        match publication.offset.cmp(&(position.offset() + 1)) {
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Equal => {
                position.moved_to(publication.offset);
                Ok(Some(delivery.v1_frame()))
            }
            std::cmp::Ordering::Greater => {
                tracing::info!(
                    channel = delivery.channel(),
                    "offset gap on a live channel: asking the client to recover"
                );
                Err(close::INSUFFICIENT_STATE)
            }
        }
    }

    /// Decides what one client frame needs (see [`Step`]).
    pub(super) fn plan(&self, text: &str, gateway: &Gateway) -> Step {
        let request = match Request::parse(text) {
            Ok(request) => request,
            Err((e, id)) => return Step::Plan(Plan::Reply(vec![refusal(id, &e)])),
        };
        match request {
            Request::Ping { id } => Step::Plan(Plan::Reply(vec![Reply::Pong { id }.to_text()])),
            Request::Publish {
                channel,
                data,
                id,
                idempotency_key,
            } => {
                let hooks = self.hooked.as_deref().map(Hooked::parts);
                let publisher = (&self.user, self.address);
                Step::Plan(publish(
                    id,
                    channel,
                    data,
                    idempotency_key,
                    publisher,
                    hooks,
                    gateway,
                ))
            }
            Request::Subscribe {
                channel,
                recover,
                token,
                id,
            } => Step::Change(ChannelChange::Subscribe {
                channel,
                recover,
                token,
                id,
            }),
            Request::Refresh { token, id } => Step::Refresh { token, id },
            Request::Unsubscribe { channel, id } => {
                Step::Change(ChannelChange::Unsubscribe { channel, id })
            }
            Request::Presence { channel, id } => Step::Plan(self.presence(id, channel, gateway)),
        }
    }

    /// Plans a `presence` request: who is on a presence channel the connection is in.
    fn presence(&self, id: Option<u64>, channel: String, gateway: &Gateway) -> Plan {
        if !is_public_channel_name(&channel) {
            return Plan::Reply(vec![refusal(id, &FrameError::InvalidChannel)]);
        }
        if !gateway.hub.has_presence(&channel) {
            return Plan::Reply(vec![refusal(id, &FrameError::NoPresence)]);
        }
        if !self.positions.contains_key(&channel) {
            return Plan::Reply(vec![refusal(id, &FrameError::NotSubscribed)]);
        }
        let gateway = gateway.clone();
        Plan::Later(
            async move {
                let reply = match gateway.presence.members(&channel).await {
                    Ok(members) => Reply::Presence {
                        id,
                        channel: &channel,
                        presence: &members,
                    }
                    .to_text(),
                    Err(e) => error(id, e.code(), e.to_string()),
                };
                vec![reply]
            }
            .boxed(),
        )
    }

    /// Runs a frame that changes the connection's channels; the caller has waited for every
    /// earlier frame and sends their replies ahead of these, so replies stay in frame order.
    pub(super) async fn exclusive(
        &mut self,
        change: ChannelChange,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> Vec<String> {
        match change {
            ChannelChange::Subscribe {
                channel,
                recover,
                token,
                id,
            } => {
                let subscribed = self
                    .subscribe(
                        id,
                        &channel,
                        recover.as_ref(),
                        token.as_deref(),
                        connection,
                        credentials,
                        gateway,
                        false,
                    )
                    .await;
                vec![subscribed.unwrap_or_else(|refused| refused.reply(id))]
            }
            ChannelChange::Unsubscribe { channel, id } => {
                self.positions.remove(&channel);
                self.claimed_unconfirmed.remove(&channel);
                if !is_control(&channel, credentials) {
                    connection.leave(&channel);
                }
                vec![
                    Reply::Unsubscribed {
                        id,
                        channel: &channel,
                    }
                    .to_text(),
                ]
            }
        }
    }

    /// Applies a subscribe or unsubscribe the server API ordered ([`Outbound::Subscribe`],
    /// [`Outbound::Unsubscribe`]): the client gets the frame its own request would have had,
    /// without `id`, and nothing when it is in (or out of) the channel already. The caller
    /// orders it with the client's frames as for [`V1::exclusive`].
    pub(super) async fn by_server(
        &mut self,
        order: &Outbound,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> Vec<String> {
        match order {
            Outbound::Subscribe(channel) if !self.positions.contains_key(&**channel) => {
                // The server may subscribe a user to any public channel: no channel rules.
                let subscribed = self
                    .subscribe(
                        None,
                        channel,
                        None,
                        None,
                        connection,
                        credentials,
                        gateway,
                        true,
                    )
                    .await;
                vec![subscribed.unwrap_or_else(|refused| refused.reply(None))]
            }
            Outbound::Unsubscribe(channel) if self.positions.contains_key(&**channel) => {
                let change = ChannelChange::Unsubscribe {
                    channel: channel.to_string(),
                    id: None,
                };
                self.exclusive(change, connection, credentials, gateway)
                    .await
            }
            _ => Vec::new(),
        }
    }

    /// The `refreshed` reply to a `refresh` frame, or its refusal (see [`tokens::refresh`]);
    /// the caller reads the connection's new expiry from `credentials`.
    pub(super) async fn refresh(
        &mut self,
        id: Option<u64>,
        token: &str,
        credentials: &mut Credentials,
        gateway: &Gateway,
    ) -> String {
        match tokens::refresh(&self.user, token, credentials, gateway).await {
            Ok(expires_in) => {
                self.token_replaced(credentials);
                Reply::Refreshed { id, expires_in }.to_text()
            }
            Err(e) => error(id, e.code(), e.to_string()),
        }
    }

    /// Takes the channels claim of a refreshed token, for later subscribes.
    pub(super) fn token_replaced(&mut self, credentials: &Credentials) {
        if let Credentials::Token { channels, .. } = credentials {
            self.token_channels.clone_from(channels);
        }
    }

    /// Subscribes the connection to the channels its token claims, as the server API's
    /// subscribe would, right after the greeting: their `subscribed` frames (without `id`).
    pub(super) async fn claimed(
        &mut self,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> Vec<String> {
        let mut replies = Vec::new();
        for channel in self.token_channels.clone() {
            let order = Outbound::Subscribe(channel.as_str().into());
            replies.extend(
                self.by_server(&order, connection, credentials, gateway)
                    .await,
            );
            if self.positions.contains_key(&channel) {
                self.claimed_unconfirmed.insert(channel);
            }
        }
        replies
    }

    /// Joins the channels the connect hook named, as the server API's subscribe would: the
    /// `subscribed` (or `error`) replies.
    pub(super) async fn join_initial(
        &mut self,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> Vec<String> {
        let Some(channels) = self.hooked.as_mut().map(|h| std::mem::take(&mut h.initial)) else {
            return Vec::new();
        };
        let mut replies = Vec::with_capacity(channels.len());
        for channel in channels {
            // As the server API's subscribe: no channel rules, a channel joined already skipped.
            let order = Outbound::Subscribe(channel.as_str().into());
            replies.extend(
                self.by_server(&order, connection, credentials, gateway)
                    .await,
            );
        }
        replies
    }

    /// Whether this connection may join `channel`, showing `token` if it has one: a private
    /// channel needs a subscribe token for it (unless the connection token claims it), any
    /// other the channel rules' consent ([`V1::may_subscribe`]).
    pub(super) async fn may_join(
        &self,
        channel: &str,
        token: Option<&str>,
        gateway: &Gateway,
    ) -> Result<(), Refused> {
        let private = gateway.security().private_channels.contains(channel);
        if !private || self.token_channels.iter().any(|c| c == channel) {
            return Ok(self.may_subscribe(channel, gateway)?);
        }
        if !is_public_channel_name(channel) {
            return Err(FrameError::InvalidChannel.into());
        }
        tokens::check_subscribe_token(&self.user, channel, token, gateway).await?;
        Ok(())
    }

    /// Whether this connection may join `channel`: a valid public name its user may read.
    pub(super) fn may_subscribe(&self, channel: &str, gateway: &Gateway) -> Result<(), FrameError> {
        if !is_public_channel_name(channel) {
            return Err(FrameError::InvalidChannel);
        }
        let allowed = gateway.security().client_may_subscribe(&self.user, channel)
            || (UserId::from_channel(channel).is_none()
                && self.token_channels.iter().any(|c| c == channel));
        if allowed {
            Ok(())
        } else {
            Err(FrameError::SubscribeForbidden)
        }
    }

    /// Once the `subscribed` replies are out: deliveries on the channels they subscribed (and
    /// on their presence channels' joins and leaves) go straight to the wire from now on,
    /// while they follow on from the channel's position ([`Straight::At`]).
    pub(super) fn deliver_straight(&mut self, connection: &Connection) {
        for (channel, joined) in &mut self.positions {
            if !std::mem::replace(&mut joined.straight, true) {
                connection.deliver(channel, Straight::At(joined.position.clone()));
                connection.deliver(&presence_events_channel(channel), Straight::Yes);
            }
        }
    }

    /// The positions of every joined channel that keeps history, as `(channel, epoch,
    /// offset)`: what a client would recover from.
    pub(super) fn positions(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.positions
            .iter()
            .filter(|(_, joined)| !joined.position.epoch.is_empty())
            .map(|(channel, joined)| {
                let position = &joined.position;
                (channel.as_str(), &*position.epoch, position.offset())
            })
    }

    /// Joins `channel` (recovering from `since`); the `subscribed` reply. `by_server`: the
    /// server API asked, which the channel rules do not restrict.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<&StreamPosition>,
        token: Option<&str>,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
        by_server: bool,
    ) -> Result<String, Refused> {
        if by_server && !is_public_channel_name(channel) {
            return Err(FrameError::InvalidChannel.into());
        }
        if !by_server {
            self.may_join(channel, token, gateway).await?;
        }
        // A channel joined for the token's claim is joined again, which changes nothing but
        // the recovery, once.
        if self.positions.contains_key(channel) && !self.claimed_unconfirmed.remove(channel) {
            return Err(FrameError::AlreadySubscribed.into());
        }
        if connection.channel_count() >= MAX_SUBSCRIPTIONS + usize::from(is_session(credentials)) {
            return Err(FrameError::TooManySubscriptions.into());
        }
        if let (false, Some(hooked)) = (by_server, &self.hooked) {
            hooked.subscribe(channel).await.map_err(Refused::Denied)?;
        }
        // Join first, so that nothing published between the recovery read and the join is
        // lost: publications that arrive meanwhile wait in the queue and are filtered by
        // position (older ones are duplicates of what the recovery returned). A channel
        // joined already (for the token's claim) takes them through the queue again until
        // this subscribe's reply is out.
        if let Some(joined) = self.positions.get_mut(channel) {
            joined.straight = false;
            connection.deliver(channel, Straight::No);
            connection.deliver(&presence_events_channel(channel), Straight::No);
        }
        connection.join(channel).await?;
        let recovery = match gateway.hub.recover(channel, since).await {
            Ok(recovery) => recovery,
            Err(e) => {
                connection.leave(channel);
                return Err(e.into());
            }
        };
        if since.is_some() {
            let outcome = if recovery.recovered {
                "recovered"
            } else {
                "not_recovered"
            };
            metrics::counter!("sessionhub_recoveries_total", "outcome" => outcome).increment(1);
        }
        // Read after the join, which waited for presence to count this connection: the list
        // includes its own user.
        let members = if gateway.hub.has_presence(channel) {
            match gateway.presence.members(channel).await {
                Ok(members) => Some(members),
                Err(e) => {
                    connection.leave(channel);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let last = recovery
            .publications
            .last()
            .map_or(recovery.offset, |p| p.offset.max(recovery.offset));
        let joined = Joined {
            position: Arc::new(Position::new(recovery.epoch.clone(), last)),
            straight: false,
        };
        self.positions.insert(channel.to_owned(), joined);
        let publications = recovery
            .publications
            .iter()
            .filter_map(|p: &Publication| {
                Some(Recovered {
                    offset: p.offset,
                    data: serde_json::from_str(p.data.as_str()).ok()?,
                })
            })
            .collect();
        Ok(Reply::Subscribed {
            id,
            channel,
            epoch: &recovery.epoch,
            offset: recovery.offset,
            recovered: recovery.recovered,
            publications,
            presence: members.as_deref(),
        }
        .to_text())
    }
}

/// Why a subscribe or publish was refused: the frame (checked before anything happened), or
/// the broker.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The frame may not do that.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Presence could not be read.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// The application's hook refused it.
    #[error("{}", .0.reason)]
    Denied(Denial),
    /// A private channel's subscribe token was missing or not good for it.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl Refused {
    /// The v1 `error` reply.
    fn reply(&self, id: Option<u64>) -> String {
        match self {
            Self::Frame(e) => refusal(id, e),
            Self::Broker(e) => error(id, e.code(), e.to_string()),
            Self::Presence(e) => error(id, e.code(), e.to_string()),
            Self::Denied(denial) => denied(id, denial),
            Self::Token(e) => error(id, e.code(), e.to_string()),
        }
    }
}

/// What one protocol v1 frame needs: a [`Plan`], as any frame, or a change of the
/// connection's channels, which only a v1 connection can make and which waits for every
/// earlier frame's replies.
pub(super) enum Step {
    /// What any frame may need.
    Plan(Plan),
    /// A subscribe or unsubscribe.
    Change(ChannelChange),
    /// A token refresh ([`V1::refresh`]), which changes the connection's credentials.
    Refresh { token: String, id: Option<u64> },
}

/// A frame that changes the connection's channels.
pub(super) enum ChannelChange {
    Subscribe {
        channel: String,
        recover: Option<StreamPosition>,
        token: Option<String>,
        id: Option<u64>,
    },
    Unsubscribe {
        channel: String,
        id: Option<u64>,
    },
}

/// The `error` reply to a frame a hook refused.
pub(super) fn denied(id: Option<u64>, denial: &Denial) -> String {
    Reply::Error {
        id,
        code: "denied",
        message: denial.reason.clone(),
        app_code: Some(denial.code),
    }
    .to_text()
}

/// The `published` reply to a publish the application took (nothing was published).
pub(super) fn handled(id: Option<u64>, channel: &str) -> String {
    Reply::Published {
        id,
        channel,
        epoch: "",
        offset: 0,
        duplicate: false,
    }
    .to_text()
}

/// Plans a publish from the client: checked now, sent to the broker by the returned future
/// (after the publish hook, if there is one).
fn publish(
    id: Option<u64>,
    channel: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    (user, address): (&UserId, Option<IpAddr>),
    hooks: Option<(Arc<dyn Hooks>, crate::hooks::Caller)>,
    gateway: &Gateway,
) -> Plan {
    if let Err(e) = may_publish(&channel, gateway) {
        return Plan::Reply(vec![refusal(id, &e)]);
    }
    let gateway = gateway.clone();
    let user = user.clone();
    Plan::Later(
        async move {
            if let Err(e) = publish_rate(&user, address, &gateway).await {
                return vec![error(id, e.code(), e.to_string())];
            }
            let data = match hooks {
                None => data,
                Some((hooks, caller)) => {
                    match hooked::publish(&*hooks, &caller, &channel, data).await {
                        Ok(Publishing::Publish(data)) => data,
                        Ok(Publishing::Handled) => return vec![handled(id, &channel)],
                        Err(denial) => return vec![denied(id, &denial)],
                    }
                }
            };
            let published = publish_checked(id, &channel, &data, idempotency_key, &gateway).await;
            vec![published.unwrap_or_else(|e| error(id, e.code(), e.to_string()))]
        }
        .boxed(),
    )
}

/// Takes one publish from `user`'s rate and from its address's (cluster-wide with a shared
/// rate limiter).
pub(super) async fn publish_rate(
    user: &UserId,
    address: Option<IpAddr>,
    gateway: &Gateway,
) -> Result<(), ApiError> {
    let (per_user, per_ip) = {
        let limits = &gateway.security().limits;
        (limits.publishes_per_user, limits.publishes_per_ip)
    };
    if let Some(ip) = &address {
        let per = Per::Address(ip);
        gateway.rates.check(Limited::Publish, per, per_ip).await?;
    }
    let per = Per::User(user.as_str());
    gateway.rates.check(Limited::Publish, per, per_user).await
}

/// Whether a client may publish to `channel` itself.
pub(super) fn may_publish(channel: &str, gateway: &Gateway) -> Result<(), FrameError> {
    if !is_public_channel_name(channel) {
        return Err(FrameError::InvalidChannel);
    }
    if !gateway.security().client_may_publish(channel) {
        return Err(FrameError::PublishForbidden);
    }
    Ok(())
}

/// Publishes what [`may_publish`] allowed; the `published` reply.
pub(super) async fn publish_checked(
    id: Option<u64>,
    channel: &str,
    data: &RawValue,
    idempotency_key: Option<String>,
    gateway: &Gateway,
) -> Result<String, BrokerError> {
    let options = PublishOptions {
        history: true,
        idempotency_key,
    };
    let text = Utf8Bytes::from(data.get().to_owned());
    let receipt = gateway.hub.publish(channel, text, &options).await?;
    if let Some(webhooks) = gateway.hub.webhooks() {
        let event = serde_json::json!({"channel": channel, "data": data});
        webhooks.emit(crate::webhook::EventKind::Message, event);
    }
    Ok(Reply::Published {
        id,
        channel,
        epoch: &receipt.epoch,
        offset: receipt.offset,
        duplicate: receipt.duplicate,
    }
    .to_text())
}

fn is_session(credentials: &Credentials) -> bool {
    matches!(credentials, Credentials::Session { .. })
}

/// The session control channel is never left on a client's request.
fn is_control(channel: &str, credentials: &Credentials) -> bool {
    match credentials {
        Credentials::Session { id, .. } => channel == session_channel(id),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::super::state::test_gateway as gateway;
    use super::*;
    use crate::auth::WsAuth;
    use crate::hub::Outbound;
    use crate::session::SessionId;

    fn alice() -> UserId {
        "alice".parse().unwrap()
    }

    /// A client of `gateway`: the v1 state, its connection and credentials.
    struct Client {
        v1: V1,
        connection: Connection,
        credentials: Credentials,
        gateway: Gateway,
    }

    impl Client {
        fn new(gateway: &Gateway, credentials: Credentials) -> Self {
            Self {
                v1: V1::new(alice(), &credentials),
                connection: gateway.hub.connect(&alice()),
                credentials,
                gateway: gateway.clone(),
            }
        }

        /// Sends one text frame and returns its replies, as the connection loop would.
        async fn send(&mut self, text: &str) -> Vec<String> {
            match self.v1.plan(text, &self.gateway) {
                Step::Plan(Plan::Reply(replies)) => replies,
                Step::Plan(Plan::Later(publish)) => publish.await,
                Step::Change(change) => {
                    let (connection, credentials) = (&mut self.connection, &self.credentials);
                    self.v1
                        .exclusive(change, connection, credentials, &self.gateway)
                        .await
                }
                Step::Refresh { token, id } => {
                    let credentials = &mut self.credentials;
                    vec![
                        self.v1
                            .refresh(id, &token, credentials, &self.gateway)
                            .await,
                    ]
                }
            }
        }

        /// The frames for an order of the server API, as the connection loop would send them.
        async fn by_server(&mut self, order: Outbound) -> Vec<String> {
            let (connection, credentials) = (&mut self.connection, &self.credentials);
            self.v1
                .by_server(&order, connection, credentials, &self.gateway)
                .await
        }

        /// The one reply to `text`, parsed.
        async fn ask(&mut self, text: &str) -> Value {
            let replies = self.send(text).await;
            assert_eq!(replies.len(), 1, "{replies:?}");
            serde_json::from_str(&replies[0]).unwrap()
        }

        /// What the connection loop would send for the next queued publication.
        async fn next_frame(&mut self) -> Result<Option<Utf8Bytes>, (u16, &'static str)> {
            let next = tokio::time::timeout(Duration::from_secs(2), self.connection.recv());
            match next.await.expect("a publication arrives") {
                Outbound::Message(delivery) => self.v1.outbound(&delivery),
                _ => panic!("not a publication"),
            }
        }
    }

    fn delivery(channel: &str, epoch: &str, offset: u64) -> Delivery {
        let publication = Publication {
            offset,
            epoch: epoch.into(),
            data: Utf8Bytes::from(format!(r#"{{"n":{offset}}}"#)),
        };
        Delivery::new(channel, publication)
    }

    impl V1 {
        /// Where the connection is on `channel`: (epoch, offset).
        fn at(&self, channel: &str) -> (&str, u64) {
            let position = &self.positions[channel].position;
            (&position.epoch, position.offset())
        }
    }

    fn at(channel: &str, epoch: &str, offset: u64) -> V1 {
        let mut v1 = V1::new(alice(), &Credentials::None);
        let joined = Joined {
            position: Arc::new(Position::new(epoch.into(), offset)),
            straight: false,
        };
        v1.positions.insert(channel.to_owned(), joined);
        v1
    }

    #[test]
    fn outbound_sends_only_the_next_publication_of_a_joined_channel() {
        let mut v1 = at("room:1", "e", 3);
        let sent = v1.outbound(&delivery("room:1", "e", 4)).unwrap().unwrap();
        assert_eq!(
            sent.as_str(),
            r#"{"type":"publication","channel":"room:1","epoch":"e","offset":4,"data":{"n":4}}"#
        );
        assert_eq!(v1.at("room:1"), ("e", 4), "the position moves on");
        assert_eq!(
            v1.outbound(&delivery("room:1", "e", 4)),
            Ok(None),
            "a duplicate"
        );
        assert_eq!(v1.outbound(&delivery("room:1", "e", 2)), Ok(None), "older");
        assert_eq!(
            v1.outbound(&delivery("room:2", "e", 5)),
            Ok(None),
            "not joined"
        );
        assert_eq!(v1.at("room:1"), ("e", 4), "nothing skipped moved it");
        // Kept out of history (offset 0): passed on, and no position.
        let sent = v1.outbound(&delivery("room:1", "", 0)).unwrap().unwrap();
        assert_eq!(
            sent.as_str(),
            r#"{"type":"publication","channel":"room:1","epoch":"","offset":0,"data":{"n":0}}"#
        );
        assert_eq!(v1.at("room:1"), ("e", 4));
    }

    #[test]
    fn outbound_closes_for_recovery_on_a_gap_or_a_new_epoch() {
        let mut v1 = at("room:1", "e", 3);
        let gap = v1.outbound(&delivery("room:1", "e", 5));
        assert_eq!(gap, Err(close::INSUFFICIENT_STATE));
        let new_epoch = v1.outbound(&delivery("room:1", "f", 4));
        assert_eq!(new_epoch, Err(close::INSUFFICIENT_STATE));
        assert_eq!(v1.at("room:1"), ("e", 3));
    }

    #[tokio::test]
    async fn greeting_pings_and_bad_frames_are_answered_at_once_with_their_id() {
        let mut client = Client::new(&gateway(WsAuth::Open, &[]), Credentials::None);
        assert_eq!(
            client.v1.greeting("n1", 7),
            r#"{"type":"connected","client":"n1/7","node":"n1","user":"alice"}"#
        );
        assert_eq!(
            client.send(r#"{"type":"ping","id":7}"#).await,
            [r#"{"type":"pong","id":7}"#]
        );
        assert_eq!(
            client.send(r#"{"type":"ping"}"#).await,
            [r#"{"type":"pong"}"#]
        );
        let unknown = client.ask(r#"{"type":"nope","id":3}"#).await;
        assert_eq!(
            (unknown["code"].as_str(), unknown["id"].as_u64()),
            (Some("invalid_message"), Some(3))
        );
        let not_json = client.ask("{").await;
        assert_eq!(not_json["code"], "invalid_json");
        assert!(not_json.get("id").is_none());
    }

    #[test]
    fn a_binary_frame_is_refused_in_the_same_bytes_as_on_the_seed_endpoint() {
        let v1 = refusal(None, &FrameError::Binary);
        assert_eq!(
            v1,
            r#"{"type":"error","code":"binary_not_supported","message":"binary frames are not supported; send JSON text"}"#
        );
        assert_eq!(v1, super::super::seed::refusal(&FrameError::Binary));
    }

    #[tokio::test]
    async fn publishes_are_checked_at_once_and_answered_when_published() {
        let mut open = Client::new(&gateway(WsAuth::Open, &[]), Credentials::None);
        let invalid = open
            .ask(r#"{"type":"publish","channel":"session:x","data":1,"id":1}"#)
            .await;
        assert_eq!(
            invalid,
            json!({"type": "error", "id": 1, "code": "invalid_channel",
                "message": crate::protocol::INVALID_CHANNEL})
        );
        let frame =
            r#"{"type":"publish","channel":"room:1","data":{"a":1},"id":2,"idempotency_key":"k"}"#;
        let published = open.ask(frame).await;
        let epoch = published["epoch"].as_str().unwrap().to_owned();
        assert_eq!(
            published,
            json!({"type": "published", "id": 2, "channel": "room:1", "epoch": epoch, "offset": 1})
        );
        let again = open.ask(frame).await;
        assert_eq!(again["duplicate"], true, "the same key publishes once");
        assert_eq!(again["offset"], 1);

        let mut guarded = Client::new(
            &gateway(WsAuth::Session, &["chat:=publish"]),
            Credentials::None,
        );
        assert_eq!(
            guarded
                .send(r#"{"type":"publish","channel":"room:1","data":1,"id":3}"#)
                .await,
            [
                r#"{"type":"error","id":3,"code":"forbidden","message":"you may not publish to that channel"}"#
            ]
        );
        let allowed = guarded
            .ask(r#"{"type":"publish","channel":"chat:1","data":1}"#)
            .await;
        assert_eq!(
            (allowed["type"].as_str(), allowed["offset"].as_u64()),
            (Some("published"), Some(1))
        );
    }

    #[tokio::test]
    async fn a_subscribe_recovers_then_receives_from_the_next_offset() {
        let gateway = gateway(WsAuth::Open, &[]);
        let options = PublishOptions::with_history();
        let mut epoch = String::new();
        for n in 1..=2 {
            let data = Utf8Bytes::from(format!("{n}"));
            let receipt = gateway.hub.publish("room:1", data, &options).await.unwrap();
            epoch = receipt.epoch.to_string();
        }
        let mut client = Client::new(&gateway, Credentials::None);
        let subscribe = format!(
            r#"{{"type":"subscribe","channel":"room:1","id":4,"recover":{{"epoch":"{epoch}","offset":1}}}}"#
        );
        assert_eq!(
            client.send(&subscribe).await,
            [format!(
                r#"{{"type":"subscribed","id":4,"channel":"room:1","epoch":"{epoch}","offset":2,"recovered":true,"publications":[{{"offset":2,"data":2}}]}}"#
            )]
        );
        assert_eq!(client.v1.at("room:1"), (epoch.as_str(), 2));
        let data = Utf8Bytes::from_static("3");
        gateway.hub.publish("room:1", data, &options).await.unwrap();
        let live = client.next_frame().await.unwrap().unwrap();
        assert_eq!(
            live.as_str(),
            format!(
                r#"{{"type":"publication","channel":"room:1","epoch":"{epoch}","offset":3,"data":3}}"#
            )
        );
    }

    #[tokio::test]
    async fn subscribes_are_refused_with_their_own_codes() {
        let gateway = gateway(WsAuth::Session, &["public:=subscribe"]);
        let mut client = Client::new(&gateway, Credentials::None);
        for channel in ["user:alice", "public:news"] {
            let frame = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
            assert_eq!(client.ask(&frame).await["type"], "subscribed", "{channel}");
        }
        let forbidden = "you may not subscribe to that channel";
        let refused = [
            ("a b", "invalid_channel", crate::protocol::INVALID_CHANNEL),
            ("user:bob", "forbidden", forbidden),
            ("room:1", "forbidden", forbidden),
            (
                "public:news",
                "already_subscribed",
                "already subscribed to that channel",
            ),
        ];
        for (id, (channel, code, message)) in refused.into_iter().enumerate() {
            let frame = json!({"type": "subscribe", "channel": channel, "id": id});
            let expected = json!({"type": "error", "id": id, "code": code, "message": message});
            assert_eq!(client.ask(&frame.to_string()).await, expected, "{channel}");
        }
        let joined = client.connection.channel_count();
        assert_eq!(joined, 2, "refusals joined nothing");
    }

    #[tokio::test]
    async fn a_token_lets_its_user_join_the_channels_it_names() {
        let gateway = gateway(WsAuth::Token, &[]);
        let credentials = Credentials::Token {
            expires: tokio::time::Instant::now() + Duration::from_secs(60),
            channels: vec!["team:1".into()],
        };
        let mut client = Client::new(&gateway, credentials);
        let joined = client
            .ask(r#"{"type":"subscribe","channel":"team:1"}"#)
            .await;
        assert_eq!(joined["type"], "subscribed");
        let other = client
            .ask(r#"{"type":"subscribe","channel":"team:2"}"#)
            .await;
        assert_eq!(other["code"], "forbidden");
    }

    #[tokio::test]
    async fn a_refresh_needs_a_connection_opened_with_a_token() {
        let mut client = Client::new(&gateway(WsAuth::Session, &[]), Credentials::None);
        let refused = client
            .ask(r#"{"type":"refresh","token":"a.b.c","id":1}"#)
            .await;
        assert_eq!(
            (refused["code"].as_str(), refused["id"].as_u64()),
            (Some("token_not_used"), Some(1))
        );
    }

    #[tokio::test]
    async fn an_unsubscribe_leaves_and_stops_live_publications() {
        let gateway = gateway(WsAuth::Open, &[]);
        let mut client = Client::new(&gateway, Credentials::None);
        client
            .send(r#"{"type":"subscribe","channel":"room:1"}"#)
            .await;
        assert_eq!(
            client
                .send(r#"{"type":"unsubscribe","channel":"room:1","id":5}"#)
                .await,
            [r#"{"type":"unsubscribed","id":5,"channel":"room:1"}"#]
        );
        assert_eq!(client.connection.channel_count(), 0);
        assert_eq!(client.v1.outbound(&delivery("room:1", "e", 1)), Ok(None));
    }

    #[tokio::test]
    async fn at_most_max_subscriptions_channels_besides_the_session_channel() {
        let gateway = gateway(WsAuth::Open, &[]);
        let session = SessionId::generate();
        let credentials = Credentials::Session {
            id: session.clone(),
            ends: None,
        };
        let mut client = Client::new(&gateway, credentials);
        // The connection loop joins the session's control channel first.
        client
            .connection
            .join(&session_channel(&session))
            .await
            .unwrap();
        for n in 0..MAX_SUBSCRIPTIONS {
            let frame = format!(r#"{{"type":"subscribe","channel":"c{n}"}}"#);
            assert_eq!(
                client.ask(&frame).await["type"],
                "subscribed",
                "channel {n}"
            );
        }
        assert_eq!(
            client
                .send(r#"{"type":"subscribe","channel":"one-more","id":9}"#)
                .await,
            [
                r#"{"type":"error","id":9,"code":"too_many_subscriptions","message":"at most 128 channels per connection"}"#
            ]
        );
        // The control channel cannot be left on request.
        let leave_control = format!(
            r#"{{"type":"unsubscribe","channel":"{}"}}"#,
            session_channel(&session)
        );
        assert_eq!(client.ask(&leave_control).await["type"], "unsubscribed");
        assert_eq!(client.connection.channel_count(), MAX_SUBSCRIPTIONS + 1);
    }

    #[tokio::test]
    async fn the_server_subscribes_past_the_channel_rules_and_only_once() {
        let gateway = gateway(WsAuth::Session, &[]);
        let mut client = Client::new(&gateway, Credentials::None);
        let own = client.ask(r#"{"type":"subscribe","channel":"news"}"#).await;
        assert_eq!(own["code"], "forbidden", "the client may not itself");
        let order = Outbound::Subscribe("news".into());
        let frames = client.by_server(order.clone()).await;
        let subscribed: Value = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(
            (
                &subscribed["type"],
                &subscribed["channel"],
                subscribed.get("id")
            ),
            (&json!("subscribed"), &json!("news"), None)
        );
        assert_eq!(client.connection.channel_count(), 1);
        assert!(client.by_server(order).await.is_empty(), "in it already");
        let leave = Outbound::Unsubscribe("news".into());
        assert_eq!(
            client.by_server(leave.clone()).await,
            [r#"{"type":"unsubscribed","channel":"news"}"#]
        );
        assert_eq!(client.connection.channel_count(), 0);
        assert!(client.by_server(leave).await.is_empty(), "out already");
    }
}
