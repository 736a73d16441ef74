//! The webhook `Queue` contract: what is pushed is claimed, once at a time, until it is
//! acked; a retried event comes back after its delay with one more attempt; a claim whose
//! consumer vanished comes back after the lease; the bound holds; a held event is due after
//! its grace and can be cancelled, from any consumer of a shared queue, until it is claimed.
//!
//! A [`QueueFixture`] opens queues on one shared backend: `open(consumer, bound, lease)`
//! gives a queue read as `consumer`, so that checks can play several nodes (or, for a
//! single-node backend, the same node before and after a restart: `shared` says which).
//!
//! [`webhook_queue_conformance!`](crate::webhook_queue_conformance) runs [`checks`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sessionhub::webhook::{Event, EventKind, Queue};

/// Upper bound for one test, setup included.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Opens a queue read as `consumer`, holding at most `bound` events, with claims lasting
/// `lease` (a backend whose lease is fixed may ignore it and say so in `lease_fixed`).
pub type Open =
    Box<dyn Fn(&str, usize, Duration) -> BoxFuture<'static, Arc<dyn Queue>> + Send + Sync>;

/// A backend under test.
pub struct QueueFixture {
    /// Opens a queue on the backend.
    pub open: Open,
    /// Whether queues opened with different consumers share their events (Redis), as
    /// opposed to each being its own (memory).
    pub shared: bool,
    /// Keeps the backend alive (a temp dir, a Redis server).
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

impl QueueFixture {
    /// A fixture of `open`, `shared` or not, kept alive by `guard`.
    pub fn new(open: Open, shared: bool, guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            open,
            shared,
            guard: Box::new(guard),
        }
    }
}

fn event(n: usize) -> Event {
    Event::new(
        EventKind::Online,
        "node-a",
        serde_json::json!({"user": format!("user-{n}")}),
    )
}

/// The checks, each taking the fixture.
pub mod checks {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// Pushed events are claimed with their content and no attempts; claimed ones are not
    /// claimed again while leased; acked ones are gone.
    pub async fn pushed_events_are_claimed_once_and_acked_away(f: &QueueFixture) {
        let queue = (f.open)("a", 100, LONG).await;
        let pushed: Vec<Event> = (0..5).map(event).collect();
        for e in &pushed {
            assert!(queue.push(e).await.unwrap(), "queued");
        }
        let claimed = queue.claim(3).await.unwrap();
        assert_eq!(claimed.len(), 3, "at most what was asked");
        let rest = queue.claim(10).await.unwrap();
        assert_eq!(rest.len(), 2, "the others, not the claimed ones again");
        let mut ids: Vec<String> = claimed
            .iter()
            .chain(&rest)
            .map(|c| c.event.id.clone())
            .collect();
        ids.sort();
        let mut want: Vec<String> = pushed.iter().map(|e| e.id.clone()).collect();
        want.sort();
        assert_eq!(ids, want);
        for c in claimed.iter().chain(&rest) {
            assert_eq!(c.attempts, 0);
            let original = pushed.iter().find(|e| e.id == c.event.id).unwrap();
            assert_eq!(&c.event, original, "the event comes back as it was pushed");
            queue.ack(c).await.unwrap();
        }
        assert!(queue.claim(10).await.unwrap().is_empty(), "nothing left");
    }

