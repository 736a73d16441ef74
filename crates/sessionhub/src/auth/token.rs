//! Tokens: JWTs that the application's backend, or its identity provider, signs for a user.
//!
//! Keys come from three places, all checked for every token:
//! - HS256 secrets shared with the backend (several during a rotation);
//! - PEM public keys: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA);
//! - a JWK Set, at an `http(s)` URL or in a file, read again when a token names a `kid` it
//!   lacks, so an identity provider can rotate its keys without sessionhub restarting.
//!
//! A key only ever verifies the algorithm it was made for: an RS256 public key is never
//! taken as an HS256 secret (the classic algorithm confusion), and `alg: none` does not
//! exist here. Besides the signature, `exp` and `nbf` are checked with a configurable
//! leeway, and `iss` and `aud` when they are configured; each failure has its own code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::jwks::Jwks;

/// The claims sessionhub reads from a token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// In a connection token: channels the connection is subscribed to at connect (by the
    /// server, as the API's subscribe would) and that the user may join again later.
    #[serde(default)]
    pub channels: Vec<String>,
    /// In a subscribe token: the one private channel it lets `sub` join. A token with this
    /// claim is only ever a subscribe token, never a connection token.
    #[serde(default)]
    pub channel: Option<String>,
}

/// Why a token was refused. Each maps to a documented HTTP 401 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token came with the request.
    #[error("a token is required: pass ?token=<jwt> or Authorization: Bearer <jwt>")]
    Missing,
    /// The token's `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// An issuer is configured and the token's `iss` is another, or missing.
    #[error("the token's issuer is not accepted here")]
    WrongIssuer,
    /// An audience is configured and the token's `aud` does not name it.
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// The token names a `kid` that no key has, even after reading the JWKS again.
    #[error("the token's key (kid) is unknown")]
    UnknownKey,
    /// Bad signature, an algorithm no key is for, malformed, or missing claims.
    #[error("the token is invalid")]
    Invalid,
    /// A refresh or subscribe token names another user than the connection's.
    #[error("the token is for another user than this connection's")]
    WrongUser,
    /// A subscribe token for another channel, or a connection token (no `channel` claim)
    /// sent to join a private channel.
    #[error("the subscribe token is not for this channel")]
    WrongChannel,
    /// A subscribe token (it has a `channel` claim) used to connect or refresh.
    #[error("a subscribe token (with a channel claim) cannot open or refresh a connection")]
    SubscribeOnly,
    /// A private channel was asked for without a subscribe token.
    #[error("this channel is private: send a subscribe token (\"token\" in the subscribe frame)")]
    Required,
    /// A refresh on a connection that was not opened with a token.
    #[error("this connection was not opened with a token: there is nothing to refresh")]
    NotUsed,
}

impl TokenError {
    /// The stable code in the HTTP error.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
            Self::UnknownKey => "token_unknown_key",
            Self::Invalid => "token_invalid",
            Self::WrongUser => "token_wrong_user",
            Self::WrongChannel => "token_wrong_channel",
            Self::SubscribeOnly => "token_wrong_kind",
            Self::Required => "token_required",
            Self::NotUsed => "token_not_used",
        }
    }

    /// What a genuine token (its signature checked) failed on; `None` for everything that
    /// may just mean "another key": those are [`TokenError::Invalid`] unless a key says more.
    fn from_claims_check(kind: &ErrorKind) -> Option<Self> {
        match kind {
            ErrorKind::ExpiredSignature => Some(Self::Expired),
            ErrorKind::ImmatureSignature => Some(Self::NotYetValid),
            ErrorKind::InvalidIssuer => Some(Self::WrongIssuer),
            ErrorKind::InvalidAudience => Some(Self::WrongAudience),
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Some(Self::WrongIssuer),
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Some(Self::WrongAudience),
            _ => None,
        }
    }
}

/// Where token keys come from and what else a token must satisfy.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// HS256 secrets (empty ones are ignored).
    pub secrets: Vec<String>,
    /// PEM public keys (the text of each file).
    pub public_keys: Vec<String>,
    /// A JWK Set: an `http://` or `https://` URL, or a file path.
    pub jwks: Option<String>,
    /// Accepted issuers (`iss`); empty: any.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud` must name one); empty: tokens must not name any.
    pub audiences: Vec<String>,
    /// Slack for `exp` and `nbf`, for clocks that disagree.
    pub leeway: Duration,
    /// The JWKS is read again at most this often, however many unknown `kid`s arrive.
    pub jwks_min_refetch: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            public_keys: Vec::new(),
            jwks: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::ZERO,
            jwks_min_refetch: Duration::from_secs(30),
        }
    }
}

impl TokenConfig {
    /// Only HS256 `secrets`, as before keys could come from elsewhere.
    pub fn secrets<I: IntoIterator<Item = S>, S: AsRef<str>>(secrets: I) -> Self {
        Self {
            secrets: secrets.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            ..Self::default()
        }
    }
}

