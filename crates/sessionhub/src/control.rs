//! Cluster-wide commands of the server API, carried through the [`Broker`] so that they work
//! on every backend: every node joins the control channel at start
//! ([`Hub::start_control`]) and applies what arrives there to its own connections.
//!
//! A command is small JSON (`Command`). Disconnecting and server-side (un)subscribing go
//! to the named user's connections on every node. A question about the nodes (`report`)
//! is answered by each node on the asking node's own reply channel; the asker knows how
//! many answers to wait for from the publish's [`Receipt::nodes`](crate::broker::Receipt),
//! and waits at most a deadline for them.
//!
//! [`Broker`]: crate::broker::Broker

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::broker::Publication;
use crate::error::BrokerError;
use crate::hub::{Disconnect, Hub, Outbound, TokenRefresh, WeakHub};
use crate::protocol::{UserId, close};

/// The channel every node joins for the server API's commands. Not a public channel name
/// (`#`), so no client can join or publish to it.
pub(crate) const CONTROL_CHANNEL: &str = "sessionhub#control";

/// How long a question waits for answers beyond the count it expects (see [`reports`]).
const LATE: Duration = Duration::from_millis(20);

/// The prefix of each node's reply channel.
const REPLY_PREFIX: &str = "sessionhub#reply:";

/// Whether `channel` is one of the control channels (the hub hands those to [`run`]).
pub(crate) fn is_control_channel(channel: &str) -> bool {
    channel == CONTROL_CHANNEL || channel.starts_with(REPLY_PREFIX)
}

/// Where node `node` receives the answers to its questions.
pub(crate) fn reply_channel(node: &str) -> String {
    format!("{REPLY_PREFIX}{node}")
}

/// A command on [`CONTROL_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Close the user's connections (on `node`, only connection `connection`, if given).
    Disconnect {
        user: String,
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        connection: Option<u64>,
        reconnect: bool,
        reason: String,
    },
    /// Move the expiry of the user's connection `connection` on `node` (an SSE stream whose
    /// token was refreshed) to `expires_ms`.
    Refresh {
        user: String,
        node: String,
        connection: u64,
        expires_ms: u64,
        #[serde(default)]
        channels: Vec<String>,
    },
    /// Subscribe the user's connections to `channel`.
    Subscribe { user: String, channel: String },
    /// Unsubscribe the user's connections from `channel`.
    Unsubscribe { user: String, channel: String },
    /// Answer with a [`NodeReport`] on `reply_to`, quoting `id`.
    Report { id: String, reply_to: String },
}

/// One node, as it reports itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeReport {
    /// The node's id (`--node-id`).
    pub node: String,
    /// The sessionhub version it runs, with the commit it was built from when the server
    /// binary runs it (`0.1.0 (commit 1a2b3c4d5e6f)`).
    pub version: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its open connections.
    pub connections: usize,
    /// Distinct users among them.
    pub users: usize,
    /// The public channels its connections joined, with how many joined each.
    pub channels: Vec<ChannelCount>,
}

/// A channel and its subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelCount {
    /// The channel.
    pub channel: String,
    /// Connections subscribed to it.
    pub subscribers: usize,
}

/// An answer on a reply channel.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    id: String,
    report: NodeReport,
}

/// The questions a node asked and still waits for, by id.
#[derive(Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<NodeReport>>>,
}

/// This node's report.
pub(crate) fn report(hub: &Hub) -> NodeReport {
    let online = hub.online();
    let mut channels: Vec<ChannelCount> = hub
        .local_channels()
        .into_iter()
        .map(|(channel, subscribers)| ChannelCount {
            channel,
            subscribers,
        })
        .collect();
    channels.sort_by(|a, b| a.channel.cmp(&b.channel));
    NodeReport {
        node: hub.node_id().to_owned(),
        version: hub.build().to_owned(),
        uptime_secs: hub.uptime().as_secs(),
        connections: online.online,
        users: online.users,
        channels,
    }
}

/// Publishes `command` to every node; how many nodes took it.
pub(crate) async fn send(hub: &Hub, command: &Command) -> Result<usize, BrokerError> {
    let data = serde_json::to_string(command).expect("commands serialize");
    Ok(hub.publish_control(CONTROL_CHANNEL, data).await?.nodes)
}

