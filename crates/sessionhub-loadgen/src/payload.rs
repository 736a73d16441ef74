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

use crate::http::push_u64;

/// Marks a benchmark message and the format version.
const MAGIC: &[u8] = b"lg1 ";

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
    #[cfg(test)]
    pub(crate) fn encode(&self, size: usize) -> String {
        let mut out = Vec::new();
        self.encode_into(size, &mut out);
        String::from_utf8(out).expect("the payload alphabet is ASCII")
    }

    /// Appends the text form, padded with `x` to at least `size` bytes, to `out`. The text
    /// is ASCII letters, digits and spaces: it needs no escaping in JSON.
    pub(crate) fn encode_into(&self, size: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(MAGIC);
        push_u64(out, u64::from(self.step));
        out.push(b' ');
        push_u64(out, u64::from(self.user));
        out.push(b' ');
        push_u64(out, self.seq);
        out.push(b' ');
        push_u64(out, self.due_us);
        out.push(b' ');
        let len = out.len() - start;
        if len < size {
            out.resize(start + size, b'x');
        }
    }

    /// Reads a payload from `text`, which may carry other text around it (a Socket.IO
    /// frame); `None` if there is none.
    pub(crate) fn decode(text: &[u8]) -> Option<Self> {
        let start = text.windows(MAGIC.len()).position(|w| w == MAGIC)?;
        let mut rest = &text[start + MAGIC.len()..];
        let step = u32::try_from(field(&mut rest)?).ok()?;
        let user = u32::try_from(field(&mut rest)?).ok()?;
        let seq = field(&mut rest)?;
        let due_us = field(&mut rest)?;
        Some(Self {
            step,
            user,
            seq,
            due_us,
        })
    }
}

/// A decimal field ended by a space or by the end of `rest`; `rest` moves past the space.
fn field(rest: &mut &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut len = 0;
    for &b in rest.iter() {
        if b == b' ' {
            break;
        }
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        len += 1;
    }
    if len == 0 {
        return None;
    }
    *rest = rest.get(len + 1..).unwrap_or(&[]);
    Some(n)
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
        assert_eq!(Payload::decode(text.as_bytes()), Some(p));
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
        assert_eq!(Payload::decode(p.encode(0).as_bytes()), Some(p));
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
        assert_eq!(Payload::decode(frame.as_bytes()), Some(p));
    }

    #[test]
    fn rejects_other_text() {
        assert_eq!(Payload::decode(b"{\"type\":\"connected\"}"), None);
        assert_eq!(Payload::decode(b"lg1 1 2"), None);
        assert_eq!(Payload::decode(b"lg1 a b c d"), None);
        assert_eq!(
            Payload::decode(b"lg1 1 2 3 4"),
            Some(Payload {
                step: 1,
                user: 2,
                seq: 3,
                due_us: 4
            })
        );
        assert_eq!(Payload::decode(b"lg1 1  3 4 "), None);
        assert_eq!(Payload::decode(b"lg1 4294967296 2 3 4 "), None);
        assert_eq!(Payload::decode(b"lg1 1 2 3 99999999999999999999 "), None);
        assert_eq!(Payload::decode(b"lg1 1 2 3 4\"]"), None);
    }
}
