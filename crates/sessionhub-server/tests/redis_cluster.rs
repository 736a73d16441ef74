//! `sessionhub serve --redis-cluster`: three nodes on a Redis Cluster of the test's own
//! (three primaries with a replica each), as black boxes: the seed demos across nodes
//! (sessions, pushes, KEY/VALUE frames, the online count), then the primary that serves
//! the session and the channel killed under them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sessionhub_testkit::{Node, RedisCluster, redis_commands};

fn nodes(cluster: &RedisCluster, n: usize) -> Vec<Node> {
    let seeds = cluster.urls().join(",");
    (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            node(&["--redis-cluster", &seeds, "--node-id", &name])
        })
        .collect()
}

/// The port of the primary that serves `key` now.
fn primary_of(cluster: &RedisCluster, key: &str) -> u16 {
    cluster
        .primary_for_slot(cluster.slot_of(key).unwrap())
        .unwrap()
}

#[tokio::test]
async fn the_seed_demos_work_across_nodes_and_through_a_failover() {
    let mut cluster = RedisCluster::start_async().await;
    let nodes = nodes(&cluster, 3);
    let client = http();
    let (id, mut on_b, mut on_c) = seed_demos_across(&nodes).await;

    // Kill the primary that serves the session; acknowledged writes are on its replica
    // first (Redis replicates asynchronously: docs/cluster.md). `WAIT` waits for its own
    // connection's writes, so a write of the session's slot goes first on that connection;
    // replication is in order, so the session's writes are there too.
    let victim = primary_of(&cluster, &format!("sessionhub:session:{{{id}}}"));
    let probe = format!("SET probe:{{{id}}} x");
    let replies = redis_commands(victim, &[&probe, "WAIT 1 5000"]).unwrap();
    assert_eq!(replies, ["+OK\r\n", ":1\r\n"]);
    cluster.kill(victim).unwrap();
    let started = Instant::now();
    cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .unwrap();
    for node in &nodes {
        wait_ready(&client, &node.http(), true, Duration::from_secs(15)).await;
    }
    eprintln!(
        "every node ready after the kill of {victim}: {:?}",
        started.elapsed()
    );

    let (_, _, after) = get(&client, &nodes[0].http(), "/get-session", Some(&id)).await;
    assert_eq!(
        (after["username"].as_str(), after["count"].as_i64()),
        (Some("ann"), Some(3))
    );
    let (status, _) = push(&client, &nodes[0].http(), "456", "after").await;
    assert_eq!(status, 200);
    wait_for_text(&mut on_b, "after", Duration::from_secs(5)).await;
    wait_for_text(&mut on_c, "after", Duration::from_secs(5)).await;
}

#[test]
fn one_redis_mode_at_a_time() {
    for other in [
        ["--redis", "redis://127.0.0.1:1"].as_slice(),
        [
            "--redis-sentinel",
            "127.0.0.1:2",
            "--redis-sentinel-master",
            "m",
        ]
        .as_slice(),
    ] {
        let mut args = vec!["serve", "--redis-cluster", "127.0.0.1:3"];
        args.extend(other);
        let (code, stderr) = Node::run_once(binary(), &args).unwrap();
        assert_ne!(code, Some(0));
        assert!(
            stderr.contains("--redis-cluster") && stderr.contains("cannot be used with"),
            "{stderr}"
        );
    }
}