/// Asks every node for its report; waits for as many answers as nodes took the question, at
/// most `wait`, and [`LATE`] more for any the count missed. Sorted by node id.
pub(crate) async fn reports(hub: &Hub, wait: Duration) -> Result<Vec<NodeReport>, BrokerError> {
    let pending = hub.pending();
    let id = format!(
        "{}/{}",
        hub.node_id(),
        pending.next.fetch_add(1, Ordering::Relaxed)
    );
    let (sender, mut answers) = mpsc::unbounded_channel();
    pending.waiting.lock().unwrap().insert(id.clone(), sender);
    let question = Command::Report {
        id: id.clone(),
        reply_to: reply_channel(hub.node_id()),
    };
    let asked = send(hub, &question).await;
    let mut reports = Vec::new();
    if let Ok(nodes) = asked {
        let deadline = tokio::time::Instant::now() + wait;
        while reports.len() < nodes {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(report)) => reports.push(report),
                _ => break,
            }
        }
        // NATS's count is a lower bound (a node slow to answer its probe is not counted):
        // take what arrives a little longer.
        let late = deadline.min(tokio::time::Instant::now() + LATE);
        while let Ok(Some(report)) = tokio::time::timeout_at(late, answers.recv()).await {
            reports.push(report);
        }
    }
    pending.waiting.lock().unwrap().remove(&id);
    asked?;
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(reports)
}

/// Applies what arrives on the control channels, until the hub is dropped (its registry,
/// which sends them, goes with it).
pub(crate) async fn run(
    hub: WeakHub,
    mut messages: mpsc::UnboundedReceiver<(String, Publication)>,
) {
    while let Some((channel, publication)) = messages.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        if channel == CONTROL_CHANNEL {
            match serde_json::from_str::<Command>(publication.data.as_str()) {
                Ok(command) => apply(&hub, command).await,
                Err(e) => tracing::warn!(error = %e, "an unreadable control command"),
            }
        } else if let Ok(answer) = serde_json::from_str::<Answer>(publication.data.as_str()) {
            let waiting = hub.pending().waiting.lock().unwrap();
            if let Some(waiter) = waiting.get(&answer.id) {
                let _ = waiter.send(answer.report);
            }
        }
    }
}

async fn apply(hub: &Hub, command: Command) {
    let (user, only, item) = match command {
        Command::Report { id, reply_to } => {
            let answer = Answer {
                id,
                report: report(hub),
            };
            let data = serde_json::to_string(&answer).expect("answers serialize");
            if let Err(e) = hub.publish_control(&reply_to, data).await {
                tracing::warn!(error = %e, "could not answer a node report request");
            }
            return;
        }
        Command::Disconnect {
            user,
            node,
            connection,
            reconnect,
            reason,
        } => {
            if node.as_deref().is_some_and(|n| n != hub.node_id()) {
                return;
            }
            let code = if reconnect {
                close::DISCONNECTED
            } else {
                close::DISCONNECTED_NO_RECONNECT
            };
            let item = Outbound::Disconnect(Arc::new(Disconnect { code, reason }));
            (user, connection, item)
        }
        Command::Refresh {
            user,
            node,
            connection,
            expires_ms,
            channels,
        } => {
            if node != hub.node_id() {
                return;
            }
            let refresh = TokenRefresh {
                expires_ms,
                channels,
            };
            (user, Some(connection), Outbound::Refresh(Arc::new(refresh)))
        }
        Command::Subscribe { user, channel } => (user, None, Outbound::Subscribe(channel.into())),
        Command::Unsubscribe { user, channel } => {
            (user, None, Outbound::Unsubscribe(channel.into()))
        }
    };
    if let Ok(user) = user.parse::<UserId>() {
        let taken = hub.command_local(&user, only, &item);
        tracing::debug!(user = %user, taken, "applied a server API command");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_local_hub_answers_its_own_questions_and_commands() {
        let hub = Hub::local("n1");
        hub.start_control().await.unwrap();
        let dora: UserId = "dora".parse().unwrap();
        let (mut first, second) = (hub.connect(&dora), hub.connect(&dora));
        first.join("room:1").await.unwrap();
        let reports = reports(&hub, Duration::from_secs(1)).await.unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].node.as_str(), reports[0].connections),
            ("n1", 2)
        );
        assert_eq!(reports[0].channels[0].channel, "room:1");

        let only_second = Command::Disconnect {
            user: "dora".into(),
            node: Some("n1".into()),
            connection: Some(second.id()),
            reconnect: false,
            reason: "bye".into(),
        };
        assert_eq!(send(&hub, &only_second).await.unwrap(), 1, "nodes");
        let told = tokio::time::timeout(Duration::from_secs(1), second.recv()).await;
        match told.expect("the command arrives") {
            Outbound::Disconnect(d) => assert_eq!(
                (d.code, d.reason.as_str()),
                (close::DISCONNECTED_NO_RECONNECT, "bye")
            ),
            other => panic!("{other:?}"),
        }
        let quiet = tokio::time::timeout(Duration::from_millis(50), first.recv()).await;
        assert!(quiet.is_err(), "only the named connection");
    }

    #[tokio::test]
    async fn the_control_task_does_not_keep_the_hub_alive() {
        let hub = Hub::local("n1");
        hub.start_control().await.unwrap();
        let weak = hub.downgrade();
        drop(hub);
        assert!(weak.upgrade().is_none());
    }
}
