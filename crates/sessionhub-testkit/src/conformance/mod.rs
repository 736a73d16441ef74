//! What every backend of a sessionhub trait must do, as checks any test file can run.
//!
//! The session layer, the hub and the gateway are written against `SessionStore`, `Broker`
//! and `Presence`, not against a backend: a behaviour they rely on must hold for every
//! backend, or it silently breaks on the one nobody tested. So the checks live here, once,
//! and each backend's own test file (`crates/sessionhub/tests/<component>_<backend>.rs`)
//! runs all of them with one macro call, beside the tests of what only that backend does
//! (journal reopening, Redis round trips, key layout, outages).
//!
//! # Plugging in a backend
//!
//! A factory is an `async fn` (or a path to one) that takes nothing and returns the suite's
//! fixture: the backend under test plus a guard that keeps whatever it needs alive (a temp
//! dir, a [`RedisServer`](crate::RedisServer)). Each test calls it once, so every check gets
//! a fresh backend of its own.
//!
//! ```ignore
//! // crates/sessionhub/tests/store_memory.rs
//! use std::sync::Arc;
//! use sessionhub::store::MemoryStore;
//! use sessionhub_testkit::conformance::store::StoreFixture;
//!
//! async fn memory() -> StoreFixture {
//!     StoreFixture::new(Arc::new(MemoryStore::new()), ())
//! }
//!
//! sessionhub_testkit::store_conformance!(memory);
//! ```
//!
//! The macro adds a module `conformance` with one `#[tokio::test]` per check, named after
//! it (`conformance::load_missing`), so a failure names the check and the backend's file
//! names the backend. Each test runs within its suite's `LIMIT`, setup included. The calling
//! crate needs `tokio` (with its macros) among its dependencies.
//!
//! - [`store`]: [`store_conformance!`](crate::store_conformance) over a [`store::StoreFixture`].
//! - [`broker`]: [`broker_conformance!`](crate::broker_conformance) over a
//!   [`broker::BrokerFixture`], which starts nodes (brokers) on one shared backend.
//! - [`presence`]: [`presence_conformance!`](crate::presence_conformance) over a
//!   [`presence::PresenceFixture`], a hub and what counts its connections.
//! - [`limits`]: [`limits_conformance!`](crate::limits_conformance) over a
//!   [`limits::LimitsFixture`], a rate limiter.
//! - [`webhook`]: [`webhook_queue_conformance!`](crate::webhook_queue_conformance) over a
//!   [`webhook::QueueFixture`], queues opened as several consumers on one backend.

use std::future::Future;
use std::time::Duration;

pub mod broker;
pub mod limits;
pub mod presence;
pub mod store;
pub mod webhook;

/// Whatever must live as long as the backend under test: a temp dir, a server, a task's
/// stop token. Dropped with the fixture, after the check.
pub type Guard = Box<dyn std::any::Any + Send>;

/// Runs `test`, failing it if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"))
}

/// One test per check of a suite: what the suite macros expand to. Not for direct use.
///
/// `$fixture => $subject` binds the fixture the factory returned and says what each check
/// is given (the suites differ: the store's checks take the store, the others the fixture).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (
        suite: $suite:ident,
        worker_threads: $threads:tt,
        factory: $factory:path,
        $fixture:ident => $subject:expr,
        checks: [$($check:ident),* $(,)?]
    ) => {
        /// The checks of `sessionhub_testkit::conformance`, one test each.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $check() {
                    $crate::conformance::within($crate::conformance::$suite::LIMIT, async {
                        let $fixture = $factory().await;
                        $crate::conformance::$suite::checks::$check($subject).await;
                    })
                    .await;
                }
            )*
        }
    };
}
