//! A JWK Set, fetched (or read from a file) when first needed, kept, and read again when a
//! token names a key it lacks (at most every `min_refetch`) or when it is older than
//! [`MAX_AGE`], so keys the provider removed stop verifying without a restart.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout};

use super::token::{JwksSource, Key};

/// Keys older than this are read again before use.
const MAX_AGE: Duration = Duration::from_secs(600);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A larger JWKS is refused: real ones hold a handful of keys.
const MAX_BYTES: usize = 1 << 20;

/// A JWK Set and when it was last read.
pub(super) struct Jwks {
    source: JwksSource,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    min_refetch: Duration,
    /// Held while reading, so that a burst of tokens with a new `kid` reads the set once.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<Key>>,
    /// When the last read was tried, whether it worked or not.
    tried: Option<Instant>,
    /// When the keys were last read successfully.
    read: Option<Instant>,
}

impl Jwks {
    pub(super) fn new(source: &str, min_refetch: Duration) -> Self {
        let client = crate::http_client::pooled();
        Self {
            source: JwksSource::parse(source),
            client,
            min_refetch,
            state: Mutex::new(State::default()),
        }
    }

    /// The keys; read again first if they are stale, or if `unknown_kid` and the last read
    /// is at least `min_refetch` old. A failed read keeps the keys there were.
    pub(super) async fn keys(&self, unknown_kid: bool) -> Arc<Vec<Key>> {
        let mut state = self.state.lock().await;
        let stale = state.read.is_none_or(|at| at.elapsed() >= MAX_AGE);
        let may_retry = state
            .tried
            .is_none_or(|at| at.elapsed() >= self.min_refetch);
        if (stale || unknown_kid) && may_retry {
            state.tried = Some(Instant::now());
            match self.read().await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "token keys read from the JWKS");
                    state.keys = Arc::new(keys);
                    state.read = state.tried;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the JWKS; keeping the keys read before")
                }
            }
        }
        state.keys.clone()
    }

    async fn read(&self) -> Result<Vec<Key>, String> {
        let body = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            JwksSource::Url(url) => self.fetch(url).await?,
        };
        if body.len() > MAX_BYTES {
            return Err(format!("over {MAX_BYTES} bytes"));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK Set: {e}"))?;
        Ok(set.keys.iter().filter_map(key).collect())
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let fetch = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            Ok(body.to_bytes().to_vec())
        };
        timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// The signature key in `jwk`, with the one algorithm it verifies: the JWK's `alg` if it
/// names one we take, else the usual one for its type. Encryption keys, symmetric keys and
/// keys without a `kid` are left out (a JWKS key is chosen by `kid`).
fn key(jwk: &Jwk) -> Option<Key> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let kid = jwk.common.key_id.clone()?;
    let usual = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
            Algorithm::ES384
        }
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    };
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        .filter(|a| a.family() == usual.family())
        .unwrap_or(usual);
    let key = DecodingKey::from_jwk(jwk)
        .inspect_err(|e| tracing::warn!(kid, error = %e, "skipping a JWKS key that does not parse"))
        .ok()?;
    Some(Key {
        kid: Some(kid),
        algorithm,
        key,
    })
}
