//! Pusher's grace on `channel_vacated` and `member_removed`, and the presence member limit
//! under a race, against real sessionhub processes, raw Pusher sockets and a webhook
//! receiver of the test's own.
//!
//! A leave's webhooks wait 3 s in the shared queue; a comeback within them (a page reload)
//! cancels them and its own `channel_occupied` / `member_added`, wherever the leave and the
//! comeback happen and whichever node dies meanwhile. A real leave sends exactly one of
//! each, about 3 s late. The member limit is decided by the presence backend with the join:
//! many subscribes racing on two nodes admit exactly the limit.

mod common;

use std::time::Duration;

use common::pusher::raw::{self, Receiver};
use common::{WAIT, Ws};
use serde_json::json;
use sessionhub_testkit::Node;
use tokio::time::{Instant, sleep};

const APP: &str = "9:grace-key:grace-secret";
const KEY: &str = "grace-key";
const SECRET: &str = "grace-secret";
/// Pusher's grace (`sessionhub::pusher::WEBHOOK_GRACE`).
const GRACE: Duration = Duration::from_secs(3);
/// How long a client takes to come back, as a page reload would: after its node saw it go.
const RELOAD: Duration = Duration::from_millis(400);

/// A webhook `(name, channel, user_id)`.
type Hook<'a> = (&'a str, &'a str, &'a str);

/// Opens a socket on `node` and joins presence channel `channel` as `user`.
async fn member(node: &Node, channel: &str, user: &str) -> Ws {
    let (mut ws, id) = raw::connect(node, KEY).await;
    raw::join_presence(&mut ws, &id, (KEY, SECRET), channel, user).await;
    ws
}

/// Closes `ws` as a browser tab does, and waits until its node has seen it go.
async fn leave(mut ws: Ws) {
    ws.close(None).await.unwrap();
    // The close handshake's answer: the node has the close, and leaves with it.
    let _ = tokio::time::timeout(WAIT, common::next_close(&mut ws, WAIT)).await;
    sleep(RELOAD).await;
}

/// Asserts that the receiver got exactly `want` of each hook, after the grace and a
/// delivery's slack have passed.
async fn exactly(receiver: &Receiver, want: &[(Hook<'_>, usize)]) {
    sleep(GRACE + Duration::from_secs(2)).await;
    for &(hook, n) in want {
        assert_eq!(
            receiver.count(KEY, hook),
            n,
            "{hook:?}: {:?}",
            receiver.events(KEY)
        );
    }
}

/// Waits for `hook`, held for the grace: it must come no sooner than the grace after
/// `since` (less a little for the clocks); how long after `since` it came.
async fn arrives_after_grace(receiver: &Receiver, hook: Hook<'_>, since: Instant) -> Duration {
    receiver.wait_for(KEY, hook, GRACE + WAIT).await;
    let late = since.elapsed();
    assert!(
        late >= GRACE - Duration::from_millis(200),
        "{hook:?} after {late:?}"
    );
    late
}

/// On one node (the embedded queue): a reload within the grace sends nothing; a real
/// leave sends one `member_removed` and one `channel_vacated`, each about 3 s late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_nothing_and_a_leave_sends_one_of_each_after_the_grace() {
    let receiver = Receiver::start().await;
    let node = common::node(&["--pusher-app", APP, "--pusher-webhook", &receiver.url]);
    let channel = "presence-page";
    let occupied = ("channel_occupied", channel, "");
    let added = ("member_added", channel, "ann");
    let removed = ("member_removed", channel, "ann");
    let vacated = ("channel_vacated", channel, "");

    let ann = member(&node, channel, "ann").await;
    receiver.wait_for(KEY, occupied, WAIT).await;
    receiver.wait_for(KEY, added, WAIT).await;
    // The reload: gone, and back before the grace is over.
    leave(ann).await;
    let ann = member(&node, channel, "ann").await;
    exactly(
        &receiver,
        &[(occupied, 1), (added, 1), (removed, 0), (vacated, 0)],
    )
    .await;

    let left = Instant::now();
    leave(ann).await;
    let late = arrives_after_grace(&receiver, vacated, left).await;
    assert!(
        receiver.count(KEY, removed) == 1,
        "{:?}",
        receiver.events(KEY)
    );
    eprintln!("channel_vacated came {late:?} after the leave");
    exactly(
        &receiver,
        &[(occupied, 1), (added, 1), (removed, 1), (vacated, 1)],
    )
    .await;
}

/// Three nodes sharing Redis: the leave on one node, the comeback on another, cancel each
/// other; a member leaving while another stays sends only their `member_removed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_nodes_a_comeback_on_another_node_cancels_the_leave() {
    let receiver = Receiver::start().await;
    let (_redis, nodes) =
        common::cluster_with(3, &["--pusher-app", APP, "--pusher-webhook", &receiver.url]);
    let channel = "presence-hall";
    let occupied = ("channel_occupied", channel, "");
    let vacated = ("channel_vacated", channel, "");
    let added = |user| ("member_added", channel, user);
    let removed = |user| ("member_removed", channel, user);

    let ann = member(&nodes[0], channel, "ann").await;
    receiver.wait_for(KEY, added("ann"), WAIT).await;
    leave(ann).await;
    let ann = member(&nodes[1], channel, "ann").await;
    let bob = member(&nodes[2], channel, "bob").await;
    receiver.wait_for(KEY, added("bob"), WAIT).await;
    // Bob leaves for good; Ann reloads again, from node 1 to node 2.
    leave(bob).await;
    leave(ann).await;
    let ann = member(&nodes[2], channel, "ann").await;
    exactly(
        &receiver,
        &[
            (occupied, 1),
            (added("ann"), 1),
            (added("bob"), 1),
            (removed("bob"), 1),
            (removed("ann"), 0),
            (vacated, 0),
        ],
    )
    .await;

    let left = Instant::now();
    leave(ann).await;
    arrives_after_grace(&receiver, vacated, left).await;
    exactly(
        &receiver,
        &[(occupied, 1), (removed("ann"), 1), (vacated, 1)],
    )
    .await;
}

