//! Putting a channel's live publications back in offset order.
//!
//! The history stream stores a channel's messages in offset order (the compare-and-set
//! sees to that), but nats-server republishes each one from the goroutine of the
//! connection that published it, so when two nodes publish to a channel at once, the
//! republished copies can cross: offset 28 was seen arriving before 27
//! (`nats_nodes_publishing_at_once_share_one_sequence_of_offsets`). A v1 socket would take
//! that for a gap and be sent to recover. So a node holds a publication that arrives ahead
//! of the next expected offset for up to [`HOLD`], until the ones before it arrive, and
//! then hands them over in order. If they do not come (core NATS dropped them), it hands
//! over what it holds anyway, and the gap is seen and recovered downstream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Publication;

/// How long a publication that arrived early waits for those before it.
pub(super) const HOLD: Duration = Duration::from_millis(50);

/// One channel's position in its live stream, and what arrived early.
#[derive(Debug, Default)]
pub(super) struct Order {
    /// The epoch and the next offset expected in it.
    next: Option<(Arc<str>, u64)>,
    held: BTreeMap<u64, Publication>,
    /// When to give up waiting for the gap before the held publications to fill.
    until: Option<Instant>,
}

impl Order {
    /// When [`Order::expire`] is due, if something is held.
    pub(super) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Takes `publication` (arrived at `now`); returns what to hand over now, in order.
    pub(super) fn take(&mut self, publication: Publication, now: Instant) -> Vec<Publication> {
        // Kept out of history: no position to keep.
        if publication.offset == 0 {
            return vec![publication];
        }
        let mut out = Vec::new();
        match &self.next {
            Some((epoch, next)) if *epoch == publication.epoch => {
                let next = *next;
                if publication.offset > next {
                    self.held.insert(publication.offset, publication);
                    self.until.get_or_insert(now + HOLD);
                    return out;
                }
                if publication.offset < next {
                    // Older than what was handed over: the gateway sorts it out.
                    return vec![publication];
                }
            }
            // The first one, or a new epoch: whatever was held belongs to the old one.
            _ => out.extend(self.release()),
        }
        let mut next = publication.offset + 1;
        let epoch = publication.epoch.clone();
        out.push(publication);
        while let Some(held) = self.held.remove(&next) {
            out.push(held);
            next += 1;
        }
        if self.held.is_empty() {
            self.until = None;
        }
        self.next = Some((epoch, next));
        out
    }

    /// The wait is over: hands over everything held, in order, gaps and all.
    pub(super) fn expire(&mut self) -> Vec<Publication> {
        let released = self.release();
        if let (Some(last), Some((_, next))) = (released.last(), &mut self.next) {
            *next = last.offset + 1;
        }
        released
    }

    fn release(&mut self) -> Vec<Publication> {
        self.until = None;
        std::mem::take(&mut self.held).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: &str, offset: u64) -> Publication {
        Publication {
            offset,
            epoch: epoch.into(),
            data: offset.to_string().into(),
        }
    }

    fn offsets(publications: Vec<Publication>) -> Vec<u64> {
        publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn crossed_publications_are_handed_over_in_order() {
        let now = Instant::now();
        let mut order = Order::default();
        assert_eq!(offsets(order.take(p("e", 26), now)), [26]);
        assert!(order.take(p("e", 28), now).is_empty(), "28 waits for 27");
        assert_eq!(order.until(), Some(now + HOLD));
        assert_eq!(offsets(order.take(p("e", 27), now)), [27, 28]);
        assert_eq!(order.until(), None);
        assert_eq!(offsets(order.take(p("e", 29), now)), [29]);
    }

    #[test]
    fn a_gap_that_stays_is_handed_over_when_the_wait_is_over() {
        let now = Instant::now();
        let mut order = Order::default();
        order.take(p("e", 1), now);
        assert!(order.take(p("e", 4), now).is_empty());
        assert!(order.take(p("e", 3), now).is_empty());
        assert_eq!(offsets(order.expire()), [3, 4]);
        assert_eq!(order.until(), None);
        assert_eq!(
            offsets(order.take(p("e", 5), now)),
            [5],
            "goes on after the gap"
        );
        assert_eq!(
            offsets(order.take(p("e", 2), now)),
            [2],
            "a late one is not held"
        );
    }

    #[test]
    fn a_new_epoch_or_no_history_is_not_held() {
        let now = Instant::now();
        let mut order = Order::default();
        order.take(p("e", 1), now);
        assert!(order.take(p("e", 3), now).is_empty());
        assert_eq!(offsets(order.take(p("", 0), now)), [0]);
        assert_eq!(
            offsets(order.take(p("f", 1), now)),
            [3, 1],
            "the old epoch's held ones first"
        );
        assert_eq!(offsets(order.take(p("f", 2), now)), [2]);
    }
}
