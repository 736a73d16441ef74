//! The server API's OpenAPI 3.1 document, built from the same handlers as the routes.
//!
//! Every route of the server API is registered with `utoipa_axum::routes!`, which takes the
//! path and method from the handler's `#[utoipa::path]` attribute and adds both the route
//! and its operation, so the router and the document cannot drift apart. Routes that are
//! not the server API (sockets, the browser client, health, metrics, the demo) are added to
//! the plain router and listed in [`UNDOCUMENTED_ROUTES`]; a test reads every `.route("…")`
//! in `src/gateway/` and fails on one that is neither documented nor listed there.
//!
//! The document itself (`GET /api/openapi.json`) is public: it describes what exists, not
//! what anyone may do, and API tooling fetches it without credentials.

use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

/// The routes `sessionhub serve` answers that are deliberately left out of the OpenAPI
/// document: they are not the JSON server API (the client transports are specified in
/// `docs/protocol.md`, Pusher's WebSocket endpoint and HTTP API in `docs/pusher.md`).
pub const UNDOCUMENTED_ROUTES: &[&str] = &[
    "/websocket/{id}",
    "/ws",
    "/sse",
    "/sse/publish",
    "/sse/refresh",
    "/sessionhub.js",
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/openapi.json",
    "/",
    "/login",
    "/get-session",
    "/read-session",
    "/invalidate",
    "/app/{key}",
    "/apps/{id}/events",
    "/apps/{id}/batch_events",
    "/apps/{id}/channels",
    "/apps/{id}/channels/{channel}",
    "/apps/{id}/channels/{channel}/users",
    "/apps/{id}/users/{user}/terminate_connections",
    "/users/{user}/terminate_connections",
    "/pusher/auth",
    "/pusher/auth/{key}",
    "/pusher/user-auth",
    "/pusher/user-auth/{key}",
];

/// The parts of the document that are not operations: title, version, the API key
/// scheme, the error body.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessionhub server API",
        description = "Push, history and cluster control for `sessionhub serve`. Every \
            operation needs `Authorization: Bearer <api key>` when API keys are configured \
            (`--api-key`); errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    security(("api_key" = [])),
    modifiers(&ApiKey)
)]
pub(super) struct Base;

/// Adds the bearer API key scheme, and its 401 answer to every operation.
struct ApiKey;

impl Modify for ApiKey {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API key given to `--api-key`"))
                    .build(),
            ),
        );
        let unauthorized = ResponseBuilder::new()
            .description("no API key (`api_key_required`), or not a valid one (`api_key_invalid`)")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build();
        components
            .responses
            .insert("Unauthorized".into(), unauthorized.into());
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.responses.responses.insert(
                    "401".into(),
                    RefOr::Ref(utoipa::openapi::Ref::from_response_name("Unauthorized")),
                );
            }
        }
    }
}

/// The document with every operation's 401 and the version of this build.
pub(super) fn finish(mut document: Document) -> Document {
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    ApiKey.modify(&mut document);
    document
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::UNDOCUMENTED_ROUTES;
    use crate::gateway::Gateway;

    /// Every path given to `.route(` in the gateway's source files (its folders' too),
    /// outside comments and tests.
    fn literal_routes() -> BTreeSet<String> {
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/gateway"
        ))];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        let mut found = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            let not_tests = text.split("#[cfg(test)]").next().unwrap();
            let code: String = not_tests
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect();
            for piece in code.split(".route(").skip(1) {
                let path = piece
                    .trim_start()
                    .strip_prefix('"')
                    .expect("a literal path");
                found.insert(path.split('"').next().unwrap().to_owned());
            }
        }
        found
    }

    #[test]
    fn every_route_is_documented_or_listed_as_not_api_and_never_both() {
        let document = Gateway::openapi();
        let documented: BTreeSet<String> = document.paths.paths.keys().cloned().collect();
        let listed: BTreeSet<String> = UNDOCUMENTED_ROUTES.iter().map(|&r| r.into()).collect();
        let literal = literal_routes();
        let stray: Vec<_> = literal.difference(&listed).collect();
        assert!(
            stray.is_empty(),
            "routes added outside utoipa_axum::routes! and not in UNDOCUMENTED_ROUTES: {stray:?}"
        );
        let stale: Vec<_> = listed.difference(&literal).collect();
        assert!(
            stale.is_empty(),
            "UNDOCUMENTED_ROUTES names routes that no longer exist: {stale:?}"
        );
        let both: Vec<_> = documented.intersection(&listed).collect();
        assert!(
            both.is_empty(),
            "documented and listed as not API: {both:?}"
        );
        assert!(
            documented
                .iter()
                .all(|p| p.starts_with("/api/") || p.starts_with("/socket/")),
            "{documented:?}"
        );
    }

    #[test]
    fn the_checked_in_document_is_the_one_the_code_builds() {
        let built = serde_json::to_string_pretty(&Gateway::openapi()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("SESSIONHUB_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &built).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == built,
            "docs/openapi.json is stale: run SESSIONHUB_WRITE_OPENAPI=1 cargo test -p \
             sessionhub --lib openapi, and commit it"
        );
    }
}