/// The node that queued held leaves is killed within the grace: a leave nobody comes back
/// from still goes out once, from a survivor; one whose member comes back on a survivor is
/// cancelled there. The queue, not the node, held them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_leaves_outlive_the_node_that_queued_them() {
    let receiver = Receiver::start().await;
    let (_redis, mut nodes) =
        common::cluster_with(3, &["--pusher-app", APP, "--pusher-webhook", &receiver.url]);
    let (gone, back) = ("presence-gone", "presence-back");
    let ann = member(&nodes[2], gone, "ann").await;
    let bob = member(&nodes[2], back, "bob").await;
    receiver
        .wait_for(KEY, ("member_added", gone, "ann"), WAIT)
        .await;
    receiver
        .wait_for(KEY, ("member_added", back, "bob"), WAIT)
        .await;

    let left = Instant::now();
    leave(ann).await;
    leave(bob).await;
    nodes[2].kill();
    let _bob = member(&nodes[0], back, "bob").await;
    arrives_after_grace(&receiver, ("channel_vacated", gone, ""), left).await;
    exactly(
        &receiver,
        &[
            (("member_removed", gone, "ann"), 1),
            (("channel_vacated", gone, ""), 1),
            (("member_added", back, "bob"), 1),
            (("channel_occupied", back, ""), 1),
            (("member_removed", back, "bob"), 0),
            (("channel_vacated", back, ""), 0),
        ],
    )
    .await;
}

/// Subscribes to `channel` as `user`: whether it succeeded (`false`: refused as full).
async fn try_join(node: &Node, channel: &str, user: String) -> (bool, Ws) {
    let (mut ws, id) = raw::connect(node, KEY).await;
    let channel_data = json!({"user_id": user}).to_string();
    let auth = raw::sign(KEY, SECRET, &format!("{id}:{channel}:{channel_data}"));
    let frame = json!({"event": "pusher:subscribe",
        "data": {"channel": channel, "auth": auth, "channel_data": channel_data}});
    common::send_text(&mut ws, &frame.to_string()).await;
    loop {
        let event = raw::next_event(&mut ws).await;
        match event["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") => return (true, ws),
            Some("pusher:subscription_error") => {
                assert_eq!(event["data"]["status"], 403, "{event}");
                assert_eq!(event["data"]["type"], "LimitReached", "{event}");
                return (false, ws);
            }
            _ => {}
        }
    }
}

/// Forty subscribes with distinct users, all at once, half on each of two nodes, on a
/// channel of at most 5 members: exactly 5 succeed, and the channel lists exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_subscribes_on_two_nodes_admit_exactly_the_member_limit() {
    const LIMIT: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessionhub.toml");
    let (id, _) = APP.split_once(':').unwrap();
    let app = format!(
        "[[pusher.apps]]\nid = \"{id}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n\
         max_presence_members = {LIMIT}\n"
    );
    std::fs::write(&config, app).unwrap();
    let config = config.to_str().unwrap();
    let (_redis, nodes) = common::cluster_with(
        2,
        &["--config", config, "--max-connections-per-ip", "100000"],
    );
    let channel = "presence-limited";
    for round in 0..3 {
        let joins = (0..40).map(|i| try_join(&nodes[i % 2], channel, format!("r{round}-u{i}")));
        let results = futures_util::future::join_all(joins).await;
        let admitted = results.iter().filter(|(ok, _)| *ok).count();
        assert_eq!(admitted, LIMIT, "round {round}");
        let (status, body) = common::pusher::signed_get(
            &nodes[round % 2],
            APP,
            &format!("/apps/{id}/channels/{channel}/users"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let users: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(users["users"].as_array().unwrap().len(), LIMIT, "{users}");
        // Everyone leaves before the next round.
        for (_, mut ws) in results {
            ws.close(None).await.unwrap();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = common::pusher::signed_get(
                &nodes[0],
                APP,
                &format!("/apps/{id}/channels/{channel}/users"),
            )
            .await;
            let users: serde_json::Value = serde_json::from_str(&body).unwrap();
            if users["users"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            assert!(Instant::now() < deadline, "the channel empties: {users}");
            sleep(Duration::from_millis(50)).await;
        }
    }
}
