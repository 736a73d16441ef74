//! Token verification: every algorithm and source of keys, each claim check with its own
//! error, and a JWK Set that rotates (from a file, and over HTTP from a real server that
//! counts its fetches).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use sessionhub::auth::{TokenConfig, TokenError, TokenVerifier};
use sessionhub_testkit::jwt::{self, TestKey};

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": jwt::now_plus(60)})
}

fn verifier(config: TokenConfig) -> TokenVerifier {
    TokenVerifier::new(&config)
        .expect("the config is usable")
        .expect("it names a key")
}

fn pem_keys(keys: &[TestKey]) -> TokenConfig {
    TokenConfig {
        public_keys: keys.iter().map(|k| k.public_pem()).collect(),
        ..TokenConfig::default()
    }
}

#[tokio::test]
async fn pem_keys_verify_rs256_es256_and_eddsa_and_nothing_else() {
    let verifier = verifier(pem_keys(&[TestKey::Rsa1, TestKey::Ec1, TestKey::Ed1]));
    for key in [TestKey::Rsa1, TestKey::Ec1, TestKey::Ed1] {
        let claims = verifier.verify(&key.sign(None, &claims("ann"))).await;
        assert_eq!(claims.expect("{key:?}").sub, "ann");
    }
    let unconfigured = TestKey::Rsa2.sign(None, &claims("ann"));
    assert_eq!(
        verifier.verify(&unconfigured).await.unwrap_err(),
        TokenError::Invalid
    );
    let tampered = {
        let token = TestKey::Ec1.sign(None, &claims("ann"));
        let forged = jwt::hs256("x", &claims("root"));
        let payload = forged.split('.').nth(1).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = payload;
        parts.join(".")
    };
    assert_eq!(
        verifier.verify(&tampered).await.unwrap_err(),
        TokenError::Invalid
    );
    assert_eq!(
        verifier.verify("not.a.jwt").await.unwrap_err(),
        TokenError::Invalid
    );
}

/// The classic confusion: an HS256 token whose "secret" is the server's RSA public key
/// text. A key verifies only the algorithm it was made for.
#[tokio::test]
async fn a_public_key_is_never_taken_for_an_hs256_secret() {
    let verifier = verifier(pem_keys(&[TestKey::Rsa1]));
    let forged = jwt::hs256(&TestKey::Rsa1.public_pem(), &claims("root"));
    assert_eq!(
        verifier.verify(&forged).await.unwrap_err(),
        TokenError::Invalid
    );
    let secrets = TokenVerifier::hs256(["s3cret"]).unwrap();
    assert_eq!(
        secrets
            .verify(&jwt::hs256("s3cret", &claims("b")))
            .await
            .unwrap()
            .sub,
        "b"
    );
    assert!(TokenVerifier::hs256([""]).is_none(), "no key, no verifier");
}

#[tokio::test]
async fn each_claim_check_has_its_own_error() {
    let config = TokenConfig {
        issuers: vec!["https://id.example".into()],
        audiences: vec!["sessionhub".into()],
        ..pem_keys(&[TestKey::Ed1])
    };
    let verifier = verifier(config.clone());
    let sign = |claims: Value| TestKey::Ed1.sign(None, &claims);
    let good = json!({"sub": "c", "exp": jwt::now_plus(60), "iss": "https://id.example", "aud": "sessionhub"});
    assert_eq!(verifier.verify(&sign(good.clone())).await.unwrap().sub, "c");
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        sign(claims)
    };
    let without = |field: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(field);
        sign(claims)
    };
    let cases = [
        (with("exp", json!(jwt::now_plus(-10))), TokenError::Expired),
        (
            with("nbf", json!(jwt::now_plus(30))),
            TokenError::NotYetValid,
        ),
        (
            with("iss", json!("https://evil.example")),
            TokenError::WrongIssuer,
        ),
        (without("iss"), TokenError::WrongIssuer),
        (with("aud", json!("another-app")), TokenError::WrongAudience),
        (without("aud"), TokenError::WrongAudience),
        (without("sub"), TokenError::Invalid),
    ];
    for (token, expected) in cases {
        assert_eq!(verifier.verify(&token).await.unwrap_err(), expected);
    }
    assert_eq!(
        verifier
            .verify(&with("aud", json!(["x", "sessionhub"])))
            .await
            .unwrap()
            .sub,
        "c",
        "one of several audiences is enough"
    );

    let lenient = self::verifier(TokenConfig {
        leeway: Duration::from_secs(60),
        ..config
    });
    assert!(
        lenient
            .verify(&with("exp", json!(jwt::now_plus(-10))))
            .await
            .is_ok()
    );
    assert!(
        lenient
            .verify(&with("nbf", json!(jwt::now_plus(30))))
            .await
            .is_ok()
    );

    // Without a configured audience, a token meant for some audience is not for us.
    let plain = self::verifier(pem_keys(&[TestKey::Ed1]));
    assert_eq!(
        plain
            .verify(&with("aud", json!("another-app")))
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
}

