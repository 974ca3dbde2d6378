//! TLS for the `--https-listen` listener, with rustls.
//!
//! - [`server_config`]: the `rustls::ServerConfig` of the listener:
//!   TLS 1.3 and 1.2 only (rustls has no 1.0 or 1.1 at all), ALPN
//!   `http/1.1` (and `acme-tls/1` in ACME mode), certificates chosen by a
//!   [`CertResolver`].
//! - [`resolver`]: the certificate of each handshake (files reloadable on
//!   SIGHUP, or the ACME certificate, or a TLS-ALPN-01 challenge one).
//! - [`pem`]: certificate chains and keys from PEM files.
//! - [`host`]: the `--domain` `Host` check (421).
//!
//! The crypto provider is `ring` ([`provider`]): it builds with nothing
//! but a C compiler (aws-lc-rs needs no cmake any more, but takes four
//! times as long to build and adds 6 MB to the binary), and for the
//! relay's small records it is as fast; its full TLS 1.3 handshake costs
//! about 15 % more CPU than aws-lc-rs's, well inside the budget. Measured
//! numbers are in `docs/TLS.md`.

pub mod host;
pub mod pem;
pub mod resolver;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;

pub use host::host_matches;
pub use pem::LoadError;
pub use resolver::CertResolver;

/// ALPN protocol of HTTP/1.1, the only application protocol served.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The crypto provider of every TLS config of the relay.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS config of a listener whose certificates come from `resolver`.
///
/// One config per listener, shared by all its connections (`Arc`). The
/// resolver stays reachable through the caller's own `Arc`, for SIGHUP
/// reloads and ACME renewals; the config itself never changes.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let acme = resolver.is_acme();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    if acme {
        config.alpn_protocols.push(ALPN_ACME_TLS.to_vec());
    }
    Arc::new(config)
}

/// Whether a finished handshake negotiated `acme-tls/1`: a CA's
/// validation connection, to be closed once the handshake is done
/// (RFC 8737 §3: no application data follows).
pub fn is_acme_validation(alpn_protocol: Option<&[u8]>) -> bool {
    alpn_protocol == Some(ALPN_ACME_TLS)
}
