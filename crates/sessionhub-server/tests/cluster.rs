//! Cluster mode: several real sessionhub processes sharing one real Redis.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn seed_demo_1_a_push_through_any_node_reaches_sockets_on_every_node() {
    let (_redis, nodes) = cluster(3);
    let client = http();
    let (mut on_b, greeting) = connect(&nodes[1].ws(), "456").await;
    assert_eq!(greeting["node"], "node-1");
    let (mut on_c, _) = connect(&nodes[2].ws(), "456").await;

    let (status, answer) = push(&client, &nodes[0].http(), "456", "from A").await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["nodes"], 2,
        "only the two nodes with sockets take it: {answer}"
    );
    assert_eq!(
        answer.get("connections"),
        None,
        "a node cannot count another's sockets"
    );
    assert_eq!(
        answer["offset"], 1,
        "the push went into the channel's history"
    );
    assert_eq!(next_text(&mut on_b).await, "from A");
    assert_eq!(next_text(&mut on_c).await, "from A");

    send_text(&mut on_c, r#"{"KEY":456,"VALUE":"aaaa"}"#).await;
    assert_eq!(next_text(&mut on_b).await, "aaaa");
    assert_eq!(next_text(&mut on_c).await, "aaaa");

    // A node with no socket for an id is not sent its messages at all.
    let (_, answer) = push(&client, &nodes[0].http(), "nobody", "x").await;
    assert_eq!(answer["nodes"], 0);
}

#[tokio::test]
async fn seed_demo_2_a_session_follows_the_user_across_nodes_and_restarts() {
    let (_redis, mut nodes) = cluster(3);
    let client = http();
    let (_, id, body) = get(&client, &nodes[0].http(), "/login?username=ann", None).await;
    let id = id.unwrap();
    assert_eq!(body["username"], "ann");
    let (_, _, on_b) = get(&client, &nodes[1].http(), "/get-session", Some(&id)).await;
    let (_, _, on_c) = get(&client, &nodes[2].http(), "/get-session", Some(&id)).await;
    assert_eq!(on_b["username"], "ann");
    assert_eq!(on_c["username"], "ann");
    assert_eq!(
        (on_b["count"].as_i64(), on_c["count"].as_i64()),
        (Some(1), Some(2))
    );

    for node in &mut nodes {
        node.restart().unwrap();
    }
    let (_, _, after) = get(&client, &nodes[1].http(), "/get-session", Some(&id)).await;
    assert_eq!(after["username"], "ann");
    assert_eq!(after["count"], 3);

    let (_, cleared, _) = get(&client, &nodes[2].http(), "/invalidate", Some(&id)).await;
    assert_eq!(cleared.as_deref(), Some(""));
    let (_, fresh, body) = get(&client, &nodes[0].http(), "/get-session", Some(&id)).await;
    assert_ne!(fresh.as_deref(), Some(id.as_str()));
    assert_eq!(body.get("username"), None);
    assert_eq!(body["count"], 1);
}

#[tokio::test]
async fn concurrent_increments_over_three_nodes_are_exact() {
    let (_redis, nodes) = cluster(3);
    let client = http();
    let (_, id, _) = get(&client, &nodes[0].http(), "/login", None).await;
    let id = id.unwrap();
    let bases: Vec<String> = nodes.iter().map(|n| n.http()).collect();
    let counts = concurrent_counts(&client, &bases, &id, 300).await;
    assert_eq!(counts, (1..=300).collect::<Vec<_>>());
    let (_, _, body) = get(&client, &bases[1], "/get-session", Some(&id)).await;
    assert_eq!(body["count"], 301);
}

#[tokio::test]
async fn logout_on_one_node_racing_writes_on_others_stays_logged_out() {
    let (_redis, nodes) = cluster(3);
    let client = http();
    for round in 0..5 {
        let id = login(&nodes[0].http(), &format!("r{round}")).await;
        let writers: Vec<_> = (0..40)
            .map(|i| {
                let (client, base, id) = (client.clone(), nodes[i % 2].http(), id.clone());
                tokio::spawn(async move { get(&client, &base, "/get-session", Some(&id)).await })
            })
            .collect();
        let (status, _, _) = get(&client, &nodes[2].http(), "/invalidate", Some(&id)).await;
        assert_eq!(status, 200);
        for writer in writers {
            writer.await.unwrap();
        }
        let (_, _, body) = get(&client, &nodes[2].http(), "/get-session", Some(&id)).await;
        assert_eq!(
            body.get("username"),
            None,
            "round {round}: the session came back"
        );
        assert_eq!(body["count"], 1);
    }
}