#[tokio::test]
async fn a_jwks_file_is_read_again_for_an_unknown_kid_but_not_more_often_than_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let write = |keys: &[TestKey]| std::fs::write(&path, jwt::jwks(keys).to_string()).unwrap();
    write(&[TestKey::Rsa1]);
    let config = |min_refetch| TokenConfig {
        jwks: Some(path.display().to_string()),
        jwks_min_refetch: min_refetch,
        ..TokenConfig::default()
    };
    let eager = verifier(config(Duration::ZERO));
    let patient = verifier(config(Duration::from_secs(3600)));
    let old = TestKey::Rsa1.sign(Some("rsa-1"), &claims("d"));
    let new = TestKey::Rsa2.sign(Some("rsa-2"), &claims("d"));
    for v in [&eager, &patient] {
        assert!(v.verify(&old).await.is_ok());
        assert_eq!(v.verify(&new).await.unwrap_err(), TokenError::UnknownKey);
    }
    write(&[TestKey::Rsa1, TestKey::Rsa2]);
    assert!(
        eager.verify(&new).await.is_ok(),
        "rotated in without a restart"
    );
    assert_eq!(
        patient.verify(&new).await.unwrap_err(),
        TokenError::UnknownKey,
        "read again too soon"
    );
    // A kid must match: the right key under another kid is not that key.
    let misnamed = TestKey::Rsa2.sign(Some("rsa-1"), &claims("d"));
    assert_eq!(
        eager.verify(&misnamed).await.unwrap_err(),
        TokenError::Invalid
    );
}

/// A JWKS server whose keys can be swapped, counting its fetches.
#[derive(Clone, Default)]
struct Provider {
    keys: Arc<std::sync::Mutex<Vec<TestKey>>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(State(provider): State<Provider>) -> Json<Value> {
    provider.fetches.fetch_add(1, Ordering::SeqCst);
    Json(jwt::jwks(&provider.keys.lock().unwrap()))
}

#[tokio::test]
async fn a_jwks_url_is_fetched_once_for_a_burst_of_tokens_with_a_new_kid() {
    let provider = Provider::default();
    *provider.keys.lock().unwrap() = vec![TestKey::Ec1];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/jwks.json", get(serve_jwks))
        .with_state(provider.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let verifier = verifier(TokenConfig {
        jwks: Some(url),
        jwks_min_refetch: Duration::from_millis(300),
        ..TokenConfig::default()
    });
    let ec = TestKey::Ec1.sign(Some("ec-1"), &claims("e"));
    assert!(verifier.verify(&ec).await.is_ok());
    assert!(verifier.verify(&ec).await.is_ok());
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        1,
        "kept, not fetched per token"
    );

    // The provider rotates an Ed25519 key in; a burst of tokens signed with it arrives.
    tokio::time::sleep(Duration::from_millis(350)).await;
    *provider.keys.lock().unwrap() = vec![TestKey::Ec1, TestKey::Ed1];
    let ed = TestKey::Ed1.sign(Some("ed-1"), &claims("f"));
    let burst = (0..20).map(|_| {
        let (verifier, ed) = (verifier.clone(), ed.clone());
        tokio::spawn(async move { verifier.verify(&ed).await })
    });
    for outcome in futures_util::future::join_all(burst).await {
        assert_eq!(outcome.unwrap().unwrap().sub, "f");
    }
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        2,
        "one fetch for the burst"
    );

    // Unknown kids cannot make it fetch more often than allowed.
    let stranger = TestKey::Rsa2.sign(Some("nobody"), &claims("g"));
    for _ in 0..5 {
        assert_eq!(
            verifier.verify(&stranger).await.unwrap_err(),
            TokenError::UnknownKey
        );
    }
    assert!(provider.fetches.load(Ordering::SeqCst) <= 3);
}

#[tokio::test]
async fn bad_key_settings_are_refused_up_front() {
    let not_a_key = TokenConfig {
        public_keys: vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()],
        ..TokenConfig::default()
    };
    let error = TokenVerifier::new(&not_a_key).unwrap_err();
    assert!(error.to_string().contains("public key 1"), "{error}");
    assert!(
        TokenVerifier::new(&TokenConfig::default())
            .unwrap()
            .is_none()
    );
}
