//! When a connection was last used, so that one left idle is checked before it is trusted.
//!
//! Redis closes clients idle longer than its `timeout` setting, and so do proxies and some
//! managed services; a firewall or NAT may forget an idle connection without a word. Either
//! is found only by the next command, and redis-rs then answers "broken pipe", which it
//! also answers for a command that died in flight and may have run. A command that must not
//! run twice cannot be sent again after that, so after [`IDLE_CHECK`] without a command the
//! connection is PINGed first: a lost one fails the PING, which is harmless, and is replaced
//! before the command goes out. Under steady traffic this costs nothing but a clock read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a connection may go unused before the next command is preceded by a PING.
/// Redis' own `timeout` is whole seconds, and idle limits of proxies are minutes.
pub const IDLE_CHECK: Duration = Duration::from_secs(5);

/// When a connection was last used.
#[derive(Debug)]
pub(crate) struct LastUse {
    start: Instant,
    /// Milliseconds after `start`.
    at: AtomicU64,
}

impl LastUse {
    /// Used just now.
    pub(crate) fn now() -> Self {
        Self {
            start: Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    /// Marks it used now, and says whether it had sat unused for [`IDLE_CHECK`] or more.
    pub(crate) fn touch(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let before = self.at.swap(now, Ordering::Relaxed);
        now.saturating_sub(before) >= IDLE_CHECK.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_after_the_check_interval() {
        let fresh = LastUse::now();
        assert!(!fresh.touch());
        // Last used when it was made, twice the interval ago.
        let idle = LastUse {
            start: Instant::now() - 2 * IDLE_CHECK,
            at: AtomicU64::new(0),
        };
        assert!(idle.touch());
        assert!(!idle.touch(), "touching it made it fresh");
    }
}
