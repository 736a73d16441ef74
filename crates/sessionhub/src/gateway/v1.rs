//! What a frame means on a protocol v1 connection (`GET /ws`): a v1 connection has state
//! (its channels and positions), which the seed's has not, so its decisions live here and
//! its wire formats in [`crate::protocol::v1`]. `docs/protocol.md` specifies every frame.
//!
//! The connection keeps, per channel, the position of the last publication it sent. A live
//! publication is sent only if it is the next one; an older one is a duplicate (it was
//! already sent, e.g. during a recovery) and is dropped; a newer one means something was
//! lost, and the client is told to reconnect and recover ([`close::INSUFFICIENT_STATE`]),
//! so a client never silently skips a publication.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use serde_json::value::RawValue;

use super::admission::Credentials;
use super::plan::Plan;
use super::state::Gateway;
use crate::auth::WsAuth;
use crate::broker::{Publication, PublishOptions, StreamPosition};
use crate::hub::{Connection, Delivery, session_channel};
use crate::protocol::v1::{MAX_SUBSCRIPTIONS, Recovered, Reply, Request};
use crate::protocol::{FrameError, UserId, close, is_public_channel_name};

/// A v1 connection's state.
pub(super) struct V1 {
    user: UserId,
    /// Channels a token lets the user join.
    token_channels: Vec<String>,
    /// Channel -> (epoch, offset) of the last publication sent.
    positions: HashMap<String, (Arc<str>, u64)>,
}

fn error(id: Option<u64>, code: &str, message: String) -> String {
    Reply::Error { id, code, message }.to_text()
}

/// The error reply to a refused frame, with the frame's `id` if it had one.
pub(super) fn refusal(id: Option<u64>, e: &FrameError) -> String {
    error(id, e.code(), e.to_string())
}

impl V1 {
    pub(super) fn new(user: UserId, credentials: &Credentials) -> Self {
        let token_channels = match credentials {
            Credentials::Token { channels, .. } => channels.clone(),
            _ => Vec::new(),
        };
        Self {
            user,
            token_channels,
            positions: HashMap::new(),
        }
    }

    pub(super) fn greeting(&self, node: &str, connection: u64) -> String {
        Reply::Connected {
            client: format!("{node}/{connection}"),
            node,
            user: self.user.as_str(),
        }
        .to_text()
    }

    /// What to send for a live publication: the frame, nothing (a duplicate, or a channel
    /// left meanwhile), or a close when something was lost.
    pub(super) fn outbound(
        &mut self,
        delivery: &Delivery,
    ) -> Result<Option<Utf8Bytes>, (u16, &'static str)> {
        let Some((epoch, offset)) = self.positions.get_mut(delivery.channel()) else {
            return Ok(None);
        };
        let publication = delivery.publication();
        if publication.offset == 0 {
            return Ok(Some(delivery.v1_frame()));
        }
        if publication.epoch != *epoch {
            return Err(close::INSUFFICIENT_STATE);
        }
        match publication.offset.cmp(&(*offset + 1)) {
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Equal => {
                *offset = publication.offset;
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
            } => Step::Plan(publish(id, channel, data, idempotency_key, gateway)),
            Request::Subscribe {
                channel,
                recover,
                id,
            } => Step::Change(ChannelChange::Subscribe {
                channel,
                recover,
                id,
            }),
            Request::Unsubscribe { channel, id } => {
                Step::Change(ChannelChange::Unsubscribe { channel, id })
            }
        }
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
                id,
            } => vec![
                self.subscribe(
                    id,
                    &channel,
                    recover.as_ref(),
                    connection,
                    credentials,
                    gateway,
                )
                .await,
            ],
            ChannelChange::Unsubscribe { channel, id } => {
                self.positions.remove(&channel);
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

    fn may_subscribe(&self, channel: &str, gateway: &Gateway) -> bool {
        let security = &gateway.config.security;
        if let Some(owner) = UserId::from_channel(channel) {
            return owner == self.user || security.ws_auth == WsAuth::Open;
        }
        security.ws_auth == WsAuth::Open
            || security.channels.can_subscribe(channel)
            || self.token_channels.iter().any(|c| c == channel)
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<&StreamPosition>,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> String {
        if !is_public_channel_name(channel) {
            return refusal(id, &FrameError::InvalidChannel);
        }
        if !self.may_subscribe(channel, gateway) {
            return refusal(id, &FrameError::SubscribeForbidden);
        }
        if self.positions.contains_key(channel) {
            return refusal(id, &FrameError::AlreadySubscribed);
        }
        if connection.channel_count() >= MAX_SUBSCRIPTIONS + usize::from(is_session(credentials)) {
            return refusal(id, &FrameError::TooManySubscriptions);
        }
        // Join first, so that nothing published between the recovery read and the join is
        // lost: publications that arrive meanwhile wait in the queue and are filtered by
        // position (older ones are duplicates of what the recovery returned).
        if let Err(e) = connection.join(channel).await {
            return error(id, e.code(), e.to_string());
        }
        let recovery = match gateway.hub.recover(channel, since).await {
            Ok(recovery) => recovery,
            Err(e) => {
                connection.leave(channel);
                return error(id, e.code(), e.to_string());
            }
        };
        let last = recovery
            .publications
            .last()
            .map_or(recovery.offset, |p| p.offset.max(recovery.offset));
        self.positions
            .insert(channel.to_owned(), (recovery.epoch.clone(), last));
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
        Reply::Subscribed {
            id,
            channel,
            epoch: &recovery.epoch,
            offset: recovery.offset,
            recovered: recovery.recovered,
            publications,
        }
        .to_text()
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
}

/// A frame that changes the connection's channels.
pub(super) enum ChannelChange {
    Subscribe {
        channel: String,
        recover: Option<StreamPosition>,
        id: Option<u64>,
    },
    Unsubscribe {
        channel: String,
        id: Option<u64>,
    },
}

/// Plans a publish from the client: checked now, sent to the broker by the returned future.
fn publish(
    id: Option<u64>,
    channel: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    gateway: &Gateway,
) -> Plan {
    if !is_public_channel_name(&channel) {
        return Plan::Reply(vec![refusal(id, &FrameError::InvalidChannel)]);
    }
    if !gateway.config.security.client_may_publish(&channel) {
        return Plan::Reply(vec![refusal(id, &FrameError::PublishForbidden)]);
    }
    let gateway = gateway.clone();
    Plan::Later(
        async move {
            let options = PublishOptions {
                history: true,
                idempotency_key,
            };
            let data = Utf8Bytes::from(data.get().to_owned());
            let reply = match gateway.hub.publish(&channel, data, &options).await {
                Ok(receipt) => Reply::Published {
                    id,
                    channel: &channel,
                    epoch: &receipt.epoch,
                    offset: receipt.offset,
                    duplicate: receipt.duplicate,
                }
                .to_text(),
                Err(e) => error(id, e.code(), e.to_string()),
            };
            vec![reply]
        }
        .boxed(),
    )
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
