//! Deliveries written straight to an idle socket by the delivering task
//! (`sessionhub::wire`): every frame arrives whole and in order, beside the frames the
//! socket's own task writes (pongs, Pusher replies), through a kernel buffer that fills and
//! a write the kernel takes only part of.

mod common;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::pusher::js::APP;
use common::pusher::raw::{self, next_event};
use common::v1::{self, Frame};
use common::{WAIT, Ws};

/// The value of the unlabelled counter `name` in `/metrics` (0 when not there yet).
async fn counter(base: &str, name: &str) -> u64 {
    let text = common::metrics(base).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_then_reads_gets_every_frame_whole_and_in_order() {
    let node = common::node(&[]);
    let client = common::http();
    let (mut ws, _) = common::connect(&node.ws(), "u").await;
    // 150 pushes of 60 KiB (9 MB) while the client reads nothing: the kernel's buffers fill,
    // a direct write goes out in part, the rest queues behind it. The client pings meanwhile,
    // so the socket's own task has pongs to write into the same stream.
    const STUCK: usize = 150;
    const N: usize = 300;
    let filler = "y".repeat(60 * 1024 - 6);
    let push = |n: usize| {
        let (client, base, body) = (client.clone(), node.http(), format!("{n:06}{filler}"));
        async move {
            let (status, answer) = common::push(&client, &base, "u", &body).await;
            assert_eq!(
                (status, &answer["connections"]),
                (200, &json!(1)),
                "push {n}"
            );
        }
    };
    for n in 0..STUCK {
        push(n).await;
        if n % 40 == 0 {
            ws.send(Message::Ping(vec![n as u8].into())).await.unwrap();
        }
    }
    let split = counter(&node.http(), "sessionhub_direct_writes_split_total").await;
    assert!(split > 0, "a direct write went out in part ({split})");
    // The client reads while the rest come: the queue drains as new deliveries arrive, which
    // must wait behind it rather than go straight to the socket.
    let expected = filler.clone();
    let reader = tokio::spawn(async move {
        for n in 0..N {
            let text = common::next_text(&mut ws).await;
            assert_eq!(text.len(), 6 + expected.len(), "push {n} whole");
            assert_eq!(&text[..6], format!("{n:06}"), "in order");
            assert!(text[6..] == *expected, "push {n} unmangled");
        }
        ws
    });
    for n in STUCK..N {
        push(n).await;
    }
    let mut ws = reader.await.expect("every push, whole and in order");
    // The socket still works both ways, and most of it went straight to the socket.
    common::send_text(&mut ws, r#"{"KEY":"u","VALUE":"after"}"#).await;
    assert_eq!(common::next_text(&mut ws).await, "after");
    let direct = counter(&node.http(), "sessionhub_messages_direct_total").await;
    assert!(direct > 0, "written straight to the socket: {direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_events_arrive_in_order_beside_the_socket_s_own_replies() {
    let node = common::node(&["--pusher-app", APP]);
    let (mut ws, socket_id) = raw::connect(&node, common::pusher::js::KEY).await;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "news"}});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    raw::expect_event(&mut ws, "pusher_internal:subscription_succeeded", "news").await;
    // 30 batches of 10 events, one of every batch excluding this socket; a `pusher:ping`
    // after each batch, which the socket's task answers while deliveries come straight.
    let before = counter(&node.http(), "sessionhub_messages_direct_total").await;
    let mut want = Vec::new();
    for batch in 0..30 {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                let mut event = json!({"channel": "news", "name": "n", "data": n.to_string()});
                if i == 3 {
                    event["socket_id"] = json!(socket_id);
                } else {
                    want.push(n);
                }
                event
            })
            .collect();
        let (status, body) = common::pusher::signed_post(
            &node,
            APP,
            "/apps/42/batch_events",
            &json!({ "batch": events }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let ping = json!({"event": "pusher:ping", "data": {}});
        ws.send(Message::Text(ping.to_string().into()))
            .await
            .unwrap();
    }
    let (mut got, mut pongs) = (Vec::new(), 0);
    while got.len() < want.len() || pongs < 30 {
        let event = next_event(&mut ws).await;
        match event["event"].as_str() {
            Some("n") => got.push(event["data"].as_u64().expect("a number")),
            Some("pusher:pong") => pongs += 1,
            other => panic!("unexpected {other:?}: {event}"),
        }
    }
    assert_eq!(got, want, "every event but the excluded ones, in order");
    let direct = counter(&node.http(), "sessionhub_messages_direct_total").await - before;
    assert!(direct > 0, "written straight to the socket: {direct}");
    common::assert_silent(&mut ws, Duration::from_millis(200)).await;
}

