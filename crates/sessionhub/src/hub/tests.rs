use std::time::Duration;

use tokio::time::timeout;

use super::registry::Outbox;
use super::{OUTBOUND_QUEUE, OUTBOX_KEPT, Outbound, Registry};
use crate::broker::Publication;

fn code(item: Outbound) -> u16 {
    match item {
        Outbound::Close(code, _) => code,
        _ => panic!("not a numbered close"),
    }
}

#[test]
fn presence_events_pass_only_when_newer_and_different() {
    let registry = Registry::default();
    let event = |kind: &str, version: u64| Publication {
        offset: 0,
        epoch: "".into(),
        data: format!(r#"{{"type":"{kind}","channel":"c","user":"u","version":{version}}}"#).into(),
    };
    let passed = |kind, version| registry.is_news("$presence:c", &event(kind, version));
    // Decided join 1, leave 2, join 3, leave 4; arriving 1, 3, 2, 4.
    assert!(passed("join", 1));
    assert!(
        !passed("join", 3),
        "a second join in a row says nothing new"
    );
    assert!(!passed("leave", 2), "older than what was seen");
    assert!(passed("leave", 4));
    // Decided leave 6 after join 5, arriving the other way round: ends absent.
    assert!(!passed("leave", 6), "already absent");
    assert!(!passed("join", 5), "older than the leave");
    assert!(!registry.is_news(
        "$presence:c",
        &Publication {
            offset: 0,
            epoch: "".into(),
            data: "not an event".into(),
        }
    ));
}

/// The next `join` or `leave` frame `connection` receives, as JSON.
async fn next_event(connection: &super::Connection) -> serde_json::Value {
    let item = timeout(Duration::from_secs(5), connection.recv()).await;
    match item.expect("an event within 5 s") {
        Outbound::Message(delivery) => {
            serde_json::from_str(delivery.publication().data.as_str()).unwrap()
        }
        other => panic!("not a message: {other:?}"),
    }
}

/// A connection joined as another user is announced as that user, with the info of
/// their first connection; their leave carries none, and comes when the last of their
/// connections goes, however those joined.
#[tokio::test]
async fn joins_as_a_user_are_announced_with_their_info() {
    let hub = super::Hub::local("node-a");
    let presence = std::sync::Arc::new(crate::presence::LocalPresence::new(&hub));
    let channels = crate::presence::PresenceChannels::new(["room:"]);
    assert!(hub.track_presence(channels, presence));
    let user = |id: &str| -> crate::protocol::UserId { id.parse().unwrap() };
    let mut watcher = hub.connect(&user("watcher"));
    watcher.join("room:1").await.unwrap();
    assert_eq!(next_event(&watcher).await["user"], "watcher");
    let mut socket = hub.connect(&user("socket-1"));
    socket
        .join_as("room:1", &user("alice"), Some(r#"{"name":"Alice"}"#.into()))
        .await
        .unwrap();
    let join = next_event(&watcher).await;
    assert_eq!(
        (&join["type"], &join["user"], &join["info"]),
        (
            &"join".into(),
            &"alice".into(),
            &serde_json::json!({"name": "Alice"})
        )
    );
    let mut again = hub.connect(&user("socket-2"));
    again.join_as("room:1", &user("alice"), None).await.unwrap();
    drop(socket);
    drop(again);
    let leave = next_event(&watcher).await;
    assert_eq!(
        (&leave["type"], &leave["user"]),
        (&"leave".into(), &"alice".into())
    );
    assert!(leave.get("info").is_none(), "{leave}");
}

/// A renamed connection (a Pusher socket that signed in) is its new user's for commands
/// and counts, and a presence channel it joined before stays counted as its old user.
#[tokio::test]
async fn a_renamed_connection_is_its_new_user_s() {
    let hub = super::Hub::local("node-a");
    let presence = std::sync::Arc::new(crate::presence::LocalPresence::new(&hub));
    let channels = crate::presence::PresenceChannels::new(["room:"]);
    assert!(hub.track_presence(channels, presence));
    let user = |id: &str| -> crate::protocol::UserId { id.parse().unwrap() };
    hub.track_users();
    let mut watcher = hub.connect(&user("watcher"));
    watcher.join("room:1").await.unwrap();
    assert_eq!(next_event(&watcher).await["user"], "watcher");
    let mut socket = hub.connect(&user("anon"));
    socket.join("room:1").await.unwrap();
    assert_eq!(next_event(&watcher).await["user"], "anon");
    socket.rename(&user("ann"));
    assert_eq!(hub.local_connections(&user("anon")), 0);
    assert_eq!(hub.local_connections(&user("ann")), 1);
    assert_eq!(
        hub.online(),
        super::Online {
            online: 2,
            users: 2
        }
    );
    let changes = hub.take_user_changes(10);
    let want = [(user("watcher"), 1), (user("ann"), 1)];
    assert_eq!(changes, want.into_iter().collect(), "anon came and went");
    let close = Outbound::Close(4000, "");
    assert_eq!(hub.command_local(&user("ann"), None, &close), 1);
    assert_eq!(hub.command_local(&user("anon"), None, &close), 0);
    drop(socket);
    let leave = next_event(&watcher).await;
    assert_eq!(
        (&leave["type"], &leave["user"]),
        (&"leave".into(), &"anon".into())
    );
    assert_eq!(
        hub.take_user_changes(10),
        [(user("ann"), -1)].into_iter().collect()
    );
}

#[tokio::test]
async fn the_outbox_is_bounded_and_keeps_order() {
    let outbox = Outbox::default();
    for n in 0..OUTBOUND_QUEUE {
        assert!(outbox.push(Outbound::Close(n as u16, "")));
    }
    assert!(!outbox.push(Outbound::Resync), "full: a slow consumer");
    for n in 0..OUTBOUND_QUEUE {
        assert_eq!(code(outbox.pop().await), n as u16);
    }
    assert!(
        outbox.push(Outbound::Close(7, "")),
        "room again once drained"
    );
    assert_eq!(code(outbox.pop().await), 7);
}

#[tokio::test]
async fn a_drained_outbox_gives_back_its_burst() {
    let outbox = Outbox::default();
    assert_eq!(
        outbox.queue.lock().unwrap().capacity(),
        0,
        "nothing until used"
    );
    for n in 0..200 {
        outbox.push(Outbound::Close(n, ""));
    }
    assert!(outbox.queue.lock().unwrap().capacity() >= 200);
    for _ in 0..200 {
        outbox.pop().await;
    }
    assert!(outbox.queue.lock().unwrap().capacity() <= OUTBOX_KEPT);
}

#[tokio::test]
async fn pop_waits_for_a_push_and_loses_nothing_when_cancelled() {
    let outbox = std::sync::Arc::new(Outbox::default());
    // Cancelled while waiting (as a select! branch is): nothing is taken.
    assert!(
        timeout(Duration::from_millis(20), outbox.pop())
            .await
            .is_err()
    );
    let waiting = tokio::spawn({
        let outbox = outbox.clone();
        async move { code(outbox.pop().await) }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    outbox.push(Outbound::Close(1, ""));
    outbox.push(Outbound::Close(2, ""));
    let first = timeout(Duration::from_secs(2), waiting).await;
    assert_eq!(first.expect("woken by the push").unwrap(), 1);
    assert_eq!(code(outbox.pop().await), 2, "the second is still there");
}
