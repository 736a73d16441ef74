//! The one outbound HTTP client setup (JWKS fetches, HTTP hooks, webhooks): hyper's pooled client over
//! rustls with ring, the provider the Redis client uses. Not reqwest: its TLS without a
//! built-in provider would, once cargo unified features, make every reqwest client of the
//! application need one installed first.

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled client for http:// and https:// with the system's root certificates.
pub(crate) fn pooled<B>() -> Client<HttpsConnector<HttpConnector>, B>
where
    B: axum::body::HttpBody + Send + 'static,
    B::Data: Send,
{
    let ring = || std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(ring())
        .unwrap_or_else(|e| {
            // No system roots: only plain http:// will work, which the first request's
            // error then says.
            tracing::warn!(error = %e, "no TLS root certificates for outbound HTTP");
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(ring())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        })
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(tls)
}
