//! Accounting: latency histograms, and per-connection loss and duplicate detection.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track, in microseconds (a minute); larger values are
/// clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub(crate) struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency; clamped to 1 µs .. 60 s.
    pub(crate) fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The summary in milliseconds, with the percentile curve for charts.
    pub(crate) fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let curve = if h.is_empty() {
            Vec::new()
        } else {
            CURVE_PERCENTILES
                .iter()
                .map(|&p| [p, ms(h.value_at_quantile(p / 100.0))])
                .collect()
        };
        LatencySummary {
            count: h.len(),
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            curve,
        }
    }
}

/// Percentiles sampled for the latency-distribution charts.
const CURVE_PERCENTILES: [f64; 16] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999,
    100.0,
];

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    /// Values recorded.
    pub(crate) count: u64,
    /// Mean.
    pub(crate) mean_ms: f64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// Largest.
    pub(crate) max_ms: f64,
    /// `[percentile, ms]` points for charts.
    pub(crate) curve: Vec<[f64; 2]>,
}

/// The sequence numbers one connection has seen, as a growable bit set.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqSet {
    words: Vec<u64>,
    unique: u64,
}

impl SeqSet {
    /// Marks `seq` as seen; `true` if it was new.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let new = self.words[word] & mask == 0;
        self.words[word] |= mask;
        self.unique += u64::from(new);
        new
    }

    /// Distinct sequence numbers seen.
    pub(crate) fn unique(&self) -> u64 {
        self.unique
    }

    /// Distinct sequence numbers seen below `limit`.
    pub(crate) fn unique_below(&self, limit: u64) -> u64 {
        let full = (limit / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = limit % 64;
        if rest > 0
            && let Some(w) = self.words.get(full)
        {
            n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
        }
        n
    }
}

/// What one connection received during one step.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConnTally {
    /// Distinct sequence numbers.
    pub(crate) seen: SeqSet,
    /// Every benchmark message, duplicates included.
    pub(crate) received: u64,
    /// Messages meant for another user.
    pub(crate) misrouted: u64,
    /// Messages that arrived after one with a higher sequence number.
    pub(crate) reordered: u64,
    /// The highest sequence number seen, plus one (0: none yet).
    next: u64,
}

impl ConnTally {
    /// Records a message for this connection's user; `true` if it was not a duplicate.
    pub(crate) fn record(&mut self, seq: u64) -> bool {
        self.received += 1;
        let new = self.seen.insert(seq);
        if new && seq < self.next {
            self.reordered += 1;
        }
        self.next = self.next.max(seq + 1);
        new
    }
}

/// Delivery totals over many connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// Deliveries that should have happened (messages x connections of the recipient).
    pub(crate) expected: u64,
    /// Distinct deliveries that happened.
    pub(crate) delivered: u64,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Deliveries beyond the first of a message on a connection.
    pub(crate) duplicated: u64,
    /// Messages that arrived for a user other than the connection's.
    pub(crate) misrouted: u64,
    /// Distinct deliveries that came after a later message of the same user: the server
    /// changed their order (only when the publisher sends each user's messages in order,
    /// as one publisher does; concurrent publishers race each other).
    #[serde(default)]
    pub(crate) reordered: u64,
}

impl Delivery {
    /// Adds one connection that should have received messages `0..expected`.
    pub(crate) fn add(&mut self, tally: &ConnTally, expected: u64) {
        let delivered = tally.seen.unique_below(expected);
        self.expected += expected;
        self.delivered += delivered;
        self.lost += expected - delivered;
        self.duplicated += tally.received - tally.seen.unique();
        self.misrouted += tally.misrouted;
        self.reordered += tally.reordered;
    }

    /// Lost deliveries as a fraction of the expected ones.
    pub(crate) fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_counts_distinct_values() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(1000));
        assert!(!s.insert(64));
        assert_eq!(s.unique(), 4);
        assert_eq!(s.unique_below(0), 0);
        assert_eq!(s.unique_below(1), 1);
        assert_eq!(s.unique_below(63), 1);
        assert_eq!(s.unique_below(64), 2);
        assert_eq!(s.unique_below(65), 3);
        assert_eq!(s.unique_below(1000), 3);
        assert_eq!(s.unique_below(5000), 4);
    }

    #[test]
    fn delivery_counts_loss_and_duplicates() {
        let mut t = ConnTally::default();
        for seq in [0, 2, 1, 2, 2, 4] {
            t.record(seq);
        }
        // Message 5 was never sent to this connection's user: not counted as delivered.
        t.record(9);
        t.misrouted = 1;
        let mut d = Delivery::default();
        d.add(&t, 6);
        assert_eq!(
            d,
            Delivery {
                expected: 6,
                delivered: 4,
                lost: 2,
                duplicated: 2,
                misrouted: 1,
                reordered: 1,
            }
        );
        assert!((d.loss_ratio() - 2.0 / 6.0).abs() < 1e-9);
        let mut other = ConnTally::default();
        other.record(0);
        d.add(&other, 1);
        assert_eq!(d.expected, 7);
        assert_eq!(d.delivered, 5);
        assert_eq!(d.lost, 2);
    }

    #[test]
    fn empty_delivery_has_no_loss() {
        assert_eq!(Delivery::default().loss_ratio(), 0.0);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::default();
        for us in 1..=1000 {
            l.record(us * 1000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{}", s.p50_ms);
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{}", s.p99_ms);
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{}", s.max_ms);
        assert_eq!(s.curve.len(), CURVE_PERCENTILES.len());
        assert!(s.curve.windows(2).all(|w| w[0][1] <= w[1][1]));
        let mut m = Latency::default();
        m.record(0);
        m.record(u64::MAX);
        m.merge(&l);
        assert_eq!(m.summary().count, 1002);
        assert!(Latency::default().summary().curve.is_empty());
    }
}
