//! The server API's cluster-wide calls: disconnect a user or one connection, subscribe or
//! unsubscribe a user's connections, list active channels, and describe the nodes. Commands
//! travel to every node over the broker (see [`crate::control`]).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Json, Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::input;
use super::state::Gateway;
use crate::control::{self, ChannelCount, Command, NodeReport};
use crate::error::{ApiError, ErrorBody};
use crate::protocol::{self, UserId};

/// Longest disconnect reason, in bytes: it travels in the close frame too, which holds 123.
const MAX_REASON_LEN: usize = 100;

/// How long `channels` and `info` wait for every node's answer.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// How many nodes a command reached.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Sent {
    /// Nodes that took the command; each applies it to the user's connections it holds.
    nodes: usize,
}

/// How to disconnect.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectBody {
    /// Why, for the client: the reason of its `disconnect` frame and close frame (at most
    /// 100 bytes; default `disconnected`).
    #[serde(default)]
    reason: Option<String>,
    /// Whether the client may reconnect: close code 4020 if so (the default), else 4021.
    #[serde(default = "yes")]
    reconnect: bool,
    /// Only this connection: the `client` of its v1 `connected` frame (`<node>/<n>`).
    #[serde(default)]
    client: Option<String>,
}

fn yes() -> bool {
    true
}

/// Disconnects every connection of user `id` on every node, or the one connection `client`.
#[utoipa::path(
    post,
    path = "/api/users/{id}/disconnect",
    tag = "users",
    params(("id" = String, Path, description = "the user id")),
    request_body = DisconnectBody,
    responses(
        (status = 200, description = "sent to every node", body = Sent),
        (status = 400, description = "a bad user id, reason or client", body = ErrorBody),
        (status = 415, description = "not `application/json`", body = ErrorBody),
    )
)]
pub(crate) async fn disconnect(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    body: Result<Json<DisconnectBody>, JsonRejection>,
) -> Result<Json<Sent>, ApiError> {
    let user: UserId = id.parse()?;
    let body = input::json(body)?;
    let reason = body.reason.unwrap_or_else(|| "disconnected".to_owned());
    if reason.len() > MAX_REASON_LEN {
        return Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON_LEN} bytes"
        )));
    }
    let (node, connection) = match body.client.as_deref().map(parse_client) {
        Some(Some((node, n))) => (Some(node.to_owned()), Some(n)),
        Some(None) => {
            return Err(ApiError::bad_request(
                "client: `<node>/<n>`, as in the v1 `connected` frame",
            ));
        }
        None => (None, None),
    };
    let command = Command::Disconnect {
        user: user.as_str().to_owned(),
        node,
        connection,
        reconnect: body.reconnect,
        reason,
    };
    Ok(Json(Sent {
        nodes: control::send(&gateway.hub, &command).await?,
    }))
}

/// `<node>/<n>` split at its last `/`.
fn parse_client(client: &str) -> Option<(&str, u64)> {
    let (node, n) = client.rsplit_once('/')?;
    Some((node, n.parse().ok()?)).filter(|(node, _)| !node.is_empty())
}

/// The channel to (un)subscribe.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    /// The channel.
    channel: String,
}

/// Subscribes every protocol v1 connection of user `id`, on every node, to a channel; each
/// gets a `subscribed` frame with the channel's position, as if it had asked.
#[utoipa::path(
    post,
    path = "/api/users/{id}/subscribe",
    tag = "users",
    params(("id" = String, Path, description = "the user id")),
    request_body = ChannelBody,
    responses(
        (status = 200, description = "sent to every node", body = Sent),
        (status = 400, description = "a bad user id or channel", body = ErrorBody),
        (status = 415, description = "not `application/json`", body = ErrorBody),
    )
)]
pub(crate) async fn subscribe(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    body: Result<Json<ChannelBody>, JsonRejection>,
) -> Result<Json<Sent>, ApiError> {
    let order = |user, channel| Command::Subscribe { user, channel };
    send_channel_order(&gateway, &id, body, order).await
}

/// Unsubscribes every protocol v1 connection of user `id`, on every node, from a channel;
/// each that was in it gets an `unsubscribed` frame.
#[utoipa::path(
    post,
    path = "/api/users/{id}/unsubscribe",
    tag = "users",
    params(("id" = String, Path, description = "the user id")),
    request_body = ChannelBody,
    responses(
        (status = 200, description = "sent to every node", body = Sent),
        (status = 400, description = "a bad user id or channel", body = ErrorBody),
        (status = 415, description = "not `application/json`", body = ErrorBody),
    )
)]
pub(crate) async fn unsubscribe(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    body: Result<Json<ChannelBody>, JsonRejection>,
) -> Result<Json<Sent>, ApiError> {
    let order = |user, channel| Command::Unsubscribe { user, channel };
    send_channel_order(&gateway, &id, body, order).await
}