    /// A retried event is not due before its delay, then comes back with one more attempt.
    pub async fn a_retried_event_comes_back_after_its_delay(f: &QueueFixture) {
        let queue = (f.open)("a", 100, LONG).await;
        let e = event(1);
        queue.push(&e).await.unwrap();
        let claimed = queue.claim(10).await.unwrap().pop().unwrap();
        queue
            .retry(&claimed, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(queue.claim(10).await.unwrap().is_empty(), "not due yet");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let again = queue.claim(10).await.unwrap();
        assert_eq!(again.len(), 1, "due again");
        assert_eq!(again[0].event.id, e.id);
        assert_eq!(again[0].attempts, 1);
        queue.retry(&again[0], Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = queue.claim(10).await.unwrap();
        assert_eq!(third[0].attempts, 2, "attempts add up");
    }

    /// An event claimed and never acked nor retried (its consumer died) is claimed again
    /// once the lease is over, by another consumer where the queue is shared.
    pub async fn an_abandoned_claim_comes_back_after_the_lease(f: &QueueFixture) {
        let lease = Duration::from_millis(500);
        let first = (f.open)("a", 100, lease).await;
        let e = event(1);
        first.push(&e).await.unwrap();
        assert_eq!(first.claim(10).await.unwrap().len(), 1);
        let second = if f.shared {
            (f.open)("b", 100, lease).await
        } else {
            first.clone()
        };
        assert!(second.claim(10).await.unwrap().is_empty(), "leased");
        // Memory and redb leases are fixed (60 s); only a shared backend is checked here.
        if f.shared {
            tokio::time::sleep(lease + Duration::from_millis(300)).await;
            let again = second.claim(10).await.unwrap();
            assert_eq!(again.len(), 1, "taken over after the lease");
            assert_eq!(again[0].event.id, e.id);
            second.ack(&again[0]).await.unwrap();
            assert!(first.claim(10).await.unwrap().is_empty());
        }
    }

    /// Two consumers of a shared queue claiming at once get each event once between them.
    pub async fn concurrent_consumers_split_the_events(f: &QueueFixture) {
        let a = (f.open)("a", 1000, LONG).await;
        let b = if f.shared {
            (f.open)("b", 1000, LONG).await
        } else {
            a.clone()
        };
        for n in 0..40 {
            a.push(&event(n)).await.unwrap();
        }
        let mut seen = HashSet::new();
        loop {
            let (x, y) = tokio::join!(a.claim(7), b.claim(7));
            let (x, y) = (x.unwrap(), y.unwrap());
            if x.is_empty() && y.is_empty() {
                break;
            }
            for c in x.iter().chain(&y) {
                assert!(
                    seen.insert(c.event.id.clone()),
                    "claimed twice: {}",
                    c.event.id
                );
            }
        }
        assert_eq!(seen.len(), 40);
    }

    /// Past the bound, push answers false and the queue keeps what it had; room made by an
    /// ack is usable again. Retried (delayed) events count toward the bound.
    pub async fn the_bound_holds(f: &QueueFixture) {
        let queue = (f.open)("a", 3, LONG).await;
        for n in 0..3 {
            assert!(queue.push(&event(n)).await.unwrap());
        }
        assert!(!queue.push(&event(3)).await.unwrap(), "full");
        let claimed = queue.claim(1).await.unwrap().pop().unwrap();
        queue.retry(&claimed, LONG).await.unwrap();
        assert!(
            !queue.push(&event(4)).await.unwrap(),
            "a delayed event still counts"
        );
        let other = queue.claim(1).await.unwrap().pop().unwrap();
        queue.ack(&other).await.unwrap();
        assert!(queue.push(&event(5)).await.unwrap(), "room again");
    }

    /// Acking or retrying twice (a consumer whose first answer was lost) does no harm:
    /// the event is not queued twice.
    pub async fn acks_and_retries_are_idempotent(f: &QueueFixture) {
        let queue = (f.open)("a", 100, LONG).await;
        queue.push(&event(1)).await.unwrap();
        let claimed = queue.claim(1).await.unwrap().pop().unwrap();
        queue.ack(&claimed).await.unwrap();
        queue.ack(&claimed).await.unwrap();
        queue.retry(&claimed, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            queue.claim(10).await.unwrap().is_empty(),
            "an acked event stays gone"
        );
    }
    /// A held event is not due before its grace, then is claimed like any other; held
    /// events count toward the bound (one per key: holding again under a key replaces).
    pub async fn a_held_event_is_due_after_its_grace(f: &QueueFixture) {
        let queue = (f.open)("a", 2, LONG).await;
        let grace = Duration::from_millis(500);
        let first = event(1);
        assert!(queue.hold(&first, "k1", grace).await.unwrap(), "held");
        let second = event(2);
        assert!(queue.hold(&second, "k1", grace).await.unwrap(), "replaced");
        assert!(
            queue.push(&event(3)).await.unwrap(),
            "the replaced one left room"
        );
        assert!(!queue.hold(&event(4), "k2", grace).await.unwrap(), "full");
        let now = queue.claim(10).await.unwrap();
        assert_eq!(now.len(), 1, "only the pushed one is due: {now:?}");
        queue.ack(&now[0]).await.unwrap();
        tokio::time::sleep(grace + Duration::from_millis(300)).await;
        let due = queue.claim(10).await.unwrap();
        assert_eq!(due.len(), 1, "the held one, once: {due:?}");
        assert_eq!(due[0].event, second, "the last held under the key");
        assert_eq!(due[0].attempts, 0);
        queue.ack(&due[0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(queue.claim(10).await.unwrap().is_empty(), "nothing left");
    }

    /// A held event cancelled within its grace (from another consumer where the queue is
    /// shared: the comeback may be on another node) is never claimed; cancelling again, or
    /// a key never held, answers false.
    pub async fn a_held_event_cancelled_in_time_is_never_delivered(f: &QueueFixture) {
        let grace = Duration::from_millis(400);
        let a = (f.open)("a", 100, LONG).await;
        let b = if f.shared {
            (f.open)("b", 100, LONG).await
        } else {
            a.clone()
        };
        a.hold(&event(1), "left", grace).await.unwrap();
        a.hold(&event(2), "kept", grace).await.unwrap();
        assert!(b.cancel("left").await.unwrap(), "taken back");
        assert!(!b.cancel("left").await.unwrap(), "once");
        assert!(!a.cancel("never").await.unwrap());
        tokio::time::sleep(grace + Duration::from_millis(300)).await;
        let due = b.claim(10).await.unwrap();
        let ids: Vec<_> = due.iter().map(|c| c.event.data["user"].clone()).collect();
        assert_eq!(ids, [serde_json::json!("user-2")], "only the one kept");
        b.ack(&due[0]).await.unwrap();
    }

    /// Once claimed, a held event is on its way: cancel answers false and the event is
    /// still there to ack or retry (a failed delivery comes back, past cancelling); a
    /// consumer that dies holding it leaves it to another after the lease.
    pub async fn a_claimed_held_event_is_past_cancelling(f: &QueueFixture) {
        let lease = Duration::from_millis(500);
        let a = (f.open)("a", 100, lease).await;
        a.hold(&event(1), "left", Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let claimed = a.claim(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(!a.cancel("left").await.unwrap(), "claimed: past cancelling");
        a.retry(&claimed[0], Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a.cancel("left").await.unwrap(), "a retried one too");
        let again = a.claim(10).await.unwrap();
        assert_eq!(again.len(), 1, "back for another try");
        assert_eq!(again[0].attempts, 1);
        if f.shared {
            let b = (f.open)("b", 100, lease).await;
            tokio::time::sleep(lease + Duration::from_millis(300)).await;
            let taken = b.claim(10).await.unwrap();
            assert_eq!(taken.len(), 1, "taken over from a dead consumer");
            b.ack(&taken[0]).await.unwrap();
        } else {
            a.ack(&again[0]).await.unwrap();
        }
    }
}

/// Runs every queue check against `$factory` (an `async fn() -> QueueFixture`).
#[macro_export]
macro_rules! webhook_queue_conformance {
    ($factory:path) => {
        $crate::__conformance_tests!(
            suite: webhook,
            worker_threads: 2,
            factory: $factory,
            fixture => &fixture,
            checks: [
                pushed_events_are_claimed_once_and_acked_away,
                a_retried_event_comes_back_after_its_delay,
                an_abandoned_claim_comes_back_after_the_lease,
                concurrent_consumers_split_the_events,
                the_bound_holds,
                acks_and_retries_are_idempotent,
                a_held_event_is_due_after_its_grace,
                a_held_event_cancelled_in_time_is_never_delivered,
                a_claimed_held_event_is_past_cancelling,
            ]
        );
    };
}