#[tokio::test]
async fn a_get_session_and_a_read_session_cost_one_redis_round_trip_each() {
    let (redis, nodes) = cluster(1);
    let client = http();
    let base = nodes[0].http();
    let id = login(&base, "ann").await;
    // Warm up: the first call of each script may load it.
    get(&client, &base, "/get-session", Some(&id)).await;
    get(&client, &base, "/read-session", Some(&id)).await;

    let (calls, ()) = redis
        .calls_during(async {
            for _ in 0..10 {
                let (status, _, body) = get(&client, &base, "/get-session", Some(&id)).await;
                assert_eq!((status, &body["username"]), (200, &json!("ann")));
            }
        })
        .await
        .unwrap();
    let delta = |name: &str| calls.get(name).copied().unwrap_or(0);
    // A presence heartbeat may land in the window: it is a script too, with one ZADD.
    assert_eq!(
        delta("evalsha") - delta("zadd"),
        10,
        "a read + increment is one script that writes and loads"
    );
    // Inside it: one HGETALL (existence, format, current value, the record), one HSET, one
    // PEXPIRE. Nothing else of the session's.
    for (command, calls) in [
        ("hgetall", 10),
        ("hset", 10),
        ("pexpire", 10),
        ("hget", 0),
        ("hmget", 0),
        ("hincrby", 0),
        ("exists", 0),
        ("eval", 0),
        ("script|load", 0),
    ] {
        assert_eq!(delta(command), calls, "{command} per 10 /get-session");
    }

    let (calls, ()) = redis
        .calls_during(async {
            for _ in 0..10 {
                let (status, _, body) = get(&client, &base, "/read-session", Some(&id)).await;
                assert_eq!((status, &body["count"]), (200, &json!(11)));
            }
        })
        .await
        .unwrap();
    let delta = |name: &str| calls.get(name).copied().unwrap_or(0);
    assert_eq!(delta("evalsha") - delta("zadd"), 10, "a read is one script");
    for (command, calls) in [
        ("hgetall", 10),
        ("pexpire", 10),
        ("hset", 0),
        ("hget", 0),
        ("hmget", 0),
        ("eval", 0),
        ("script|load", 0),
    ] {
        assert_eq!(delta(command), calls, "{command} per 10 /read-session");
    }
}

#[tokio::test]
async fn redis_down_means_503_and_delivery_resumes_within_2s_of_its_return() {
    let (mut redis, nodes) = cluster(3);
    let client = http();
    let mut sockets = Vec::new();
    for node in &nodes {
        sockets.push(connect(&node.ws(), "42").await.0);
    }
    let (_, answer) = push(&client, &nodes[0].http(), "42", "before").await;
    assert_eq!(answer["nodes"], 3);
    for ws in &mut sockets {
        assert_eq!(next_text(ws).await, "before");
    }

    redis.stop();
    for node in &nodes {
        let started = Instant::now();
        let (status, answer) = push(&client, &node.http(), "42", "while down").await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "broker_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a 503 must come fast"
        );
    }
    for node in &nodes {
        wait_ready(&client, &node.http(), false, Duration::from_secs(10)).await;
    }

    redis.restart().unwrap();
    let back = Instant::now();
    // Never green while delivery is broken: as soon as a node says ready, a push reaches
    // its socket.
    let mut resumed = vec![false; nodes.len()];
    let mut n = 0;
    while resumed.iter().any(|r| !r) {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "delivery did not resume within 2 s"
        );
        for (i, node) in nodes.iter().enumerate() {
            if resumed[i] || !is_ready(&client, &node.http()).await {
                continue;
            }
            n += 1;
            let message = format!("after {n}");
            let (status, _) = push(&client, &node.http(), "42", &message).await;
            assert_eq!(status, 200, "{} is ready but cannot push", node.http());
            wait_for_text(&mut sockets[i], &message, Duration::from_secs(2)).await;
            resumed[i] = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, answer) = push(&client, &nodes[0].http(), "42", "all").await;
    assert_eq!(answer["nodes"], 3);
    for ws in &mut sockets {
        wait_for_text(ws, "all", WAIT).await;
    }
}