/// Checks user `id` and the body's channel, and sends every node the `order` made of them.
async fn send_channel_order(
    gateway: &Gateway,
    id: &str,
    body: Result<Json<ChannelBody>, JsonRejection>,
    order: impl FnOnce(String, String) -> Command,
) -> Result<Json<Sent>, ApiError> {
    let user: UserId = id.parse()?;
    let channel = input::json(body)?.channel;
    if !protocol::is_public_channel_name(&channel) {
        return Err(ApiError::bad_request(protocol::INVALID_CHANNEL));
    }
    let command = order(user.as_str().to_owned(), channel);
    Ok(Json(Sent {
        nodes: control::send(&gateway.hub, &command).await?,
    }))
}

/// Which channels to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChannelsParams {
    /// Only channels whose name starts with this.
    prefix: Option<String>,
}

/// The active channels.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Channels {
    /// Channels with at least one subscriber on some node, by name, with their subscribers
    /// summed over the nodes.
    channels: Vec<ChannelCount>,
    /// Nodes that answered.
    nodes: usize,
}

/// Lists the channels with subscribers, cluster-wide.
#[utoipa::path(
    get,
    path = "/api/channels",
    tag = "channels",
    params(ChannelsParams),
    responses(
        (status = 200, description = "the active channels", body = Channels),
        (status = 400, description = "a bad query", body = ErrorBody),
    )
)]
pub(crate) async fn channels(
    State(gateway): State<Gateway>,
    params: Result<Query<ChannelsParams>, QueryRejection>,
) -> Result<Json<Channels>, ApiError> {
    let prefix = input::query(params)?.prefix.unwrap_or_default();
    let active = active_channels(&gateway, &prefix).await?;
    Ok(Json(Channels {
        channels: active
            .subscribers
            .into_iter()
            .map(|(channel, subscribers)| ChannelCount {
                channel,
                subscribers,
            })
            .collect(),
        nodes: active.nodes,
    }))
}

/// The channels with subscribers on some node, cluster-wide.
pub(super) struct ActiveChannels {
    /// Subscribers of each channel, summed over the nodes, by name.
    pub(super) subscribers: BTreeMap<String, usize>,
    /// Nodes that answered.
    pub(super) nodes: usize,
}

/// Asks every node for its channels whose name starts with `prefix` (all with ""), and
/// sums their subscribers: for `GET /api/channels` and Pusher's channel queries.
pub(super) async fn active_channels(
    gateway: &Gateway,
    prefix: &str,
) -> Result<ActiveChannels, crate::error::BrokerError> {
    let reports = control::reports(&gateway.hub, REPORT_WAIT).await?;
    let mut subscribers = BTreeMap::<String, usize>::new();
    for report in &reports {
        for channel in report.channels.iter() {
            if channel.channel.starts_with(prefix) {
                *subscribers.entry(channel.channel.clone()).or_default() += channel.subscribers;
            }
        }
    }
    Ok(ActiveChannels {
        subscribers,
        nodes: reports.len(),
    })
}

/// The nodes of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Info {
    /// Every node that answered, by id.
    nodes: Vec<NodeInfo>,
}

/// One node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NodeInfo {
    /// Its id (`--node-id`).
    node: String,
    /// The sessionhub version it runs, with the commit of the server binary (`0.1.0 (commit 1a2b3c4d5e6f)`).
    version: String,
    /// Seconds since it started.
    uptime_secs: u64,
    /// Its open connections.
    connections: usize,
    /// Distinct users among them.
    users: usize,
}

impl From<NodeReport> for NodeInfo {
    fn from(report: NodeReport) -> Self {
        Self {
            node: report.node,
            version: report.version,
            uptime_secs: report.uptime_secs,
            connections: report.connections,
            users: report.users,
        }
    }
}

/// Describes every node of the cluster.
#[utoipa::path(
    get,
    path = "/api/info",
    tag = "nodes",
    responses((status = 200, description = "the nodes", body = Info))
)]
pub(crate) async fn info(State(gateway): State<Gateway>) -> Result<Json<Info>, ApiError> {
    let reports = control::reports(&gateway.hub, REPORT_WAIT).await?;
    Ok(Json(Info {
        nodes: reports.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_client;

    #[test]
    fn a_client_id_is_a_node_and_a_number() {
        assert_eq!(parse_client("node-a/17"), Some(("node-a", 17)));
        assert_eq!(parse_client("host:80/a/3"), Some(("host:80/a", 3)));
        for bad in ["17", "/17", "node-a/", "node-a/x", "node-a/-1"] {
            assert_eq!(parse_client(bad), None, "{bad}");
        }
    }
}
