//! The server API against a real process: its OpenAPI document, and each call's success,
//! bad input (a 4xx with a JSON error) and missing API key (401).

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "api-test-key-0123456789";

/// Every path of the server API, sorted as the document lists them.
const API_PATHS: &[&str] = &[
    "/api/channels/{channel}/history",
    "/api/channels/{channel}/publish",
    "/api/online",
    "/api/users/{id}/logout",
    "/api/users/{id}/sessions",
    "/socket/{id}",
];

/// A node with an API key.
fn keyed_node(extra: &[&str]) -> sessionhub_testkit::Node {
    let mut args = vec!["--api-key", KEY];
    args.extend(extra);
    node(&args)
}

/// `method url` with the API key.
fn call(method: Method, url: String) -> reqwest::RequestBuilder {
    http().request(method, url).bearer_auth(KEY)
}

/// The error code of a JSON error answer, checking its shape.
fn error_code(body: &Value) -> &str {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body["error"]["code"].as_str().expect("an error code")
}

#[tokio::test]
async fn the_document_is_public_current_and_every_operation_in_it_is_routed_behind_the_key() {
    let node = keyed_node(&[]);
    let base = node.http();
    let (status, document) = status_and_json(http().get(format!("{base}/api/openapi.json"))).await;
    assert_eq!(status, 200, "public: tooling reads it without a key");
    assert_eq!(document["openapi"], "3.1.0");
    let checked_in: Value = serde_json::from_str(include_str!("../../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON");
    assert_eq!(
        document, checked_in,
        "docs/openapi.json is what the server serves"
    );

    let paths = document["paths"].as_object().expect("paths");
    let documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        documented, API_PATHS,
        "the document names exactly the server API"
    );
    for (path, item) in paths {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "someone").replace("{channel}", "room")
        );
        for method in item.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = status_and_json(http().request(method.clone(), url.clone())).await;
            assert_eq!(
                (status, error_code(&body)),
                (401, "api_key_required"),
                "{method} {path}"
            );
            let (status, body) = status_and_json(
                http()
                    .request(method.clone(), url.clone())
                    .bearer_auth("nope"),
            )
            .await;
            assert_eq!((status, error_code(&body)), (401, "api_key_invalid"));
            // With the key the handler answers, whatever it thinks of an empty request: not
            // the router's fallbacks.
            let response = call(method.clone(), url.clone()).send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(
                status != 405 && !text.contains("no such route"),
                "{method} {path}: {status} {text}"
            );
        }
    }
    // The routes left out of the document are there too (the demo's on loopback).
    for path in sessionhub::gateway::UNDOCUMENTED_ROUTES {
        let response = http()
            .get(format!("{base}{}", path.replace("{id}", "someone")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(!text.contains("no such route"), "{path}: {status} {text}");
    }
}

#[tokio::test]
async fn history_pages_through_a_channel() {
    let node = keyed_node(&["--history-size", "4"]);
    let base = node.http();
    let history = format!("{base}/api/channels/room:h/history");
    let (status, empty) = status_and_json(call(Method::GET, history.clone())).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        (&empty["offset"], &empty["publications"]),
        (&json!(0), &json!([]))
    );
    for n in 1..=6 {
        let (status, _) = status_and_json(
            call(Method::POST, format!("{base}/api/channels/room:h/publish"))
                .json(&json!({"message": {"n": n}})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, all) = status_and_json(call(Method::GET, history.clone())).await;
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch, empty["epoch"], "the epoch history started is kept");
    assert_eq!(all["offset"], 6);
    assert_eq!(
        all["publications"],
        json!([
            {"offset": 3, "data": {"n": 3}},
            {"offset": 4, "data": {"n": 4}},
            {"offset": 5, "data": {"n": 5}},
            {"offset": 6, "data": {"n": 6}},
        ]),
        "what the history keeps (4), oldest first, data as published"
    );
    let offsets = |page: &Value| -> Vec<u64> {
        page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let cases: [(&[(&str, &str)], &[u64]); 5] = [
        (&[("limit", "2")], &[3, 4]),
        (&[("limit", "2"), ("reverse", "true")], &[6, 5]),
        (&[("since", "4"), ("epoch", &epoch)], &[5, 6]),
        (
            &[
                ("since", "3"),
                ("epoch", &epoch),
                ("reverse", "true"),
                ("limit", "1"),
            ],
            &[6],
        ),
        (&[("limit", "0")], &[]),
    ];
    for (query, expected) in cases {
        let (status, page) = status_and_json(call(Method::GET, history.clone()).query(query)).await;
        assert_eq!(status, 200, "{query:?}: {page}");
        assert_eq!(offsets(&page), expected, "{query:?}");
        assert_eq!(
            (&page["epoch"], &page["offset"]),
            (&json!(epoch), &json!(6))
        );
    }
}

#[tokio::test]
async fn history_refuses_bad_input_with_a_json_error() {
    let node = keyed_node(&[]);
    let base = node.http();
    let history = |channel: &str| format!("{base}/api/channels/{channel}/history");
    let cases: [(String, &[(&str, &str)], u16, &str); 6] = [
        (history("bad%20channel"), &[], 400, "bad_request"),
        (history("session:x"), &[], 400, "bad_request"),
        (history("room"), &[("limit", "many")], 400, "bad_query"),
        (history("room"), &[("limit", "1001")], 400, "bad_request"),
        (history("room"), &[("since", "3")], 400, "bad_request"),
        (
            history("room"),
            &[("since", "0"), ("epoch", "not-it")],
            409,
            "position_unknown",
        ),
    ];
    for (url, query, want_status, want_code) in cases {
        let (status, body) = status_and_json(call(Method::GET, url.clone()).query(query)).await;
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code),
            "{url} {query:?}"
        );
    }
}
