//! The `Presence` contract: `/api/online` counts open connections and distinct users, and
//! follows connections as they come and go; on a presence channel (every channel starting
//! with [`PRESENCE_PREFIX`] here), members and stats count each user once with their
//! connections to the channel.
//!
//! A [`PresenceFixture`] is a hub (connections are opened with `Hub::connect`, as the
//! gateway does for each socket) and the presence that counts it. A backend may publish its
//! counts a little later than they change (Redis: on a heartbeat every 250 ms), so every
//! check waits up to [`SETTLE`] for the count it expects.
//!
//! A backend shared by several nodes also gives the fixture a way to start a [`Peer`], a
//! second node that can die without a word, so that the checks can see what a survivor
//! does with a dead node's members.
//!
//! [`presence_conformance!`](crate::presence_conformance) runs [`checks`] against a backend.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::hub::{Hub, Online};
use sessionhub::presence::{ChannelStats, Presence, PresenceChannels};
use sessionhub::protocol::UserId;
use tokio::time::{Instant, sleep};

/// Upper bound for one test, setup included.
pub const LIMIT: Duration = Duration::from_secs(30);
/// How long a count may lag behind the connections: eight of Redis presence's 250 ms
/// heartbeats, for a loaded machine.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The channels with presence in every fixture.
pub const PRESENCE_PREFIX: &str = "room:";

/// A hub, the presence that counts it, and whatever must live as long as they do.
pub struct PresenceFixture {
    hub: Hub,
    presence: Arc<dyn Presence>,
    peer: Option<Box<dyn Fn() -> Peer + Send + Sync>>,
    _guard: super::Guard,
}

/// Another node on the fixture's backend (its hub with presence on the channels starting
/// with [`PRESENCE_PREFIX`]), which can die without a word.
pub struct Peer {
    hub: Hub,
    kill: Box<dyn FnOnce() + Send>,
    reaped_within: Duration,
}

impl Peer {
    /// A node whose presence stops (without withdrawing anything, as at SIGKILL) when `kill`
    /// is called; a survivor must have reaped it `reaped_within` after that.
    pub fn new(hub: Hub, kill: impl FnOnce() + Send + 'static, reaped_within: Duration) -> Self {
        Self {
            hub,
            kill: Box::new(kill),
            reaped_within,
        }
    }
}

impl PresenceFixture {
    /// `presence`, counting the connections of `hub`, which gets presence on the channels
    /// starting with [`PRESENCE_PREFIX`]; `guard` keeps it working (a server, a heartbeat's
    /// stop token; `()` when it needs nothing). Call within a Tokio runtime.
    pub fn new(hub: Hub, presence: Arc<dyn Presence>, guard: impl std::any::Any + Send) -> Self {
        track(&hub, &presence);
        Self {
            hub,
            presence,
            peer: None,
            _guard: Box::new(guard),
        }
    }

    /// This fixture, whose backend nodes share: `start` starts another node on it (a
    /// [`Peer`]; within a Tokio runtime), for the checks of what happens to a dead node's
    /// members. Without it those checks pass at once (one node has nobody to reap it).
    pub fn with_peer(mut self, start: impl Fn() -> Peer + Send + Sync + 'static) -> Self {
        self.peer = Some(Box::new(start));
        self
    }

