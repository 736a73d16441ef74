//! The Pusher Channels side of the load: one app per run (`--pusher-app ID:KEY:SECRET`),
//! a public channel per user, events published through the signed HTTP API, so that
//! sessionhub's Pusher endpoint and a Pusher server such as Sockudo take the same load.

use std::sync::OnceLock;

use anyhow::{Context, bail};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::client;
use crate::http::push_u64;

/// The event name of benchmark messages.
const EVENT: &str = "m";

/// What a client answers to the server's `pusher:ping`.
pub(crate) const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// One Pusher app.
#[derive(Debug, Clone)]
pub(crate) struct App {
    id: String,
    key: String,
    secret: String,
}

/// The run's app. Global because every client of a run talks to the same app, and
/// [`client::Flavor`] stays a plain value that the command line chooses.
static APP: OnceLock<App> = OnceLock::new();

/// Sets the run's app from `ID:KEY:SECRET`; once, before any Pusher client connects.
pub(crate) fn configure(spec: &str) -> anyhow::Result<()> {
    let mut parts = spec.splitn(3, ':');
    let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--pusher-app is ID:KEY:SECRET");
    };
    let app = App {
        id: id.into(),
        key: key.into(),
        secret: secret.into(),
    };
    APP.set(app)
        .map_err(|_| anyhow::anyhow!("the Pusher app is set once"))
}

fn app() -> anyhow::Result<&'static App> {
    APP.get().context("the pusher flavor needs --pusher-app")
}

/// The path that opens a Pusher socket of the run's app.
pub(crate) fn ws_path() -> anyhow::Result<String> {
    Ok(format!(
        "/app/{}?protocol=7&client=sessionhub-loadgen&version=1",
        app()?.key
    ))
}

/// The frame that subscribes to user number `user`'s channel.
pub(crate) fn subscribe_frame(user: &str) -> String {
    format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{user}"}}}}"#)
}

/// Writes the signed `POST /apps/{id}/events` of `text` to user number `user`: the path
/// and query into `path`, the JSON body into `body`.
pub(crate) fn events_request(
    user: u32,
    text: &[u8],
    timestamp: u64,
    path: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let app = app()?;
    body.clear();
    body.extend_from_slice(br#"{"name":""#);
    body.extend_from_slice(EVENT.as_bytes());
    body.extend_from_slice(br#"","channel":""#);
    client::push_user_id(body, user);
    body.extend_from_slice(br#"","data":""#);
    body.extend_from_slice(text);
    body.extend_from_slice(br#""}"#);
    let route = format!("/apps/{}/events", app.id);
    let mut query = Vec::with_capacity(160);
    query.extend_from_slice(b"auth_key=");
    query.extend_from_slice(app.key.as_bytes());
    query.extend_from_slice(b"&auth_timestamp=");
    push_u64(&mut query, timestamp);
    query.extend_from_slice(b"&auth_version=1.0&body_md5=");
    query.extend_from_slice(hex::encode(Md5::digest(&body[..])).as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(app.secret.as_bytes()).expect("any key length");
    mac.update(b"POST\n");
    mac.update(route.as_bytes());
    mac.update(b"\n");
    mac.update(&query);
    let signature = hex::encode(mac.finalize().into_bytes());
    path.extend_from_slice(route.as_bytes());
    path.push(b'?');
    path.extend_from_slice(&query);
    path.extend_from_slice(b"&auth_signature=");
    path.extend_from_slice(signature.as_bytes());
    Ok(())
}

/// Seconds since the Unix epoch: a signed request's `auth_timestamp`.
pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a received frame is the server's `pusher:ping`.
pub(crate) fn is_ping(text: &[u8]) -> bool {
    text.windows(13).any(|w| w == b"\"pusher:ping\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_signed_as_pusher_documents() {
        // Pusher's worked example: this app, this timestamp and this body sign to this.
        let _ = configure("3:278d425bdf160c739803:7ad3773142a6692b25b8");
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            hex::encode(Md5::digest(body)),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                     &body_md5=ec365a775a4cd0599faeb73354201b6f";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"7ad3773142a6692b25b8").unwrap();
        mac.update(format!("POST\n/apps/3/events\n{query}").as_bytes());
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        // And a benchmark request carries the same parts in the same order.
        let (mut path, mut body) = (Vec::new(), Vec::new());
        events_request(7, b"lg1 0 7 1 2 ", 1353088179, &mut path, &mut body).unwrap();
        let path = String::from_utf8(path).unwrap();
        assert!(path.starts_with("/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5="), "{path}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["channel"], "u7");
        assert_eq!(body["data"], "lg1 0 7 1 2 ");
    }

    #[test]
    fn pings_are_recognised() {
        assert!(is_ping(br#"{"event":"pusher:ping","data":{}}"#));
        assert!(!is_ping(
            br#"{"event":"m","channel":"u1","data":"lg1 0 1 0 5 "}"#
        ));
    }
}
