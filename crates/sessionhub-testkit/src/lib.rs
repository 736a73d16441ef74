//! Test harness for sessionhub.
//!
//! - Servers on free loopback ports, stopped when dropped: [`RedisServer`] (`redis.rs`), a
//!   `sessionhub serve` process ([`Node`], `node.rs`) and a TCP [`Balancer`] in front of
//!   nodes (`balancer.rs`), and a Sentinel deployment that can fail over ([`RedisSentinel`],
//!   `sentinel.rs`), and a Redis Cluster that can fail over and move slots ([`RedisCluster`],
//!   `cluster.rs`), and a `nats-server` with JetStream ([`NatsServer`], `nats.rs`). Blocking on
//!   purpose, so they work from any test, async or not.
//! - [`jwt`]: tokens signed with fixture key pairs (RSA, EC, Ed25519) and their JWK Set.
//! - [`conformance`]: the checks every `SessionStore`, `Broker` and `Presence` backend must
//!   pass, as one macro per trait that a backend's own test file calls with a factory
//!   ([`store_conformance!`], [`broker_conformance!`], [`presence_conformance!`]). They
//!   live here, not in `sessionhub`'s tests, so that a backend needs only a test file of its
//!   own, and so that a backend kept outside this workspace can be held to the same contract.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::process::Child;

mod balancer;
mod cluster;
pub mod conformance;
pub mod jwt;
mod nats;
mod node;
mod process;
mod redis;
mod resp;
mod sentinel;

pub use self::balancer::{Balancer, BalancerStats};
pub use self::cluster::RedisCluster;
pub use self::nats::NatsServer;
pub use self::node::Node;
pub use self::redis::{RedisServer, redis_command, redis_commands, redis_reads};
pub use self::sentinel::RedisSentinel;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Kills the process (SIGKILL), if there is one, and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
