//! Abuse limits: how often a client address or a user may connect, publish and log in,
//! inbound messages per connection, connections per user and per node. A breach gets HTTP
//! 429 (with `Retry-After`) or 503, or close code 4029, never a crash.
//!
//! The rates of connects, publishes and logins are taken from a [`RateLimiter`]: on one
//! node its own ([`LocalRateLimiter`]); with many nodes on one Redis, buckets in Redis
//! ([`RedisRateLimiter`]), so that a limit holds across the cluster instead of N nodes
//! letting N times the traffic through. When Redis does not answer, [`FallbackRateLimiter`]
//! takes from the node's own buckets: each node then enforces the limit alone, which lets
//! up to N times the rate through the cluster, but never refuses everyone because Redis is
//! down. Messages per connection are counted where the connection is.

mod local;
mod redis;

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Governor};

pub use self::local::LocalRateLimiter;
pub use self::redis::RedisRateLimiter;
use crate::error::{ApiError, LimitError};

/// A rate: `count` events per `period`, in a burst or spread out. Written `50`, `50/s`,
/// `10/m` or `100/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events per period; also the largest burst.
    pub count: NonZeroU32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// `count` per second (at least 1).
    pub fn per_second(count: u32) -> Self {
        Self {
            count: NonZeroU32::new(count.max(1)).expect("at least 1"),
            period: Duration::from_secs(1),
        }
    }

    /// The time one event earns back: the period divided by the count.
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.interval().max(Duration::from_nanos(1)))
            .expect("a positive interval")
            .allow_burst(self.count)
    }
}

/// The text is not `N`, `N/s`, `N/m` or `N/h` with N ≥ 1.
#[derive(Debug, thiserror::Error)]
#[error("a rate is N, N/s, N/m or N/h with N at least 1, not `{0}`")]
pub struct InvalidRate(String);

impl FromStr for Rate {
    type Err = InvalidRate;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRate(text.to_owned());
        let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
        let period = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(invalid()),
        };
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| invalid())?;
        Ok(Self {
            count,
            period: Duration::from_secs(period),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// What a take from a bucket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allowed,
    /// Over it; one more would be allowed after this long.
    Limited {
        /// How long until the bucket allows one more.
        retry_after: Duration,
    },
}

/// Takes from rate limit buckets, each named by a key such as `connect:ip:10.0.0.1`.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one event from `bucket`, which allows `rate`. Every caller names one bucket
    /// with one rate; a bucket's rate changing (a new configuration) may let a burst
    /// through once.
    async fn take(&self, bucket: &str, rate: Rate) -> Result<Verdict, LimitError>;
}

/// Takes from `primary` (Redis) and, when it fails, from `fallback` (the node's own
/// buckets), counting each fallback in `sessionhub_rate_limit_fallbacks_total`.
pub struct FallbackRateLimiter {
    primary: Arc<dyn RateLimiter>,
    fallback: LocalRateLimiter,
}

impl std::fmt::Debug for FallbackRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackRateLimiter")
            .finish_non_exhaustive()
    }
}

impl FallbackRateLimiter {
    /// Buckets in `primary`, and this node's own while it fails.
    pub fn new(primary: Arc<dyn RateLimiter>) -> Self {
        Self {
            primary,
            fallback: LocalRateLimiter::default(),
        }
    }
}

#[async_trait]
impl RateLimiter for FallbackRateLimiter {
    async fn take(&self, bucket: &str, rate: Rate) -> Result<Verdict, LimitError> {
        match self.primary.take(bucket, rate).await {
            Ok(verdict) => Ok(verdict),
            Err(e) => {
                metrics::counter!("sessionhub_rate_limit_fallbacks_total").increment(1);
                tracing::debug!(error = %e, "rate limit taken on this node alone");
                self.fallback.take(bucket, rate).await
            }
        }
    }
}

/// What is limited, and per whom; part of a bucket's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Opening a socket or an SSE stream.
    Connect,
    /// A publish from a client (protocol v1 or `POST /sse/publish`).
    Publish,
    /// A login (`/login`).
    Login,
}

