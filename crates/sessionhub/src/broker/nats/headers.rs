//! What a NATS broker message carries besides its data, in headers: the payload is the
//! publication's data byte for byte, so no envelope has to be parsed out of it.
//!
//! A message kept in history carries its channel offset, its epoch, the server it was
//! bound to, and the stream sequence of the channel's previous message (the chain that
//! recovery walks back). The stream republishes it with its headers, so a live delivery
//! carries exactly what history holds. A message without [`OFFSET`] was kept out of
//! history: offset 0, epoch "".

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use tungstenite::Utf8Bytes;

use crate::broker::Publication;

/// The channel offset, from 1 (0 on an epoch's start marker).
pub(super) const OFFSET: &str = "Sessionhub-Offset";
/// The channel's epoch.
pub(super) const EPOCH: &str = "Sessionhub-Epoch";
/// The `server_id` of the nats-server the epoch is bound to (see `history`).
pub(super) const BIND: &str = "Sessionhub-Bind";
/// The stream sequence of the channel's previous message, 0 for none.
pub(super) const PREV: &str = "Sessionhub-Prev";
/// Present on the message that starts an epoch without a publication (`recover` on a
/// channel without one): it holds no data and is not delivered.
pub(super) const START: &str = "Sessionhub-Start";
/// Marks a probe: a publisher asking which nodes are subscribed (see `census`).
pub(super) const PROBE: &str = "Sessionhub-Probe";

/// What a message received on a live subject stands for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Live {
    /// A publication to hand to the channel's sockets.
    Publication(Publication),
    /// An epoch's start marker: nothing to deliver.
    Start,
    /// A probe, to answer and not deliver.
    Probe,
}

/// Reads a live message; `None` if it is malformed (data not UTF-8, a bad offset).
pub(super) fn live(headers: Option<&HeaderMap>, payload: Bytes) -> Option<Live> {
    if headers.is_some_and(|h| h.get(PROBE).is_some()) {
        return Some(Live::Probe);
    }
    if headers.is_some_and(|h| h.get(START).is_some()) {
        return Some(Live::Start);
    }
    let data = Utf8Bytes::try_from(payload).ok()?;
    let Some(headers) = headers.filter(|h| h.get(OFFSET).is_some()) else {
        return Some(Live::Publication(Publication {
            offset: 0,
            epoch: "".into(),
            data,
        }));
    };
    Some(Live::Publication(Publication {
        offset: number(headers, OFFSET)?,
        epoch: headers.get(EPOCH)?.as_str().into(),
        data,
    }))
}

/// A message of the history stream, read back.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    /// Its stream sequence.
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) epoch: Arc<str>,
    pub(super) bind: Arc<str>,
    /// The stream sequence of the channel's message before it (0: none).
    pub(super) prev: u64,
    /// When the server stored it, in nanoseconds since the Unix epoch.
    pub(super) stored_at_nanos: i128,
    /// `None` for an epoch's start marker.
    pub(super) data: Option<Utf8Bytes>,
}

impl Stored {
    /// Reads a message of the history stream; `None` if it is not one of ours.
    pub(super) fn read(message: StreamMessage) -> Option<Self> {
        let headers = &message.headers;
        let data = match headers.get(START) {
            Some(_) => None,
            None => Some(Utf8Bytes::try_from(message.payload).ok()?),
        };
        Some(Self {
            seq: message.sequence,
            offset: number(headers, OFFSET)?,
            epoch: headers.get(EPOCH)?.as_str().into(),
            bind: headers.get(BIND)?.as_str().into(),
            prev: number(headers, PREV)?,
            stored_at_nanos: message.time.unix_timestamp_nanos(),
            data,
        })
    }

    /// The publication it holds; `None` for a start marker.
    pub(super) fn publication(&self) -> Option<Publication> {
        Some(Publication {
            offset: self.offset,
            epoch: self.epoch.clone(),
            data: self.data.clone()?,
        })
    }
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_read_whole_or_not_at_all() {
        let mut kept = HeaderMap::new();
        kept.insert(OFFSET, "7");
        kept.insert(EPOCH, "e1");
        let publication = |offset, epoch: &str, data: &str| {
            Some(Live::Publication(Publication {
                offset,
                epoch: epoch.into(),
                data: data.to_owned().into(),
            }))
        };
        assert_eq!(
            live(Some(&kept), Bytes::from_static(b"7:e:x")),
            publication(7, "e1", "7:e:x")
        );
        assert_eq!(
            live(None, Bytes::from_static(b"{}")),
            publication(0, "", "{}")
        );
        assert_eq!(
            live(Some(&HeaderMap::new()), Bytes::new()),
            publication(0, "", "")
        );
        let mut start = kept.clone();
        start.insert(START, "1");
        assert_eq!(live(Some(&start), Bytes::new()), Some(Live::Start));
        let mut probe = HeaderMap::new();
        probe.insert(PROBE, "1");
        assert_eq!(live(Some(&probe), Bytes::new()), Some(Live::Probe));
        assert_eq!(live(None, Bytes::from_static(b"\xff")), None, "not UTF-8");
        let mut bad = kept.clone();
        bad.insert(OFFSET, "x");
        assert_eq!(live(Some(&bad), Bytes::new()), None);
        let mut no_epoch = HeaderMap::new();
        no_epoch.insert(OFFSET, "1");
        assert_eq!(live(Some(&no_epoch), Bytes::new()), None);
    }
}
