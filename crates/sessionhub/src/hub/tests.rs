use std::time::Duration;

use tokio::time::timeout;

use super::registry::{Direct, Offer, Outbox};
use super::{Delivery, OUTBOUND_QUEUE, OUTBOX_KEPT, Outbound, Registry, Render, Straight};
use crate::broker::{Envelope, Publication};

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

/// A hub on one node whose `room:` channels have presence.
fn hub_with_presence_on_rooms() -> super::Hub {
    let hub = super::Hub::local("node-a");
    let presence = std::sync::Arc::new(crate::presence::LocalPresence::new(&hub));
    let channels = crate::presence::PresenceChannels::new(["room:"]);
    assert!(hub.track_presence(channels, presence));
    hub
}

fn user(id: &str) -> crate::protocol::UserId {
    id.parse().unwrap()
}

/// A connection joined as another user is announced as that user, with the info of
/// their first connection; their leave carries none, and comes when the last of their
/// connections goes, however those joined.
#[tokio::test]
async fn joins_as_a_user_are_announced_with_their_info() {
    let hub = hub_with_presence_on_rooms();
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
    let hub = hub_with_presence_on_rooms();
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

/// A connected loopback pair: the server's end as a wire, and the client's end.
async fn wire_pair() -> (std::sync::Arc<crate::wire::Wire>, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    let wire = crate::wire::Wire::new(accepted.unwrap().0.into_split().1);
    (std::sync::Arc::new(wire), client.unwrap())
}

fn message(data: &str, except: Option<&str>) -> Outbound {
    let envelope = Envelope {
        except: except.map(str::to_owned),
        ..Envelope::default()
    };
    let publication = Publication {
        offset: 0,
        epoch: "".into(),
        data: envelope.wrap(data),
    };
    Outbound::Message(std::sync::Arc::new(Delivery::new("c", publication)))
}

/// Reads one unmasked text frame with a short payload off `client`.
async fn read_frame(client: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut header = [0; 2];
    client.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x81, "a final text frame");
    let mut payload = vec![0; usize::from(header[1])];
    client.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

fn text(item: Outbound) -> String {
    match item {
        Outbound::Message(delivery) => delivery.seed_frame().to_string(),
        _ => panic!("not a message"),
    }
}

#[tokio::test]
async fn a_delivery_goes_straight_to_the_wire_only_behind_nothing() {
    let (wire, mut client) = wire_pair().await;
    let outbox = Outbox::default();
    let direct = Direct {
        wire: wire.clone(),
        render: Render::Pusher("1.2".into()),
    };
    assert!(outbox.direct.set(direct).is_ok());
    // Free wire, empty queue: written, as the Pusher event.
    assert_eq!(
        outbox.offer(&message("\"a\"", None), &Straight::Yes),
        Offer::Written
    );
    let frame = read_frame(&mut client).await;
    assert_eq!(frame, r#"{"event":"message","channel":"c","data":"a"}"#);
    // The socket it excludes does not take it at all.
    assert_eq!(
        outbox.offer(&message("1", Some("1.2")), &Straight::Yes),
        Offer::NotTaken
    );
    // A channel not yet direct queues; what comes after it queues behind it.
    assert_eq!(
        outbox.offer(&message("\"b\"", None), &Straight::No),
        Offer::Queued
    );
    assert_eq!(
        outbox.offer(&message("\"c\"", None), &Straight::Yes),
        Offer::Queued
    );
    assert_eq!(text(outbox.pop().await), "b");
    assert_eq!(text(outbox.pop().await), "c");
    // The task holds the last item it took: a delivery now could overtake it.
    assert_eq!(
        outbox.offer(&message("\"d\"", None), &Straight::Yes),
        Offer::Queued
    );
    outbox.idle();
    assert_eq!(text(outbox.pop().await), "d");
    outbox.idle();
    assert_eq!(
        outbox.offer(&message("\"e\"", None), &Straight::Yes),
        Offer::Written
    );
    let frame = read_frame(&mut client).await;
    assert!(frame.contains(r#""data":"e""#), "{frame}");
}
