//! `LocalPresence`, the hub's own count: the presence conformance suite
//! (`sessionhub_testkit::conformance::presence`), then that it never lags.

use std::sync::Arc;

use sessionhub::hub::Hub;
use sessionhub::presence::{LocalPresence, Presence};
use sessionhub_testkit::conformance::presence::{PresenceFixture, user};

async fn local() -> PresenceFixture {
    let hub = Hub::local("node-a");
    PresenceFixture::new(hub.clone(), Arc::new(LocalPresence::new(&hub)), ())
}

sessionhub_testkit::presence_conformance!(local);

/// The count is the registry's: right after a connection opens or closes, not a beat later.
#[tokio::test]
async fn counts_follow_connections_at_once() {
    let hub = Hub::local("node-a");
    let presence = LocalPresence::new(&hub);
    let counted = || async {
        let online = presence.online().await.unwrap();
        (online.online, online.users)
    };
    let (alice, bob) = (user("alice@example.com"), user("bob"));
    let a = hub.connect(&alice);
    assert_eq!(counted().await, (1, 1));
    let b = hub.connect(&bob);
    let a2 = hub.connect(&alice);
    assert_eq!(counted().await, (3, 2));
    drop(b);
    assert_eq!(counted().await, (2, 1));
    drop((a, a2));
    assert_eq!(counted().await, (0, 0));
}
