//! How a Pusher HTTP API request proves it came from an app's backend, exactly as Pusher
//! defines it (HTTP API reference, "Authentication").
//!
//! The query carries `auth_key`, `auth_timestamp` (seconds since the Unix epoch),
//! `auth_version=1.0`, `body_md5` (hex MD5 of the body; required when there is a body) and
//! `auth_signature`: the hex HMAC-SHA256, with the app's secret, of
//! `METHOD\nPATH\nQUERY`, QUERY being every other parameter with its key lowercased,
//! sorted by key, written `key=value` (values decoded, not escaped again) and joined by `&`.
//! The SDKs escape values differently on the wire (the Node SDK does, the Python SDK does
//! not); decoding first makes both sign the same string.
//!
//! [`verify`] checks a request; [`sign`] makes the query of one (for tests and for anyone
//! calling the API from Rust). Both are pure: the clock is an argument.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use super::PusherApp;

/// How far `auth_timestamp` may be from the server's clock, in seconds (Pusher's window).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// The only `auth_version` there is.
pub const AUTH_VERSION: &str = "1.0";

/// The parameters of a request that passed [`verify`], keys lowercased, the `auth_*` and
/// `body_md5` ones included.
pub type Params = BTreeMap<String, String>;

/// Why a request was refused; [`RequestError::status`] is the HTTP status Pusher answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The query is not `key=value&…`, or names a key twice.
    #[error("the query string is malformed: {0}")]
    Query(String),
    /// A required parameter is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `auth_version` is not 1.0.
    #[error("unsupported auth_version {0:?}: only 1.0 exists")]
    Version(String),
    /// `auth_key` is no app's key.
    #[error("unknown auth_key")]
    UnknownKey,
    /// `auth_key` is another app's key.
    #[error("auth_key belongs to another app")]
    OtherAppKey,
    /// `auth_timestamp` is not a number, or not within [`MAX_CLOCK_SKEW_SECS`] of now.
    #[error(
        "timestamp expired: given timestamp ({given}) not within {MAX_CLOCK_SKEW_SECS}s of server time ({now})"
    )]
    Timestamp {
        /// What the request said.
        given: String,
        /// The server's clock, in seconds.
        now: u64,
    },
    /// `body_md5` is not the body's MD5.
    #[error("invalid body_md5: the body's MD5 is {0}")]
    BodyMd5(String),
    /// `auth_signature` does not match.
    #[error(
        "invalid signature: you should have sent HmacSHA256Hex({0:?}, your_secret_key), but you sent {1:?}"
    )]
    Signature(String, String),
}

impl RequestError {
    /// Pusher's status for it: 400 for a malformed query, 403 for another app's key, 401
    /// for every other failure to authenticate.
    pub fn status(&self) -> u16 {
        match self {
            Self::Query(_) => 400,
            Self::OtherAppKey => 403,
            _ => 401,
        }
    }
}

/// The query parameters of `query` (the part after `?`, still escaped), keys lowercased.
pub fn params(query: &str) -> Result<Params, RequestError> {
    let mut params = Params::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let key = key.to_lowercase();
        if params.contains_key(&key) {
            return Err(RequestError::Query(format!("{key} given twice")));
        }
        params.insert(key, value.into_owned());
    }
    Ok(params)
}

/// The string Pusher signs: `METHOD\nPATH\nQUERY`, QUERY sorted, without `auth_signature`.
pub fn string_to_sign(method: &str, path: &str, params: &Params) -> String {
    let query = params
        .iter()
        .filter(|(key, _)| *key != "auth_signature")
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{path}\n{query}", method.to_uppercase())
}

/// The hex MD5 of `body`, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Checks that a request to `app`'s API (`method`, `path` as sent, its escaped `query`
/// and its `body`) was signed with `app`'s secret within [`MAX_CLOCK_SKEW_SECS`] of `now`
/// (seconds since the Unix epoch). `key_owner` finds which app a key belongs to, to tell a
/// key of another app (403) from an unknown one (401).
pub fn verify<'a>(
    app: &PusherApp,
    key_owner: impl FnOnce(&str) -> Option<&'a PusherApp>,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now: u64,
) -> Result<Params, RequestError> {
    let params = params(query)?;
    let get = |key: &'static str| {
        params
            .get(key)
            .map(String::as_str)
            .ok_or(RequestError::Missing(key))
    };
    let key = get("auth_key")?;
    if key != app.key {
        return Err(match key_owner(key) {
            Some(_) => RequestError::OtherAppKey,
            None => RequestError::UnknownKey,
        });
    }
    let version = get("auth_version")?;
    if version != AUTH_VERSION {
        return Err(RequestError::Version(version.to_owned()));
    }
    let timestamp = get("auth_timestamp")?;
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= MAX_CLOCK_SKEW_SECS);
    if !fresh {
        return Err(RequestError::Timestamp {
            given: timestamp.to_owned(),
            now,
        });
    }
    // An empty body needs no body_md5, but one that is given must be right.
    match params.get("body_md5") {
        None if body.is_empty() => {}
        None => return Err(RequestError::Missing("body_md5")),
        Some(given) => {
            let actual = body_md5(body);
            if !given.eq_ignore_ascii_case(&actual) {
                return Err(RequestError::BodyMd5(actual));
            }
        }
    }
    let signature = get("auth_signature")?;
    let signed = string_to_sign(method, path, &params);
    if !app.verify(&signed, signature) {
        return Err(RequestError::Signature(signed, signature.to_owned()));
    }
    Ok(params)
}

