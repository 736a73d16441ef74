//! What a connection's queue carries, and a publication rendered once per protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tungstenite::Utf8Bytes;

use crate::broker::{Envelope, Publication};
use crate::protocol::{pusher, seed, v1};

use super::PRESENCE_EVENTS_PREFIX;

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A publication on one of the connection's channels.
    Message(Arc<Delivery>),
    /// The node may have missed publications: recover, if the connection can.
    Resync,
    /// Close the connection with this code and reason (its session ended).
    Close(u16, &'static str),
    /// The server API disconnects the connection.
    Disconnect(Arc<Disconnect>),
    /// The server API subscribes the connection to a channel, as if it had asked.
    Subscribe(Arc<str>),
    /// The server API unsubscribes the connection from a channel.
    Unsubscribe(Arc<str>),
    /// An SSE stream's token was refreshed (`POST /sse/refresh`, on any node).
    Refresh(Arc<TokenRefresh>),
    /// A delivering task wrote part of a frame straight to the socket: write the rest
    /// ([`crate::wire`]) before anything else.
    Flush,
}

/// Which frame a connection that takes deliveries straight from the delivering task
/// ([`crate::wire`]) gets for a publication.
#[derive(Debug, Clone)]
pub(crate) enum Render {
    /// The seed protocol's frame: the data.
    Seed,
    /// The Pusher event, unless the publication excludes this socket id.
    Pusher(Arc<str>),
    /// Protocol v1's `publication` frame, for the next publication of the channel's
    /// [`Position`] (or any, on a channel without history); a presence channel's join or
    /// leave as it came.
    V1,
}

/// How a connection's member of one channel takes deliveries.
#[derive(Debug, Clone, Default)]
pub(crate) enum Straight {
    /// Through the connection's queue and task.
    #[default]
    No,
    /// Straight to the wire, as the connection's [`Render`] makes them.
    Yes,
    /// Straight to the wire while they follow on from this v1 position (which moves with
    /// them); anything else through the queue, whose task decides (a duplicate, a gap).
    At(Arc<Position>),
}

/// A v1 connection's place in one channel's history: its epoch, and the offset of the
/// last publication sent. Shared by the socket's task and the delivering task, which
/// takes turns with it ([`crate::wire`]): only one of them sends at a time.
#[derive(Debug)]
pub(crate) struct Position {
    /// The history's epoch ("" for a channel without history).
    pub(crate) epoch: Arc<str>,
    offset: AtomicU64,
}

impl Position {
    /// At `offset` in `epoch`.
    pub(crate) fn new(epoch: Arc<str>, offset: u64) -> Self {
        Self {
            epoch,
            offset: AtomicU64::new(offset),
        }
    }

    /// The offset of the last publication sent.
    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    /// The last publication sent is now at `offset`.
    pub(crate) fn moved_to(&self, offset: u64) {
        self.offset.store(offset, Ordering::Release);
    }
}

/// What a connection's [`Render`] makes of a delivery.
#[derive(Debug)]
pub(crate) enum Rendered {
    /// This frame, to write.
    Frame(Utf8Bytes),
    /// Nothing: the connection does not take it.
    Skip,
    /// The connection's task decides: queue it.
    Queue,
}

impl Render {
    /// What the member `straight` of a connection rendering this way gets for `delivery`.
    pub(crate) fn frame(&self, delivery: &Delivery, straight: &Straight) -> Rendered {
        match (self, straight) {
            (_, Straight::No) => Rendered::Queue,
            (Self::Seed, _) => Rendered::Frame(delivery.seed_frame()),
            (Self::Pusher(socket_id), _) => {
                let except = delivery.envelope().and_then(|e| e.except.as_deref());
                if except == Some(socket_id) {
                    Rendered::Skip
                } else {
                    Rendered::Frame(delivery.pusher_frame())
                }
            }
            (Self::V1, Straight::Yes) if delivery.channel.starts_with(PRESENCE_EVENTS_PREFIX) => {
                Rendered::Frame(delivery.publication.data.clone())
            }
            (Self::V1, Straight::At(position)) => {
                let publication = &delivery.publication;
                if publication.offset == 0 {
                    return Rendered::Frame(delivery.v1_frame());
                }
                if publication.epoch != position.epoch
                    || publication.offset != position.offset() + 1
                {
                    return Rendered::Queue;
                }
                position.moved_to(publication.offset);
                Rendered::Frame(delivery.v1_frame())
            }
            (Self::V1, Straight::Yes) => Rendered::Queue,
        }
    }
}

