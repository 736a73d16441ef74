//! The Sentinel fixture against real servers: it settles, and a crash or a requested
//! failover promotes the replica within a bounded time.

use std::time::{Duration, Instant};

use sessionhub_testkit::{RedisSentinel, redis_command};

/// What a test waits at most for the sentinels to agree on a new primary.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

#[tokio::test]
async fn starts_with_every_sentinel_agreeing_on_the_primary() {
    let fixture = RedisSentinel::start_async().await;
    assert_eq!(fixture.master_name(), "mymaster");
    assert_eq!(fixture.sentinel_addrs().len(), 3);
    assert_ne!(fixture.primary_port(), fixture.replica_port());
    for addr in fixture.sentinel_addrs() {
        let port: u16 = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
        assert_eq!(fixture.role(port).unwrap(), "sentinel");
    }
    assert_eq!(
        fixture.current_primary_port().unwrap(),
        fixture.primary_port()
    );
    // No failover: "a new primary other than the replica" is the primary itself.
    let agreed = fixture
        .wait_for_new_primary(fixture.replica_port(), Duration::from_secs(1))
        .unwrap();
    assert_eq!(agreed, fixture.primary_port());
    assert_eq!(fixture.role(fixture.primary_port()).unwrap(), "master");
    assert_eq!(fixture.role(fixture.replica_port()).unwrap(), "slave");
    assert_eq!(
        fixture.url_of(fixture.primary_port()),
        format!("redis://127.0.0.1:{}", fixture.primary_port())
    );
}

#[test]
fn a_killed_primary_is_replaced_by_the_replica() {
    let mut fixture = RedisSentinel::start_with("crashmaster").unwrap();
    assert_eq!(fixture.master_name(), "crashmaster");
    let old = fixture.kill_primary().unwrap();
    assert_eq!(old, fixture.primary_port());
    let started = Instant::now();
    let new = fixture.wait_for_new_primary(old, FAILOVER_BOUND).unwrap();
    let took = started.elapsed();
    println!("after kill_primary: every sentinel reports the new primary in {took:?}");
    assert!(took < FAILOVER_BOUND);
    assert_eq!(new, fixture.replica_port());
    assert!(
        redis_command(new, "SET after-failover 1")
            .unwrap()
            .starts_with("+OK")
    );

    // The crashed server comes back as the new primary's replica, with its data.
    let started = Instant::now();
    fixture.restart(old).unwrap();
    println!("restart: in sync in {:?}", started.elapsed());
    assert_eq!(fixture.role(old).unwrap(), "slave");
    assert_eq!(redis_command(old, "GET after-failover").unwrap(), "$1\r\n");
}

#[test]
fn a_requested_failover_swaps_the_roles() {
    let fixture = RedisSentinel::start().unwrap();
    let old = fixture.primary_port();
    let started = Instant::now();
    fixture.failover().unwrap();
    let new = fixture.wait_for_new_primary(old, FAILOVER_BOUND).unwrap();
    println!(
        "after failover: every sentinel reports the new primary in {:?}",
        started.elapsed()
    );
    assert_eq!(new, fixture.replica_port());
    // The old primary, still up, is made a replica of the new one.
    let deadline = Instant::now() + FAILOVER_BOUND;
    while fixture.role(old).unwrap() != "slave" {
        assert!(
            Instant::now() < deadline,
            "{old} still not a replica after {FAILOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "after failover: the old primary is a replica in {:?}",
        started.elapsed()
    );
    assert!(
        redis_command(new, "SET after-failover 1")
            .unwrap()
            .starts_with("+OK")
    );
}