/// The query string (escaped, `auth_signature` last) of a request to `app`'s API signed
/// at `timestamp`, with `extra` parameters besides the `auth_*` ones and `body_md5`
/// (present only when `body` is not empty, as the Node SDK does it).
pub fn sign(
    app: &PusherApp,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params: Params = extra
        .iter()
        .map(|(k, v)| (k.to_lowercase(), (*v).to_owned()))
        .collect();
    params.insert("auth_key".into(), app.key.clone());
    params.insert("auth_timestamp".into(), timestamp.to_string());
    params.insert("auth_version".into(), AUTH_VERSION.into());
    if !body.is_empty() {
        params.insert("body_md5".into(), body_md5(body));
    }
    let signature = app.sign(&string_to_sign(method, path, &params));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .append_pair("auth_signature", &signature)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const TIMESTAMP: u64 = 1_353_088_179;

    fn app() -> PusherApp {
        PusherApp::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    fn check(method: &str, query: &str, body: &str, now: u64) -> Result<Params, RequestError> {
        verify(
            &app(),
            |_| None,
            method,
            "/apps/3/events",
            query,
            body.as_bytes(),
            now,
        )
    }

    /// Pusher's "HTTP API reference → Authentication" worked example, every value of it.
    #[test]
    fn pusher_s_documented_example_signs_and_verifies() {
        assert_eq!(
            body_md5(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let query = sign(
            &app(),
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TIMESTAMP,
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        let params = check("POST", &query, BODY, TIMESTAMP + 5).unwrap();
        assert_eq!(params["auth_key"], "278d425bdf160c739803");
    }

    #[test]
    fn escaped_and_unescaped_values_sign_the_same_and_keys_are_lowercased() {
        let path = "/apps/3/channels";
        let extra = [("info", "user_count,subscription_count")];
        let query = sign(&app(), "GET", path, &extra, b"", TIMESTAMP);
        assert!(
            query.contains("info=user_count%2Csubscription_count"),
            "{query}"
        );
        let raw = query.replace("%2C", ",").replace("auth_key", "AUTH_KEY");
        for query in [&query, &raw] {
            let params = verify(&app(), |_| None, "GET", path, query, b"", TIMESTAMP).unwrap();
            assert_eq!(params["info"], "user_count,subscription_count");
        }
    }

    #[test]
    fn each_broken_part_is_refused_with_pusher_s_status() {
        let good = sign(
            &app(),
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TIMESTAMP,
        );
        assert!(check("POST", &good, BODY, TIMESTAMP).is_ok());

        let forged = good.replace("auth_signature=da", "auth_signature=db");
        let e = check("POST", &forged, BODY, TIMESTAMP).unwrap_err();
        assert!(matches!(e, RequestError::Signature(..)), "{e}");
        assert_eq!(e.status(), 401);
        // The same signature does not sign another method or body.
        assert!(check("GET", &good, BODY, TIMESTAMP).is_err());
        let other = BODY.replace("foo", "bar");
        let e = check("POST", &good, &other, TIMESTAMP).unwrap_err();
        assert!(matches!(e, RequestError::BodyMd5(_)), "{e}");

        for now in [TIMESTAMP + 601, TIMESTAMP - 601] {
            let e = check("POST", &good, BODY, now).unwrap_err();
            assert!(matches!(e, RequestError::Timestamp { .. }), "{e}");
            assert_eq!(e.status(), 401);
        }
        assert!(check("POST", &good, BODY, TIMESTAMP + 600).is_ok());

        let e = check("POST", &good.replace("1.0", "2.0"), BODY, TIMESTAMP).unwrap_err();
        assert_eq!(e, RequestError::Version("2.0".into()));
        let no_md5 = sign(&app(), "POST", "/apps/3/events", &[], b"", TIMESTAMP);
        let e = check("POST", &no_md5, BODY, TIMESTAMP).unwrap_err();
        assert_eq!(e, RequestError::Missing("body_md5"));
        let e = check("POST", "auth_key=a&auth_key=b", BODY, TIMESTAMP).unwrap_err();
        assert_eq!(e.status(), 400);
        let e = check("POST", "", BODY, TIMESTAMP).unwrap_err();
        assert_eq!(e, RequestError::Missing("auth_key"));
    }

    #[test]
    fn another_app_s_key_is_forbidden_an_unknown_one_unauthorized() {
        let other = PusherApp::new("4", "other-key", "other-secret");
        let query = sign(
            &other,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TIMESTAMP,
        );
        let owner = |key: &str| (key == other.key).then_some(&other);
        let e = verify(
            &app(),
            owner,
            "POST",
            "/apps/3/events",
            &query,
            BODY.as_bytes(),
            0,
        );
        assert_eq!(e.unwrap_err(), RequestError::OtherAppKey);
        let e = check("POST", &query, BODY, TIMESTAMP).unwrap_err();
        assert_eq!((e.status(), e), (401, RequestError::UnknownKey));
    }
}