    /// The hub to open connections on.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The presence under test.
    pub fn presence(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    /// What the presence counts now; panics if it fails.
    pub async fn online(&self) -> Online {
        self.presence.online().await.expect("presence answers")
    }

    /// Waits (up to [`SETTLE`]) until the presence counts `online` connections of `users`
    /// distinct users.
    pub async fn settles_at(&self, online: usize, users: usize) {
        settles_at(&*self.presence, online, users).await;
    }
}

/// Gives `hub` presence on the channels starting with [`PRESENCE_PREFIX`], reported to
/// `presence`.
pub fn track(hub: &Hub, presence: &Arc<dyn Presence>) {
    hub.track_presence(PresenceChannels::new([PRESENCE_PREFIX]), presence.clone());
}

/// Waits (up to [`SETTLE`]) until `presence` has exactly `expected` (user, connections) on
/// `channel`, and stats that agree.
pub async fn channel_settles_at(
    presence: &dyn Presence,
    channel: &str,
    expected: &[(&str, usize)],
) {
    let mut expected: Vec<(String, usize)> = expected
        .iter()
        .map(|(u, n)| ((*u).to_owned(), *n))
        .collect();
    expected.sort();
    let stats = ChannelStats {
        users: expected.len(),
        connections: expected.iter().map(|(_, n)| n).sum(),
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut members: Vec<(String, usize)> = presence
            .members(channel)
            .await
            .expect("presence answers")
            .into_iter()
            .map(|m| (m.user, m.connections))
            .collect();
        members.sort();
        let counted = presence.stats(channel).await.expect("presence answers");
        if members == expected && counted == stats {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {members:?} ({counted:?}), expected {expected:?} within {SETTLE:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to `within`) until `presence` has exactly `expected` (user, connections,
/// info) on `channel`.
pub async fn members_settle_at(
    presence: &dyn Presence,
    channel: &str,
    expected: &[(&str, usize, Option<&str>)],
    within: Duration,
) {
    let mut expected: Vec<(String, usize, Option<String>)> = expected
        .iter()
        .map(|(u, n, info)| ((*u).to_owned(), *n, info.map(str::to_owned)))
        .collect();
    expected.sort();
    let deadline = Instant::now() + within;
    loop {
        let mut members: Vec<(String, usize, Option<String>)> = presence
            .members(channel)
            .await
            .expect("presence answers")
            .into_iter()
            .map(|m| (m.user, m.connections, m.info))
            .collect();
        members.sort();
        if members == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {members:?}, expected {expected:?} within {within:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to [`SETTLE`]) until `presence` counts `online` connections of `users`
/// distinct users.
pub async fn settles_at(presence: &dyn Presence, online: usize, users: usize) {
    let expected = Online { online, users };
    let deadline = Instant::now() + SETTLE;
    loop {
        let counted = presence.online().await.expect("presence answers");
        if counted == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counted {counted:?}, expected {expected:?} within {SETTLE:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// A user id; panics if `id` is not a valid one.
pub fn user(id: &str) -> UserId {
    id.parse().expect("a valid user id")
}

/// The checks, each given the fixture.
pub mod checks {
    use super::*;

    /// A hub nobody connected to counts zero, also once the backend had time to report it.
    pub async fn an_empty_hub_counts_zero(fixture: &PresenceFixture) {
        assert_eq!(fixture.online().await, Online::default());
        sleep(SETTLE / 2).await;
        assert_eq!(fixture.online().await, Online::default());
    }

    /// Every connection counts, and every user once however many connections they have.
    pub async fn connections_and_distinct_users_are_counted(fixture: &PresenceFixture) {
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let hub = fixture.hub();
        let _connections = [hub.connect(&alice), hub.connect(&alice), hub.connect(&bob)];
        fixture.settles_at(3, 2).await;
    }

    /// Channels are not connections: a connection counts once whatever it joined, and
    /// leaving a channel is not leaving.
    pub async fn joined_channels_do_not_count(fixture: &PresenceFixture) {
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let hub = fixture.hub();
        let mut a = hub.connect(&alice);
        a.join(&alice.channel()).await.expect("joins");
        a.join("room:lobby").await.expect("joins");
        let mut b = hub.connect(&bob);
        b.join("room:lobby").await.expect("joins");
        fixture.settles_at(2, 2).await;
        a.leave("room:lobby");
        b.leave("room:lobby");
        sleep(SETTLE / 2).await;
        assert_eq!(
            fixture.online().await,
            Online {
                online: 2,
                users: 2
            }
        );
    }

    /// The counts drop as connections close, down to zero.
    pub async fn counts_drop_as_connections_leave(fixture: &PresenceFixture) {
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let hub = fixture.hub();
        let (a1, a2, b) = (hub.connect(&alice), hub.connect(&alice), hub.connect(&bob));
        fixture.settles_at(3, 2).await;
        drop(a1);
        fixture.settles_at(2, 2).await;
        drop(b);
        fixture.settles_at(1, 1).await;
        drop(a2);
        fixture.settles_at(0, 0).await;
    }

    /// A burst of connections opening and closing, faster than any heartbeat, ends at
    /// exactly what is left open.
    pub async fn counts_settle_after_churn(fixture: &PresenceFixture) {
        let users: Vec<UserId> = (0..10).map(|i| user(&format!("user-{i}"))).collect();
        let hub = fixture.hub();
        let (open, closed): (Vec<_>, Vec<_>) = (0..100)
            .map(|i| (i, hub.connect(&users[i % 10])))
            .partition(|(i, _)| i % 2 == 0);
        // Users 1, 3, 5, 7 and 9 have nothing left open.
        drop(closed);
        fixture.settles_at(50, 5).await;
        drop(open);
        fixture.settles_at(0, 0).await;
    }

    /// A presence channel lists each user once with their connections to it; connections
    /// elsewhere and other channels do not count. A join is counted when it returns.
    pub async fn channel_members_are_users_with_their_connections(fixture: &PresenceFixture) {
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let hub = fixture.hub();
        let presence = &**fixture.presence();
        channel_settles_at(presence, "room:1", &[]).await;
        let mut a1 = hub.connect(&alice);
        a1.join("room:1").await.expect("joins");
        let members = presence.members("room:1").await.expect("presence answers");
        assert_eq!(
            members.len(),
            1,
            "counted when the join returns: {members:?}"
        );
        let mut a2 = hub.connect(&alice);
        a2.join("room:1").await.expect("joins");
        a2.join("room:2").await.expect("joins");
        let mut b = hub.connect(&bob);
        b.join("room:2").await.expect("joins");
        b.join("lobby").await.expect("joins");
        let _elsewhere = hub.connect(&bob);
        channel_settles_at(presence, "room:1", &[("alice@example.com", 2)]).await;
        channel_settles_at(presence, "room:2", &[("alice@example.com", 1), ("bob", 1)]).await;
        // Not a presence channel: nothing is counted there.
        channel_settles_at(presence, "lobby", &[]).await;
    }

    /// Leaving a presence channel and closing connections take users off it, the user only
    /// with their last connection.
    pub async fn channel_members_drop_as_connections_leave(fixture: &PresenceFixture) {
        let (alice, bob) = (user("alice@example.com"), user("bob"));
        let hub = fixture.hub();
        let presence = &**fixture.presence();
        let (mut a1, mut a2, mut b) = (hub.connect(&alice), hub.connect(&alice), hub.connect(&bob));
        for connection in [&mut a1, &mut a2, &mut b] {
            connection.join("room:1").await.expect("joins");
        }
        channel_settles_at(presence, "room:1", &[("alice@example.com", 2), ("bob", 1)]).await;
        a1.leave("room:1");
        channel_settles_at(presence, "room:1", &[("alice@example.com", 1), ("bob", 1)]).await;
        drop(b);
        channel_settles_at(presence, "room:1", &[("alice@example.com", 1)]).await;
        // Leaving twice, or a channel never joined, changes nothing.
        a1.leave("room:1");
        a1.leave("room:9");
        drop(a2);
        channel_settles_at(presence, "room:1", &[]).await;
        // a1 is still connected.
        fixture.settles_at(1, 1).await;
    }

    /// A burst of joins and leaves on a presence channel, faster than any round trip, ends
    /// at exactly what is left.
    pub async fn channel_members_settle_after_churn(fixture: &PresenceFixture) {
        let users: Vec<UserId> = (0..5).map(|i| user(&format!("user-{i}"))).collect();
        let hub = fixture.hub();
        let mut connections = Vec::new();
        for i in 0..40 {
            let mut connection = hub.connect(&users[i % 5]);
            connection.join("room:churn").await.expect("joins");
            connections.push(connection);
        }
        // Users 0 and 1 keep their four even connections; the rest leave.
        let (kept, gone): (Vec<_>, Vec<_>) = connections
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 5 < 2 && i % 2 == 0);
        drop(gone);
        let expected = [("user-0", 4), ("user-1", 4)];
        channel_settles_at(&**fixture.presence(), "room:churn", &expected).await;
        drop(kept);
        channel_settles_at(&**fixture.presence(), "room:churn", &[]).await;
    }

    /// A member's info is what their first connection to the channel gave, kept while a
    /// second connection comes with other info and goes; a user joined without info has
    /// none. Text that is not JSON is kept as a JSON string.
    pub async fn member_info_is_the_first_connections(fixture: &PresenceFixture) {
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let hub = fixture.hub();
        let presence = &**fixture.presence();
        let mut a1 = hub.connect(&alice);
        a1.join_as("room:info", &alice, Some(r#"{"name":"Alice"}"#.into()))
            .await
            .expect("joins");
        let members = presence
            .members("room:info")
            .await
            .expect("presence answers");
        assert_eq!(
            members
                .iter()
                .map(|m| m.info.as_deref())
                .collect::<Vec<_>>(),
            [Some(r#"{"name":"Alice"}"#)],
            "known when the join returns"
        );
        let mut a2 = hub.connect(&alice);
        a2.join_as("room:info", &alice, Some(r#"{"name":"Other"}"#.into()))
            .await
            .expect("joins");
        let mut b = hub.connect(&bob);
        b.join("room:info").await.expect("joins");
        let mut c = hub.connect(&carol);
        c.join_as("room:info", &carol, Some("plain text".into()))
            .await
            .expect("joins");
        let expected = [
            ("alice", 2, Some(r#"{"name":"Alice"}"#)),
            ("bob", 1, None),
            ("carol", 1, Some(r#""plain text""#)),
        ];
        members_settle_at(presence, "room:info", &expected, SETTLE).await;
        a2.leave("room:info");
        drop(c);
        let expected = [("alice", 1, Some(r#"{"name":"Alice"}"#)), ("bob", 1, None)];
        members_settle_at(presence, "room:info", &expected, SETTLE).await;
    }

    /// A connection that joins as another user counts as that user there, and leaving
    /// (or closing) takes back exactly that; its own user is not on the channel.
    pub async fn a_connection_joined_as_another_user_counts_as_them(fixture: &PresenceFixture) {
        let (socket, alice) = (user("socket-1"), user("alice"));
        let hub = fixture.hub();
        let presence = &**fixture.presence();
        let mut s1 = hub.connect(&socket);
        s1.join_as("room:as", &alice, Some(r#"{"n":1}"#.into()))
            .await
            .expect("joins");
        let mut s2 = hub.connect(&socket);
        s2.join("room:as").await.expect("joins");
        let expected = [("alice", 1, Some(r#"{"n":1}"#)), ("socket-1", 1, None)];
        members_settle_at(presence, "room:as", &expected, SETTLE).await;
        // Joining again changes nothing, whoever it names.
        s1.join_as("room:as", &user("mallory"), None)
            .await
            .expect("joins");
        s1.leave("room:as");
        members_settle_at(presence, "room:as", &[("socket-1", 1, None)], SETTLE).await;
        s1.join_as("room:as", &alice, None).await.expect("joins");
        members_settle_at(
            presence,
            "room:as",
            &[("alice", 1, None), ("socket-1", 1, None)],
            SETTLE,
        )
        .await;
        drop(s1);
        members_settle_at(presence, "room:as", &[("socket-1", 1, None)], SETTLE).await;
        drop(s2);
        members_settle_at(presence, "room:as", &[], SETTLE).await;
        fixture.settles_at(0, 0).await;
    }

    /// A user's info goes with their last connection (left or closed): joining again
    /// without info, they have none, and with other info, that one.
    pub async fn member_info_is_gone_after_leave(fixture: &PresenceFixture) {
        let alice = user("alice");
        let hub = fixture.hub();
        let presence = &**fixture.presence();
        let mut a = hub.connect(&alice);
        a.join_as("room:gone", &alice, Some(r#"{"v":1}"#.into()))
            .await
            .expect("joins");
        members_settle_at(
            presence,
            "room:gone",
            &[("alice", 1, Some(r#"{"v":1}"#))],
            SETTLE,
        )
        .await;
        a.leave("room:gone");
        members_settle_at(presence, "room:gone", &[], SETTLE).await;
        a.join("room:gone").await.expect("joins");
        members_settle_at(presence, "room:gone", &[("alice", 1, None)], SETTLE).await;
        drop(a);
        members_settle_at(presence, "room:gone", &[], SETTLE).await;
        let mut a = hub.connect(&alice);
        a.join_as("room:gone", &alice, Some(r#"{"v":2}"#.into()))
            .await
            .expect("joins");
        members_settle_at(
            presence,
            "room:gone",
            &[("alice", 1, Some(r#"{"v":2}"#))],
            SETTLE,
        )
        .await;
    }

    /// A node that dies without a word loses its members, info included, once a survivor
    /// reaps it: the user joining again on the survivor without info has none. Passes at
    /// once for a backend without [`PresenceFixture::with_peer`].
    pub async fn member_info_is_gone_after_a_reap(fixture: &PresenceFixture) {
        let Some(start) = &fixture.peer else {
            return;
        };
        let alice = user("alice");
        let presence = &**fixture.presence();
        let peer = start();
        let mut on_peer = peer.hub.connect(&alice);
        on_peer
            .join_as("room:reaped", &alice, Some(r#"{"on":"peer"}"#.into()))
            .await
            .expect("joins");
        let expected = [("alice", 1, Some(r#"{"on":"peer"}"#))];
        members_settle_at(presence, "room:reaped", &expected, SETTLE).await;
        (peer.kill)();
        members_settle_at(presence, "room:reaped", &[], peer.reaped_within).await;
        let mut here = fixture.hub().connect(&alice);
        here.join("room:reaped").await.expect("joins");
        members_settle_at(presence, "room:reaped", &[("alice", 1, None)], SETTLE).await;
        // Held until now: closing it earlier would have its node report the leave itself.
        drop(on_peer);
    }

    /// Joins with a member limit, racing on every node at once, admit exactly the limit:
    /// the others are refused and not on the channel; a member
    /// already on the channel may add a connection past the limit; a place freed by a leave
    /// can be taken again.
    pub async fn joins_past_a_member_limit_are_refused(fixture: &PresenceFixture) {
        const LIMIT: usize = 5;
        let channel = "room:limited";
        let presence = &**fixture.presence();
        // Kept alive to the end: its connections are half of the racers.
        let peer = fixture.peer.as_ref().map(|start| start());
        let hubs: Vec<&Hub> = std::iter::once(fixture.hub())
            .chain(peer.as_ref().map(|p| &p.hub))
            .collect();
        let users: Vec<UserId> = (0..24).map(|i| user(&format!("racer-{i}"))).collect();
        let mut connections: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, u)| hubs[i % hubs.len()].connect(u))
            .collect();
        let joins = connections
            .iter_mut()
            .zip(&users)
            .map(|(c, u)| c.join_within(channel, u, None, LIMIT));
        let joined: Vec<bool> = futures_util::future::join_all(joins)
            .await
            .into_iter()
            .map(|r| r.expect("joins"))
            .collect();
        assert_eq!(
            joined.iter().filter(|j| **j).count(),
            LIMIT,
            "exactly the limit admitted: {joined:?}"
        );
        let admitted: Vec<&str> = users
            .iter()
            .zip(&joined)
            .filter(|(_, j)| **j)
            .map(|(u, _)| u.as_str())
            .collect();
        let expected: Vec<(&str, usize)> = admitted.iter().map(|u| (*u, 1)).collect();
        channel_settles_at(presence, channel, &expected).await;
        // An admitted member's second connection (on another node if there is one).
        let first = users.iter().zip(&joined).position(|(_, j)| *j).unwrap();
        let first_user = &users[first];
        let mut again = hubs[(first + 1) % hubs.len()].connect(first_user);
        assert!(
            again
                .join_within(channel, first_user, None, LIMIT)
                .await
                .expect("joins"),
            "a member may always add a connection"
        );
        let refused = joined.iter().position(|j| !*j).unwrap();
        let mut late = fixture.hub().connect(&users[refused]);
        assert!(
            !late
                .join_within(channel, &users[refused], None, LIMIT)
                .await
                .expect("joins"),
            "still full"
        );
        // The first member leaves with both connections: one place is free again.
        drop(again);
        drop(connections.swap_remove(first));
        let expected: Vec<(&str, usize)> = admitted[1..].iter().map(|u| (*u, 1)).collect();
        channel_settles_at(presence, channel, &expected).await;
        assert!(
            late.join_within(channel, &users[refused], None, LIMIT)
                .await
                .expect("joins"),
            "a freed place is taken"
        );
    }
}

/// Runs every presence check against the backend `$factory` returns, one test each:
/// `sessionhub_testkit::presence_conformance!(my_factory);` where
/// `async fn my_factory() -> PresenceFixture`. See [`conformance`](crate::conformance).
#[macro_export]
macro_rules! presence_conformance {
    ($factory:path) => {
        $crate::__conformance_tests!(
            suite: presence,
            worker_threads: 2,
            factory: $factory,
            fixture => &fixture,
            checks: [
                an_empty_hub_counts_zero,
                connections_and_distinct_users_are_counted,
                joined_channels_do_not_count,
                counts_drop_as_connections_leave,
                counts_settle_after_churn,
                channel_members_are_users_with_their_connections,
                channel_members_drop_as_connections_leave,
                channel_members_settle_after_churn,
                member_info_is_the_first_connections,
                a_connection_joined_as_another_user_counts_as_them,
                member_info_is_gone_after_leave,
                member_info_is_gone_after_a_reap,
                joins_past_a_member_limit_are_refused,
            ]
        );
    };
}