/// The delivery latency histogram. Looked up once: `metrics::histogram!` hashes its name
/// into the recorder's registry on every call, 2 % of a node's CPU per delivery (perf). The
/// recorder is installed before the server serves, so the first delivery finds it.
pub(crate) fn delivery_latency() -> &'static metrics::Histogram {
    static HISTOGRAM: OnceLock<metrics::Histogram> = OnceLock::new();
    HISTOGRAM.get_or_init(|| metrics::histogram!("sessionhub_delivery_latency_seconds"))
}

/// A refreshed token, for the connection it names.
#[derive(Debug)]
pub(crate) struct TokenRefresh {
    /// The new token's `exp`, in milliseconds since the Unix epoch.
    pub(crate) expires_ms: u64,
    /// The new token's `channels` claim.
    pub(crate) channels: Vec<String>,
}

/// A disconnect ordered through the server API.
#[derive(Debug)]
pub(crate) struct Disconnect {
    /// The close code, and its name (the metrics label).
    pub(crate) code: (u16, &'static str),
    /// Why, for the client: the `disconnect` frame's and the close frame's reason.
    pub(crate) reason: String,
}

/// One publication on its way to every local subscriber, rendered at most once per
/// protocol however many connections take it.
#[derive(Debug)]
pub(crate) struct Delivery {
    channel: String,
    publication: Publication,
    /// What the publication carries besides its data, taken out of it.
    envelope: Option<Envelope>,
    /// When it reached this node, for the delivery latency metric.
    arrived: std::time::Instant,
    seed_frame: OnceLock<Utf8Bytes>,
    v1_frame: OnceLock<Utf8Bytes>,
    pusher_frame: OnceLock<Utf8Bytes>,
}

impl Delivery {
    /// A delivery of `publication` as a broker handed it over, envelope and all.
    pub(crate) fn new(channel: &str, mut publication: Publication) -> Self {
        let envelope = Envelope::take(&mut publication);
        Self {
            channel: channel.to_owned(),
            publication,
            envelope,
            arrived: std::time::Instant::now(),
            seed_frame: OnceLock::new(),
            v1_frame: OnceLock::new(),
            pusher_frame: OnceLock::new(),
        }
    }

    /// What the publication carries besides its data (event name, excluded socket, sender).
    pub(crate) fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_ref()
    }

    /// How long ago it reached this node.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.arrived.elapsed()
    }

    /// The channel it was published on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The publication.
    pub(crate) fn publication(&self) -> &Publication {
        &self.publication
    }

    /// The frame the seed endpoint sends ([`seed::message`]).
    pub(crate) fn seed_frame(&self) -> Utf8Bytes {
        self.seed_frame
            .get_or_init(|| seed::message(&self.publication))
            .clone()
    }

    /// The protocol v1 `publication` frame ([`v1::publication_frame`]).
    pub(crate) fn v1_frame(&self) -> Utf8Bytes {
        self.v1_frame
            .get_or_init(|| v1::publication_frame(&self.channel, &self.publication).into())
            .clone()
    }

    /// The Pusher event frame ([`pusher::event`]): the envelope's event (or
    /// [`crate::broker::DEFAULT_EVENT`]) and sender. Whether a connection takes it (the
    /// envelope's `except`) is the connection's business.
    pub(crate) fn pusher_frame(&self) -> Utf8Bytes {
        self.pusher_frame
            .get_or_init(|| {
                let envelope = self.envelope.as_ref();
                let event = envelope
                    .and_then(|e| e.event.as_deref())
                    .unwrap_or(crate::broker::DEFAULT_EVENT);
                let user = envelope.and_then(|e| e.user.as_deref());
                let data = self.publication.data.as_str();
                // Every Pusher subscriber of a hub channel belongs to the app whose
                // namespace it is in, and knows the channel by its Pusher name.
                pusher::event(event, pusher::pusher_name(&self.channel), data, user).into()
            })
            .clone()
    }
}
