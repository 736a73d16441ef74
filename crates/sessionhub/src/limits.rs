//! Abuse limits: new connections per client address, inbound messages per connection,
//! connections per user and per node. A breach gets HTTP 429 or 503, or close code 4029,
//! never a crash.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The limits, per node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// New WebSocket connections per second from one client address.
    pub connections_per_ip_per_sec: u32,
    /// Inbound frames per second on one connection.
    pub messages_per_sec: u32,
    /// Open connections of one user on one node.
    pub connections_per_user: usize,
    /// Open connections (sockets and SSE streams) on one node: past it a node refuses new
    /// ones with 503, so a load balancer sends them to another node instead of this one
    /// running out of memory or file descriptors.
    pub connections_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_ip_per_sec: 50,
            messages_per_sec: 100,
            connections_per_user: 100,
            connections_per_node: 100_000,
        }
    }
}

fn quota(per_sec: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_sec.max(1)).expect("at least 1"))
}

/// Connections per second, per client address.
pub(crate) struct ConnectionRate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// How many addresses the limiter tracks before it forgets idle ones.
const TRACKED_ADDRESSES: usize = 10_000;

impl ConnectionRate {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota(per_sec)),
        }
    }

    /// Whether `ip` may open another connection now.
    pub(crate) fn check(&self, ip: IpAddr) -> bool {
        // Without pruning, a scan from many addresses would grow the map forever.
        if self.limiter.len() > TRACKED_ADDRESSES {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).is_ok()
    }
}

/// Inbound messages per second on one connection.
pub(crate) struct MessageRate {
    limiter: DefaultDirectRateLimiter,
}

impl MessageRate {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            limiter: RateLimiter::direct(quota(per_sec)),
        }
    }

    /// Whether one more message is within the limit.
    pub(crate) fn check(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rate_is_per_address() {
        let rate = ConnectionRate::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| rate.check(a)));
        assert!(!rate.check(a));
        assert!(rate.check(b));
    }

    #[test]
    fn message_rate_allows_a_burst_then_refuses() {
        let rate = MessageRate::new(5);
        assert!((0..5).all(|_| rate.check()));
        assert!(!rate.check());
    }
}
