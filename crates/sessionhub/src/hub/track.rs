//! The presence and occupancy tracker: reports each change to the presence backend in
//! order, and announces (and sends the webhooks of) the joins and leaves it answers.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, PublishOptions};
use crate::presence::{NodeChange, Presence, PresenceChannels, Transition};
use crate::protocol::{UserId, v1};
use crate::webhook::{EventKind, Webhooks};

use super::{OCCUPANCY_PREFIX, presence_events_channel};

/// Which channels have presence, and the queue of their changes to the tracker task.
pub(super) struct Tracking {
    pub(super) channels: PresenceChannels,
    pub(super) changes: mpsc::UnboundedSender<PresenceChange>,
}

/// One user's connections to one presence channel changed on this node.
pub(super) struct PresenceChange {
    pub(super) channel: String,
    pub(super) user: UserId,
    pub(super) was: usize,
    pub(super) now: usize,
    /// The user's info on this node, with a change that adds connections.
    pub(super) info: Option<Arc<str>>,
    /// The channel's member limit, for a join that has one ([`NodeChange::limit`]).
    pub(super) limit: Option<usize>,
    /// Told once the backend has taken the change into account: false if it refused it.
    pub(super) done: Option<oneshot::Sender<bool>>,
}

/// Publishes that `user` joined or left `channel` (a join with the user's `info`, if any),
/// as the v1 frame its subscribers get.
pub(super) async fn announce(
    broker: &Arc<dyn Broker>,
    channel: &str,
    user: &str,
    transition: Transition,
    info: Option<&str>,
) {
    if channel.starts_with(OCCUPANCY_PREFIX) {
        return;
    }
    let Some(frame) = v1::presence_event(channel, user, transition, info) else {
        return;
    };
    let events = presence_events_channel(channel);
    let published = broker
        .publish(&events, frame.into(), &PublishOptions::default())
        .await;
    if let Err(e) = published {
        tracing::warn!(error = %e, channel, "a presence event was not published");
    }
}

/// Queues the webhook of a join or leave, which the presence backend answered to this node
/// alone: a user's on a presence channel, or the occupancy of a channel (occupied, vacated).
pub(super) async fn presence_webhook(
    webhooks: Option<&Arc<Webhooks>>,
    channel: &str,
    user: &str,
    transition: Transition,
) {
    let Some(webhooks) = webhooks else { return };
    let (kind, data) = match (channel.strip_prefix(OCCUPANCY_PREFIX), transition) {
        (_, Transition::Unchanged | Transition::Refused) => return,
        (Some(channel), Transition::Joined(_)) => {
            (EventKind::Occupied, serde_json::json!({"channel": channel}))
        }
        (Some(channel), Transition::Left(_)) => {
            (EventKind::Vacated, serde_json::json!({"channel": channel}))
        }
        // Internal channels' presence (a Pusher user's sign-ins, on `#server-to-user-…`)
        // is the server's business, not the application's.
        (None, _) if !crate::protocol::is_public_channel_name(channel) => return,
        (None, Transition::Joined(_)) => (
            EventKind::Join,
            serde_json::json!({"channel": channel, "user": user}),
        ),
        (None, Transition::Left(_)) => (
            EventKind::Leave,
            serde_json::json!({"channel": channel, "user": user}),
        ),
    };
    webhooks.send(kind, data).await;
}

/// The tracker task: reports each presence change to the backend in order, and announces
/// the joins and leaves it answers. Ends with the hub (when the queue's sender drops).
pub(super) async fn track(
    mut queue: mpsc::UnboundedReceiver<PresenceChange>,
    presence: Arc<dyn Presence>,
    broker: Arc<dyn Broker>,
    node: String,
    webhooks: Arc<OnceLock<Arc<Webhooks>>>,
) {
    while let Some(change) = queue.recv().await {
        let update = NodeChange {
            node: &node,
            channel: &change.channel,
            user: &change.user,
            was: change.was,
            now: change.now,
            info: change.info.as_deref(),
            limit: change.limit,
        };
        let admitted = match presence.update(&update).await {
            Ok(Transition::Refused) => false,
            Ok(transition) => {
                let user = change.user.as_str();
                let info = change.info.as_deref();
                announce(&broker, &change.channel, user, transition, info).await;
                presence_webhook(webhooks.get(), &change.channel, user, transition).await;
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    channel = change.channel,
                    "a presence change was not recorded; the user's next change on the \
                     channel records it"
                );
                true
            }
        };
        if let Some(done) = change.done {
            let _ = done.send(admitted);
        }
    }
}
