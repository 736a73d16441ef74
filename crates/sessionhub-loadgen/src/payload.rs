//! The benchmark message: who it is for, its place in the sequence and when it was due.
//!
//! Text, so that it travels unchanged through every target (a sessionhub push body, a
//! `{"KEY","VALUE"}` frame, a Socket.IO event argument):
//!
//! ```text
//! lg1 <step> <user> <seq> <due_us> <padding>
//! ```
//!
//! `due_us` is the moment the publisher's schedule said the message should leave, in
//! microseconds since the load generator's clock started (publisher and clients live in
//! the same process, so they share the clock). Measuring from the intended time rather than
//! the actual send avoids coordinated omission: a publisher that falls behind shows up as
//! latency instead of hiding it.

use std::fmt::Write as _;

/// Marks a benchmark message and the format version.
const MAGIC: &str = "lg1";

/// One benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Payload {
    /// Which run (search step) sent it; messages of an earlier step are ignored.
    pub(crate) step: u32,
    /// Index of the recipient user.
    pub(crate) user: u32,
    /// The message's number among those sent to this user in this step, from 0.
    pub(crate) seq: u64,
    /// When it was due to leave, in microseconds on the load generator's clock.
    pub(crate) due_us: u64,
}

impl Payload {
    /// The text form, padded with `x` to at least `size` bytes.
    pub(crate) fn encode(&self, size: usize) -> String {
        let mut text = String::with_capacity(size.max(48));
        let _ = write!(
            text,
            "{MAGIC} {} {} {} {} ",
            self.step, self.user, self.seq, self.due_us
        );
        while text.len() < size {
            text.push('x');
        }
        text
    }

    /// Reads a payload from `text`, which may carry other text around it (a Socket.IO
    /// frame); `None` if there is none.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let start = text.find("lg1 ")?;
        let mut fields = text[start + MAGIC.len() + 1..].split(' ');
        let step = fields.next()?.parse().ok()?;
        let user = fields.next()?.parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let due_us = fields.next()?.parse().ok()?;
        Some(Self {
            step,
            user,
            seq,
            due_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let p = Payload {
            step: 3,
            user: 41,
            seq: 1_000_000,
            due_us: 123_456_789,
        };
        let text = p.encode(100);
        assert_eq!(text.len(), 100);
        assert!(text.starts_with("lg1 3 41 1000000 123456789 x"));
        assert_eq!(Payload::decode(&text), Some(p));
    }

    #[test]
    fn short_size_is_not_truncated() {
        let p = Payload {
            step: 0,
            user: 0,
            seq: 0,
            due_us: 0,
        };
        assert_eq!(p.encode(0), "lg1 0 0 0 0 ");
        assert_eq!(Payload::decode(&p.encode(0)), Some(p));
    }

    #[test]
    fn found_inside_a_socketio_frame() {
        let p = Payload {
            step: 1,
            user: 2,
            seq: 3,
            due_us: 4,
        };
        let frame = format!("42[\"msg\",\"{}\"]", p.encode(20));
        assert_eq!(Payload::decode(&frame), Some(p));
    }

    #[test]
    fn rejects_other_text() {
        assert_eq!(Payload::decode("{\"type\":\"connected\"}"), None);
        assert_eq!(Payload::decode("lg1 1 2"), None);
        assert_eq!(Payload::decode("lg1 a b c d"), None);
    }
}
