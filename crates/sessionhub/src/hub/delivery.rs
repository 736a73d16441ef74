//! What a connection's queue carries, and a publication rendered once per protocol.

use std::sync::{Arc, OnceLock};

use tungstenite::Utf8Bytes;

use crate::broker::{Envelope, Publication};
use crate::protocol::{pusher, seed, v1};

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
/// ([`crate::wire`]) gets for a publication: one that needs no state of the connection's.
#[derive(Debug, Clone)]
pub(crate) enum Render {
    /// The seed protocol's frame: the data.
    Seed,
    /// The Pusher event, unless the publication excludes this socket id.
    Pusher(Arc<str>),
}

impl Render {
    /// The frame for `delivery`; `None`: this connection does not take it.
    pub(crate) fn frame(&self, delivery: &Delivery) -> Option<Utf8Bytes> {
        match self {
            Self::Seed => Some(delivery.seed_frame()),
            Self::Pusher(socket_id) => {
                let except = delivery.envelope().and_then(|e| e.except.as_deref());
                (except != Some(socket_id)).then(|| delivery.pusher_frame())
            }
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
