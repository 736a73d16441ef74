//! What presence costs Redis: the bytes one node sends to it per minute with 100k users
//! connected, idle and under churn, measured from the server's side (`INFO stats`
//! `total_net_input_bytes`) on a `redis-server` of the test's own, with nothing else on it.
//! The figures in `docs/benchmarks.md` ("Presence traffic") come from this test:
//!
//! ```text
//! cargo test -p sessionhub --test presence_traffic -- --ignored --nocapture
//! ```
//!
//! Ignored by default: it holds 100k connections (without sockets, through `Hub::connect`)
//! and runs for about a minute.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::hub::{Hub, Online};
use sessionhub::presence::{Presence, RedisPresence};
use sessionhub_testkit::RedisServer;
use sessionhub_testkit::conformance::presence::user;
use sessionhub_testkit::conformance::within;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const USERS: usize = 100_000;
/// How long each phase is measured; the figures are scaled to a minute.
const PHASE: Duration = Duration::from_secs(20);
/// Users who disconnect and reconnect per second in the churn phase (1 % of them).
const CHURN_PER_SEC: usize = USERS / 100;

fn bytes_in(server: &RedisServer) -> u64 {
    let info = server.info("stats").expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
        .expect("total_net_input_bytes in INFO stats")
        .trim()
        .parse()
        .expect("a number")
}

fn per_minute(bytes: u64) -> f64 {
    bytes as f64 * 60.0 / PHASE.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: 100k connections for about a minute"]
async fn bytes_sent_to_redis_per_minute_at_100k_users() {
    within(Duration::from_secs(300), async {
        let server = RedisServer::start_async().await;
        let hub = Hub::local("node-a");
        let presence = Arc::new(RedisPresence::new(&server.url(), "sessionhub:").unwrap());
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        presence.clone().spawn_heartbeat(hub.clone(), stop);
        let users: Vec<_> = (0..USERS).map(|i| user(&format!("user-{i}"))).collect();
        let mut connections: Vec<_> = users.iter().map(|u| Some(hub.connect(u))).collect();
        // The first beats send the users in steps of 10k.
        while presence.online().await.unwrap()
            != (Online {
                online: USERS,
                users: USERS,
            })
        {
            sleep(Duration::from_millis(100)).await;
        }
        sleep(Duration::from_secs(4)).await;

        let before = bytes_in(&server);
        sleep(PHASE).await;
        let idle = bytes_in(&server) - before;

        let before = bytes_in(&server);
        let started = Instant::now();
        // Every 100 ms a tenth of a second's users go offline, and those who went a second
        // earlier come back: each is a user leaving and joining, not only a connection, and
        // too far apart for one 250 ms beat to net them out.
        let batch = CHURN_PER_SEC / 10;
        let away = 10 * batch;
        let mut next = 0;
        while started.elapsed() < PHASE {
            for i in next..next + batch {
                connections[i % USERS] = None;
            }
            if next >= away {
                for i in next - away..next - away + batch {
                    connections[i % USERS] = Some(hub.connect(&users[i % USERS]));
                }
            }
            next += batch;
            sleep(Duration::from_millis(100)).await;
        }
        let churn = bytes_in(&server) - before;
        drop(connections);
        println!(
            "presence traffic at {USERS} users, one node: idle {:.0} bytes/min, \
             churn of {CHURN_PER_SEC} reconnects/s {:.0} bytes/min",
            per_minute(idle),
            per_minute(churn)
        );
    })
    .await;
}