/// What a v1 client has read so far, checked as it comes.
#[derive(Default)]
struct Seen {
    room: u64,
    room2: u64,
    pongs: u64,
    subscribed: bool,
}

impl Seen {
    /// Reads one frame and checks it: each channel's publications numbered from 1 with no
    /// gap, `room2`'s after its `subscribed` reply.
    async fn read(&mut self, ws: &mut Ws) {
        let frame = tokio::time::timeout(WAIT, v1::read_frame(ws))
            .await
            .expect("a frame in time")
            .unwrap();
        match frame {
            Frame::Publication {
                channel,
                offset,
                data,
                ..
            } if channel == "room" => {
                self.room += 1;
                assert_eq!(
                    (offset, data),
                    (self.room, json!({ "n": self.room })),
                    "room"
                );
            }
            Frame::Publication {
                channel,
                offset,
                data,
                ..
            } if channel == "room2" => {
                assert!(self.subscribed, "room2's publications come after its reply");
                self.room2 += 1;
                assert_eq!(
                    (offset, data),
                    (self.room2, json!({ "n": self.room2 })),
                    "room2"
                );
            }
            Frame::Subscribed(s) if s.channel == "room2" => self.subscribed = true,
            Frame::Other(reply) if reply["type"] == "pong" => self.pongs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_publications_arrive_numbered_and_in_order_beside_replies_and_new_subscriptions() {
    let node = common::node(&[]);
    let client = common::http();
    let (mut ws, _) = v1::open_v1(&node.ws(), "v").await.unwrap();
    let subscribe = |channel: &str| Message::Text(v1::subscribe_frame(channel, None).into());
    ws.send(subscribe("room")).await.unwrap();
    let Frame::Subscribed(_) = v1::read_frame(&mut ws).await.unwrap() else {
        panic!("subscribed");
    };
    let before = counter(&node.http(), "sessionhub_messages_direct_total").await;
    let publish = |channel: &'static str, n: u64| {
        let request = client
            .post(v1::publish_url(&node.http(), channel))
            .json(&json!({ "message": { "n": n } }));
        async move {
            let (status, body) = common::status_and_json(request).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    // 300 publications on `room`; the client pings (answered by the socket's task) and,
    // halfway, subscribes to `room2`, which gets 150 publications once it is subscribed.
    let mut seen = Seen::default();
    for n in 1..=300 {
        publish("room", n).await;
        if n % 30 == 0 {
            let ping = json!({"type": "ping", "id": n});
            ws.send(Message::Text(ping.to_string().into()))
                .await
                .unwrap();
        }
        if n == 150 {
            ws.send(subscribe("room2")).await.unwrap();
            while !seen.subscribed {
                seen.read(&mut ws).await;
            }
        }
        if n > 150 {
            publish("room2", n - 150).await;
        }
    }
    while seen.room < 300 || seen.room2 < 150 || seen.pongs < 10 {
        seen.read(&mut ws).await;
    }
    let direct = counter(&node.http(), "sessionhub_messages_direct_total").await - before;
    assert!(direct > 0, "written straight to the socket: {direct}");
    common::assert_silent(&mut ws, Duration::from_millis(200)).await;
}