/// A key setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    /// A PEM that is not an RSA, EC P-256 or Ed25519 public key.
    #[error("public key {index}: not an RSA, EC P-256 or Ed25519 public key in PEM")]
    PublicKey {
        /// Its position among the configured keys, from 1.
        index: usize,
    },
    /// A JWKS source that is neither an `http(s)` URL nor a file path.
    #[error("the JWKS source {0:?} is empty")]
    Jwks(String),
}

/// One key and the one algorithm it verifies.
#[derive(Clone)]
pub(super) struct Key {
    /// The `kid` a JWKS gave it; secrets and PEM files have none and may verify any `kid`.
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

/// Verifies tokens (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<[Key]>,
    jwks: Option<Arc<Jwks>>,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier for `config`; `None` if it names no key at all (no secret, no PEM, no
    /// JWKS). A JWKS URL is not fetched here but on the first token.
    pub fn new(config: &TokenConfig) -> Result<Option<Self>, TokenConfigError> {
        let mut keys: Vec<Key> = config
            .secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
            })
            .collect();
        for (index, pem) in config.public_keys.iter().enumerate() {
            keys.push(
                from_pem(pem.as_bytes()).ok_or(TokenConfigError::PublicKey { index: index + 1 })?,
            );
        }
        let jwks = match config.jwks.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(TokenConfigError::Jwks(String::new())),
            Some(source) => Some(Arc::new(Jwks::new(source, config.jwks_min_refetch))),
        };
        if keys.is_empty() && jwks.is_none() {
            return Ok(None);
        }
        // The algorithm is set per key when verifying; this one is a placeholder.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !config.issuers.is_empty() {
            validation.set_issuer(&config.issuers);
            required.push("iss");
        }
        if config.audiences.is_empty() {
            // A token for some audience is not for us unless we say who we are.
            validation.validate_aud = true;
        } else {
            validation.set_audience(&config.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self {
            keys: keys.into(),
            jwks,
            validation,
        }))
    }

    /// A verifier of HS256 tokens signed with any of `secrets`; `None` if there is none.
    pub fn hs256<I: IntoIterator<Item = S>, S: AsRef<str>>(secrets: I) -> Option<Self> {
        Self::new(&TokenConfig::secrets(secrets)).expect("secrets are always usable")
    }

    /// The claims of `token` if one of the keys signed it and its claims hold.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let kid = header.kid.as_deref();
        let fits = |k: &Key| {
            k.algorithm == header.alg
                && (k.kid.is_none() || kid.is_none() || k.kid.as_deref() == kid)
        };
        let mut candidates: Vec<Key> = self.keys.iter().filter(|k| fits(k)).cloned().collect();
        if let Some(jwks) = &self.jwks {
            let mut from_jwks = jwks.keys(false).await;
            // An unknown kid may be a key the provider has just rotated in.
            let unknown =
                kid.is_some_and(|kid| !from_jwks.iter().any(|k| k.kid.as_deref() == Some(kid)));
            if unknown {
                from_jwks = jwks.keys(true).await;
                if kid.is_some_and(|kid| !from_jwks.iter().any(|k| k.kid.as_deref() == Some(kid)))
                    && candidates.is_empty()
                {
                    return Err(TokenError::UnknownKey);
                }
            }
            candidates.extend(from_jwks.iter().filter(|k| fits(k)).cloned());
        }
        let mut error = TokenError::Invalid;
        for key in &candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                // Only a valid signature gets this far: the token is genuine, its claims
                // are not, which says more than another key's "bad signature".
                Err(e) => {
                    if let Some(specific) = TokenError::from_claims_check(e.kind()) {
                        error = specific;
                    }
                }
            }
        }
        Err(error)
    }

    /// The claims of a subscribe token that lets `user` join `channel`: verified as
    /// [`TokenVerifier::verify`] does, then its `sub` must be `user` and its `channel`
    /// claim `channel`.
    pub async fn verify_subscribe(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token).await?;
        if claims.sub != user {
            return Err(TokenError::WrongUser);
        }
        if claims.channel.as_deref() != Some(channel) {
            return Err(TokenError::WrongChannel);
        }
        Ok(claims)
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks.is_some())
            .finish_non_exhaustive()
    }
}

/// The key in `pem` with the algorithm its type implies, if it is one we verify with.
fn from_pem(pem: &[u8]) -> Option<Key> {
    let typed = [
        (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
        (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem)),
    ];
    typed.into_iter().find_map(|(algorithm, key)| {
        Some(Key {
            kid: None,
            algorithm,
            key: key.ok()?,
        })
    })
}

/// Where a JWKS comes from.
#[derive(Debug, Clone)]
pub(super) enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl JwksSource {
    pub(super) fn parse(source: &str) -> Self {
        if source.starts_with("http://") || source.starts_with("https://") {
            Self::Url(source.to_owned())
        } else {
            Self::File(PathBuf::from(source))
        }
    }
}
