//! Tokens on a live connection, for both transports: a `refresh` that replaces the
//! connection's token (and so moves its expiry), and the subscribe tokens that private
//! channels (`--private-channels`) need. What a token is and how it is verified is
//! [`crate::auth`]'s; this module decides what a token lets a connection do.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::admission::{Credentials, connection_token, expires_in};
use super::state::Gateway;
use crate::auth::TokenError;
use crate::protocol::UserId;

/// Replaces the connection's token with `token`, which must be a valid connection token for
/// the same user; on success `credentials` end at its `exp` and carry its channels, and the
/// seconds left are returned. On failure the credentials are unchanged: the connection
/// still closes at the old token's expiry, so a refused refresh gains the client nothing.
pub(super) async fn refresh(
    user: &UserId,
    token: &str,
    credentials: &mut Credentials,
    gateway: &Gateway,
) -> Result<u64, TokenError> {
    if !matches!(credentials, Credentials::Token { .. }) {
        return Err(TokenError::NotUsed);
    }
    // Boxed, as below: a verification may fetch a JWKS, a future of kilobytes, which would
    // otherwise be inlined in every socket's task for its whole life (measured: +2.1 KiB per
    // idle socket, 6.2 -> 8.3 KiB at 19 000 sockets).
    let refreshed = Box::pin(connection_token(gateway, Some(token))).await;
    let outcome = match &refreshed {
        Ok((sub, _)) if sub != user => Err(TokenError::WrongUser),
        Ok(_) => Ok(()),
        Err(e) => Err(*e),
    };
    let label = outcome.map_or_else(|e| e.code(), |()| "refreshed");
    metrics::counter!("sessionhub_token_refreshes_total", "outcome" => label).increment(1);
    outcome?;
    let (_, fresh) = refreshed?;
    *credentials = fresh;
    Ok(expires_in(credentials).unwrap_or(0))
}

/// Whether `user` may join the private `channel` with `token`, a subscribe token naming
/// both. Checked on every subscribe, so that a client resubscribing (after a reconnect, or
/// on another node) has to show a token that is still valid.
pub(super) async fn check_subscribe_token(
    user: &UserId,
    channel: &str,
    token: Option<&str>,
    gateway: &Gateway,
) -> Result<(), TokenError> {
    let token = token.ok_or(TokenError::Required)?;
    let security = gateway.security_owned();
    let verifier = security.tokens.as_ref().ok_or(TokenError::Invalid)?;
    let verified = Box::pin(verifier.verify_subscribe(token.trim(), user.as_str(), channel)).await;
    let label = verified.as_ref().map_or_else(|e| e.code(), |_| "accepted");
    metrics::counter!("sessionhub_subscribe_tokens_total", "outcome" => label).increment(1);
    verified.map(|_| ())
}

/// The `channel` claim of `token`, read without verifying it: only to pick, among the
/// subscribe tokens an SSE stream was opened with, the one to verify for each channel.
pub(super) fn claimed_channel(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("channel")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_claim_is_read_only_from_a_jwt_shaped_token() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","channel":"private:1"}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(claimed_channel(&token).as_deref(), Some("private:1"));
        let no_claim = format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(br#"{"sub":"a"}"#));
        assert_eq!(claimed_channel(&no_claim), None);
        assert_eq!(claimed_channel("garbage"), None);
        assert_eq!(claimed_channel("a.!!!.c"), None);
    }
}
