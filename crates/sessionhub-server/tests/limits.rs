//! Rate limits that hold across the cluster: three nodes on one Redis share each bucket,
//! so a client spreading its connects, publishes or logins over the nodes (as a load
//! balancer does) gets the limit once, not three times. Real nodes, real Redis, real
//! clients.

mod common;

use std::time::Duration;

use common::v1::open_v1;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use sessionhub_testkit::{Node, RedisServer};

/// Three nodes on one Redis, each with `extra` flags.
fn three_nodes(extra: &[&str]) -> (RedisServer, Vec<Node>) {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let nodes = (0..3)
        .map(|i| {
            let name = format!("node-{i}");
            let mut args = vec!["--redis", &url, "--node-id", &name];
            args.extend(extra);
            node(&args)
        })
        .collect();
    (redis, nodes)
}

#[tokio::test]
async fn connects_from_one_address_are_limited_across_the_nodes() {
    let (_redis, nodes) = three_nodes(&["--max-connections-per-ip", "6/m"]);
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for i in 0..12 {
        let url = format!("{}/ws?user=u{i}", nodes[i % 3].ws());
        match connect_with(&url, &[]).await {
            Ok((ws, _)) => open.push(ws),
            Err(refusal) => refused.push(refusal),
        }
    }
    assert_eq!(open.len(), 6, "refused: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| *r == (429, "rate_limited".to_owned())),
        "{refused:?}"
    );
}

#[tokio::test]
async fn logins_of_one_user_are_limited_across_the_nodes_with_a_retry_after() {
    let (_redis, nodes) = three_nodes(&["--max-logins-per-user", "2/m"]);
    let client = http();
    let mut statuses = Vec::new();
    for node in &nodes {
        let response = client
            .get(format!("{}/login?username=mallory", node.http()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            // 2/m: one login comes back every 30 s.
            assert!((1..=30).contains(&wait), "Retry-After {wait}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Another user is not held back by mallory's bucket.
    let (status, _, _) = get(&client, &nodes[2].http(), "/login?username=trent", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_publishes_of_one_user_are_limited_across_the_nodes() {
    let (_redis, nodes) = three_nodes(&[
        "--channel-rule",
        "room:=subscribe,publish",
        "--max-publishes-per-user",
        "4/m",
    ]);
    let mut sockets = Vec::new();
    for node in &nodes {
        sockets.push(open_v1(&node.ws(), "peggy").await.unwrap().0);
    }
    assert_eq!(publish_round(&mut sockets, 9).await, (4, 5));
    // The sockets stay open: a refused publish is an answer, not a close.
    for ws in &mut sockets {
        send_text(ws, r#"{"type":"ping","id":99}"#).await;
        let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert!(matches!(pong, Ok(Some(Ok(_)))), "{pong:?}");
    }
}

#[tokio::test]
async fn client_publishes_from_one_address_are_limited_across_users_and_nodes() {
    let (_redis, nodes) = three_nodes(&[
        "--channel-rule",
        "room:=subscribe,publish",
        "--max-publishes-per-ip",
        "3/m",
    ]);
    let mut sockets = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        sockets.push(open_v1(&node.ws(), &format!("user{i}")).await.unwrap().0);
    }
    assert_eq!(publish_round(&mut sockets, 6).await, (3, 3));
}

/// `count` publishes to `room:1`, taking turns on `sockets`; how many were published and how
/// many refused with `rate_limited`.
async fn publish_round(sockets: &mut [Ws], count: usize) -> (usize, usize) {
    let (mut published, mut limited) = (0, 0);
    for i in 0..count {
        let ws = &mut sockets[i % sockets.len()];
        let frame = format!(r#"{{"type":"publish","channel":"room:1","data":{i},"id":{i}}}"#);
        send_text(ws, &frame).await;
        let reply: Value = loop {
            let reply: Value = serde_json::from_str(&next_text(ws).await).unwrap();
            if reply["id"] == i {
                break reply;
            }
        };
        match reply["type"].as_str() {
            Some("published") => published += 1,
            Some("error") if reply["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected reply {reply}"),
        }
    }
    (published, limited)
}