impl Limited {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
            Self::Login => "login",
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            Self::Connect => "too many new connections",
            Self::Publish => "too many publishes",
            Self::Login => "too many logins",
        }
    }
}

/// Who a bucket counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Per<'a> {
    /// A client address.
    Address(&'a std::net::IpAddr),
    /// A user.
    User(&'a str),
}

/// The configured rates and where their buckets are.
#[derive(Clone)]
pub(crate) struct Rates {
    limiter: Arc<dyn RateLimiter>,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            limiter: Arc::new(LocalRateLimiter::default()),
        }
    }
}

impl Rates {
    pub(crate) fn new(limiter: Arc<dyn RateLimiter>) -> Self {
        Self { limiter }
    }

    /// Takes one `what` for `who` at `rate` (none: unlimited); 429 past it. A limiter that
    /// fails lets the event through: an outage of the limits' store must not refuse
    /// everyone ([`FallbackRateLimiter`] keeps a local limit meanwhile).
    pub(crate) async fn check(
        &self,
        what: Limited,
        who: Per<'_>,
        rate: Option<Rate>,
    ) -> Result<(), ApiError> {
        let Some(rate) = rate else { return Ok(()) };
        let (per, id) = match who {
            Per::Address(ip) => ("ip", ip.to_string()),
            Per::User(user) => ("user", user.to_owned()),
        };
        let bucket = format!("{}:{per}:{id}", what.name());
        match self.limiter.take(&bucket, rate).await {
            Ok(Verdict::Allowed) | Err(_) => Ok(()),
            Ok(Verdict::Limited { retry_after }) => {
                metrics::counter!("sessionhub_rate_limited_total", "limit" => what.name())
                    .increment(1);
                let whom = match who {
                    Per::Address(_) => "from this address",
                    Per::User(_) => "for this user",
                };
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("{} {whom} (limit {rate}); slow down", what.refusal()),
                )
                .retry_after(retry_after))
            }
        }
    }
}

/// The limits. Rates of connects, publishes and logins hold across the cluster when the
/// gateway's rate limiter is shared (see the module doc); the others per node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// New connections (sockets and SSE streams) from one client address.
    pub connects_per_ip: Option<Rate>,
    /// New connections of one user.
    pub connects_per_user: Option<Rate>,
    /// Publishes of one user from clients (protocol v1 and `POST /sse/publish`; the API's
    /// publishes come from the application's backend and are not limited).
    pub publishes_per_user: Option<Rate>,
    /// Publishes from one client address, from clients as for `publishes_per_user`.
    pub publishes_per_ip: Option<Rate>,
    /// Logins from one client address.
    pub logins_per_ip: Option<Rate>,
    /// Logins of one user.
    pub logins_per_user: Option<Rate>,
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
            connects_per_ip: Some(Rate::per_second(50)),
            connects_per_user: None,
            publishes_per_user: None,
            publishes_per_ip: None,
            logins_per_ip: None,
            logins_per_user: None,
            messages_per_sec: 100,
            connections_per_user: 100,
            connections_per_node: 100_000,
        }
    }
}

/// Inbound messages per second on one connection.
pub(crate) struct MessageRate {
    limiter: DefaultDirectRateLimiter,
}

impl MessageRate {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            limiter: Governor::direct(Rate::per_second(per_sec).quota()),
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
    fn message_rate_allows_a_burst_then_refuses() {
        let rate = MessageRate::new(5);
        assert!((0..5).all(|_| rate.check()));
        assert!(!rate.check());
    }

    #[test]
    fn rates_are_read_as_written() {
        for (text, count, secs) in [
            ("50", 50, 1),
            ("7/s", 7, 1),
            ("10/m", 10, 60),
            ("3/h", 3, 3600),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                (rate.count.get(), rate.period.as_secs()),
                (count, secs),
                "{text}"
            );
        }
        assert_eq!("10/m".parse::<Rate>().unwrap().to_string(), "10/m");
        for bad in ["0", "-1", "x", "5/d", "", "5/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
