//! `sessionhub serve --redis-sentinel`: three nodes that find the primary through Redis
//! Sentinel (a primary, a replica and three Sentinels of the test's own) and follow it
//! through a failover, as black boxes: the seed demos across nodes (sessions, pushes,
//! KEY/VALUE frames, the online count), then the primary killed under them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sessionhub_testkit::{Node, RedisSentinel, redis_commands};

/// The nodes' Sentinel flags.
fn sentinel_args(redis: &RedisSentinel) -> Vec<String> {
    vec![
        "--redis-sentinel".into(),
        redis.sentinel_addrs().join(","),
        "--redis-sentinel-master".into(),
        redis.master_name().into(),
    ]
}

fn nodes(redis: &RedisSentinel, n: usize) -> Vec<Node> {
    let args = sentinel_args(redis);
    (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            all.extend(["--node-id", &name]);
            node(&all)
        })
        .collect()
}

#[tokio::test]
async fn the_seed_demos_work_across_nodes_and_through_a_failover() {
    let mut redis = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap()
        .expect("the Sentinel deployment starts");
    let nodes = nodes(&redis, 3);
    let client = http();
    let (id, mut socket, mut on_c) = seed_demos_across(&nodes).await;

    // Acknowledged writes are on the replica before the primary dies (Redis replicates
    // asynchronously: docs/cluster.md says what a failover can lose without this). `WAIT`
    // waits for its own connection's writes: a write goes first on that connection, and
    // replication is in order, so the nodes' earlier writes are there too.
    let replies = redis_commands(redis.primary_port(), &["SET probe x", "WAIT 1 5000"]).unwrap();
    assert_eq!(replies, ["+OK\r\n", ":1\r\n"]);
    let old = redis.kill_primary().unwrap();
    let started = Instant::now();
    redis
        .wait_for_new_primary(old, Duration::from_secs(30))
        .unwrap();
    for node in &nodes {
        wait_ready(&client, &node.http(), true, Duration::from_secs(15)).await;
    }
    eprintln!(
        "every node ready on the new primary {:?} after the kill",
        started.elapsed()
    );

    // The session, its count and the socket all carried over.
    let (_, _, after) = get(&client, &nodes[0].http(), "/get-session", Some(&id)).await;
    assert_eq!(
        (after["username"].as_str(), after["count"].as_i64()),
        (Some("ann"), Some(3))
    );
    let (status, _) = push(&client, &nodes[0].http(), "456", "after").await;
    assert_eq!(status, 200);
    wait_for_text(&mut socket, "after", Duration::from_secs(5)).await;
    wait_for_text(&mut on_c, "after", Duration::from_secs(5)).await;
}

#[test]
fn one_redis_mode_at_a_time() {
    let both = [
        "serve",
        "--redis",
        "redis://127.0.0.1:1",
        "--redis-sentinel",
        "127.0.0.1:2",
        "--redis-sentinel-master",
        "mymaster",
    ];
    let (code, stderr) = Node::run_once(binary(), &both).unwrap();
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("--redis <URL>") && stderr.contains("--redis-sentinel"),
        "{stderr}"
    );

    let (code, stderr) =
        Node::run_once(binary(), &["serve", "--redis-sentinel", "127.0.0.1:2"]).unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--redis-sentinel-master"), "{stderr}");
}
