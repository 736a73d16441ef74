//! How a request presents its session (`Cookie`, `X-Auth-Token`), and the header-borne
//! checks beside it: `Origin`/`Host` against the origin policy, and channel rules.
//!
//! Input: lines `Name: value` (split on `\n`; the value is taken byte for byte after `": "`
//! or `":"`). `Cookie`, `X-Auth-Token`, `Origin` and `Host` (any case) become request headers
//! when `HeaderValue::from_bytes` accepts the value; `cookie-name` sets the session cookie's
//! name; `allow` adds an allowed origin; `rule` is a channel rule (`PREFIX=subscribe,publish`).
//! Every value is also tried as a session id, a channel rule and an API key.
#![no_main]

use std::str::FromStr;

use http::header::{COOKIE, HOST, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessionhub::SessionConfig;
use sessionhub::auth::{ApiKeys, ChannelRule, ChannelRules, OriginPolicy};
use sessionhub::session::{SessionId, presented_id};

/// The length of a session id's text: 16 bytes as unpadded base64url.
const ID_LEN: usize = 22;

fuzz_target!(|data: &[u8]| {
    let mut config = SessionConfig::default();
    let mut headers = HeaderMap::new();
    let mut allowed = Vec::new();
    let mut values: Vec<&[u8]> = Vec::new();

    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            values.push(line);
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        values.push(value);
        let header = match name.to_ascii_lowercase().as_slice() {
            b"cookie" => Some(COOKIE),
            b"x-auth-token" => Some(HeaderName::from_static("x-auth-token")),
            b"origin" => Some(ORIGIN),
            b"host" => Some(HOST),
            b"cookie-name" => {
                config.cookie_name = String::from_utf8_lossy(value).into_owned();
                None
            }
            b"allow" => {
                allowed.push(String::from_utf8_lossy(value).into_owned());
                None
            }
            _ => None,
        };
        if let (Some(header), Ok(value)) = (header, HeaderValue::from_bytes(value)) {
            headers.append(header, value);
        }
    }

    // Whatever id comes out is canonical, and came from what the client sent.
    if let Some(id) = presented_id(&headers, &config) {
        check_session_id(&id);
        let carried = headers
            .get_all(COOKIE)
            .iter()
            .chain(headers.get_all(&config.header_name))
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(id.as_str()));
        assert!(
            carried,
            "presented_id returned an id the request does not carry"
        );
    }

    origins(&headers, &allowed);

    for value in &values {
        let text = String::from_utf8_lossy(value);
        if let Ok(id) = SessionId::from_str(&text) {
            check_session_id(&id);
            assert_eq!(id.as_str(), text);
        }
        if let Ok(rule) = ChannelRule::from_str(&text) {
            check_rule(&rule);
        }
        let keys = ApiKeys::new([&*text]);
        assert_eq!(keys.verify(&text), !text.is_empty());
        assert!(!keys.verify(&format!("{text}x")));
    }
});

fn check_session_id(id: &SessionId) {
    let s = id.as_str();
    assert_eq!(s.len(), ID_LEN);
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(s.parse::<SessionId>().ok().as_ref(), Some(id));
}

fn check_rule(rule: &ChannelRule) {
    assert!(
        rule.subscribe || rule.publish,
        "a rule that grants nothing parsed"
    );
    assert!(!rule.prefix.contains('='));
    let mut grants = Vec::new();
    if rule.subscribe {
        grants.push("subscribe");
    }
    if rule.publish {
        grants.push("publish");
    }
    let text = format!("{}={}", rule.prefix, grants.join(","));
    assert_eq!(text.parse::<ChannelRule>().ok().as_ref(), Some(rule));
    let rules = ChannelRules::new(vec![rule.clone()]);
    let channel = format!("{}x", rule.prefix);
    assert_eq!(rules.can_publish(&channel), rule.publish);
    assert_eq!(rules.can_subscribe(&channel), rule.subscribe);
}

fn origins(headers: &HeaderMap, allowed: &[String]) {
    let origin = headers.get(ORIGIN);
    let host = headers.get(HOST);
    let same = OriginPolicy::SameHost;
    let list = OriginPolicy::from_list(allowed);

    // Requests from outside a browser carry no Origin and are not subject to the policy.
    assert!(same.allows(None, host) && list.allows(None, host));
    // `Any` takes every origin that is text; a non-ASCII Origin is no origin a browser sends,
    // and is refused by every policy.
    let text = origin.is_none_or(|o| o.to_str().is_ok());
    assert_eq!(OriginPolicy::Any.allows(origin, host), text);

    let Some(origin) = origin else { return };
    if same.allows(Some(origin), host) {
        // Only an origin naming exactly the Host passes.
        let origin = origin.to_str().unwrap().trim().to_ascii_lowercase();
        let host = host.unwrap().to_str().unwrap().to_ascii_lowercase();
        assert!(
            origin.ends_with(&format!("://{host}")),
            "{origin:?} vs {host:?}"
        );
    }
    match &list {
        OriginPolicy::List(set) => {
            let listed = origin
                .to_str()
                .is_ok_and(|o| set.contains(&o.trim().to_ascii_lowercase()));
            assert_eq!(list.allows(Some(origin), host), listed);
        }
        OriginPolicy::Any => assert_eq!(list.allows(Some(origin), host), text),
        OriginPolicy::SameHost => {}
    }
    // An origin configured exactly as the browser sends it is allowed.
    if let Ok(sent) = origin.to_str() {
        let trimmed = sent.trim();
        if !trimmed.is_empty() && !trimmed.ends_with('/') {
            assert!(OriginPolicy::from_list([sent]).allows(Some(origin), None));
        }
    }
}