#[tokio::test]
async fn a_killed_nodes_clients_move_on_and_the_online_count_corrects() {
    let (_redis, mut nodes) = cluster(3);
    let client = http();
    let (mut on_a, _) = connect(&nodes[0].ws(), "7").await;
    let (mut on_b, _) = connect(&nodes[1].ws(), "7").await;
    let (_also_on_a, _) = connect(&nodes[0].ws(), "8").await;
    wait_cluster_online(&client, &nodes[2].http(), json!({"online": 3, "users": 2})).await;

    nodes[0].kill();
    // The client notices its node is gone and reconnects elsewhere.
    let gone = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut on_a)).await;
    assert!(matches!(gone, Ok(None | Some(Err(_)))), "{gone:?}");
    let (mut moved, greeting) = connect(&nodes[2].ws(), "7").await;
    assert_eq!(greeting["node"], "node-2");
    let (_, answer) = push(&client, &nodes[1].http(), "7", "still reachable").await;
    assert_eq!(answer["nodes"], 2);
    assert_eq!(next_text(&mut moved).await, "still reachable");
    assert_eq!(next_text(&mut on_b).await, "still reachable");

    let started = Instant::now();
    wait_cluster_online(&client, &nodes[1].http(), json!({"online": 2, "users": 1})).await;
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Polls `/api/online` until it equals `want` (30 s at most: a dead node's entry expires).
async fn wait_cluster_online(client: &reqwest::Client, base: &str, want: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = online(client, base).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "online stayed {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn online_counts_every_node_and_a_graceful_stop_withdraws_at_once() {
    let (_redis, mut nodes) = cluster(2);
    let client = http();
    let _a = connect(&nodes[0].ws(), "1").await;
    let _b = connect(&nodes[0].ws(), "2").await;
    let _c = connect(&nodes[1].ws(), "2").await;
    wait_cluster_online(&client, &nodes[1].http(), json!({"online": 3, "users": 2})).await;
    let stopped = Instant::now();
    nodes[0].terminate(Duration::from_secs(10)).unwrap();
    wait_cluster_online(&client, &nodes[1].http(), json!({"online": 1, "users": 1})).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "a graceful stop should not wait for the TTL"
    );
}

#[tokio::test]
async fn an_undecodable_session_in_redis_is_a_fresh_session_not_a_500() {
    let (redis, nodes) = cluster(1);
    let client = http();
    let id = login(&nodes[0].http(), "x").await;
    let reply = redis
        .command(&format!(
            "HSET sessionhub:session:{{{id}}} m:v 999 a:username not-json"
        ))
        .unwrap();
    assert!(reply.starts_with(':'), "{reply}");
    let (status, fresh, body) = get(&client, &nodes[0].http(), "/get-session", Some(&id)).await;
    assert_eq!(status, 200);
    assert_ne!(fresh.as_deref(), Some(id.as_str()));
    assert_eq!(body.get("username"), None);
    assert_eq!(body["count"], 1);
}

#[tokio::test]
async fn a_node_started_while_redis_is_down_comes_up_unready_and_serves_once_it_is_back() {
    let mut redis = sessionhub_testkit::RedisServer::start().unwrap();
    let url = redis.url();
    redis.stop();
    let node = node(&["--redis", &url, "--node-id", "early"]);
    let client = http();
    let ready = client
        .get(format!("{}/readyz", node.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let (status, answer) = push(&client, &node.http(), "1", "too early").await;
    assert_eq!(status, 503, "{answer}");
    let (status, _, body) = get(&client, &node.http(), "/get-session", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");

    redis.restart().unwrap();
    wait_ready(&client, &node.http(), true, Duration::from_secs(10)).await;
    let (mut ws, _) = connect(&node.ws(), "1").await;
    let (status, _) = push(&client, &node.http(), "1", "on time").await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut ws).await, "on time");
    let (status, _, body) = get(&client, &node.http(), "/get-session", None).await;
    assert_eq!((status, &body["count"]), (200, &json!(1)));
}

/// Redis down under a logged-in user: every session route answers 503 `store_unavailable`
/// at once and leaves the cookie alone, and once Redis is back the session is there, with
/// no increment lost or counted twice.
#[tokio::test]
async fn a_session_outlives_a_redis_outage_and_its_routes_answer_503_meanwhile() {
    let mut redis = sessionhub_testkit::RedisServer::start_persistent().unwrap();
    let node = node(&["--redis", &redis.url(), "--node-id", "outage"]);
    let client = http();
    let id = login(&node.http(), "ada").await;
    let (status, _, body) = get(&client, &node.http(), "/get-session", Some(&id)).await;
    assert_eq!((status, &body["count"]), (200, &json!(1)));

    redis.stop();
    for path in ["/get-session", "/read-session", "/login?username=bob"] {
        let started = Instant::now();
        let (status, cookie, body) = get(&client, &node.http(), path, Some(&id)).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "store_unavailable", "{path}");
        assert_eq!(cookie, None, "{path} must not touch the cookie");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path}: slow 503"
        );
    }

    redis.restart().unwrap();
    wait_ready(&client, &node.http(), true, Duration::from_secs(10)).await;
    let (status, cookie, body) = get(&client, &node.http(), "/read-session", Some(&id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cookie, None);
    assert_eq!(
        (&body["username"], &body["count"]),
        (&json!("ada"), &json!(1))
    );
    let (status, _, body) = get(&client, &node.http(), "/get-session", Some(&id)).await;
    assert_eq!((status, &body["count"]), (200, &json!(2)));
}
