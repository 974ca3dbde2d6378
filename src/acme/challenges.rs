//! The challenge responses the ACME thread publishes for the loop to serve
//! while the CA validates the domain.
//!
//! - HTTP-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` on
//!   the `--http-listen` listener answers the key authorization as
//!   `text/plain`; the loop calls [`Challenges::http01_response`] with the
//!   request path (every other request there gets 404).
//! - TLS-ALPN-01 (RFC 8737): a handshake offering only ALPN `acme-tls/1`
//!   for the domain gets a self-signed certificate carrying the SHA-256 of
//!   the key authorization in its critical `acmeIdentifier` extension;
//!   `tls::CertResolver` looks it up with [`Challenges::tls_alpn01`].
//!
//! Shared memory rather than messages: the ACME thread must not tell the
//! CA "ready" before the loop can answer, and an insert into this store is
//! visible to the loop the moment it returns, with no hand-shake between
//! the threads. The loop holds the mutex for one map lookup, only for
//! validation requests (a handful per certificate), never on the data
//! path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeError;

/// The path prefix of HTTP-01 requests.
pub const HTTP01_PREFIX: &str = crate::http::ACME_CHALLENGE_PREFIX;

/// Challenge responses being served now.
#[derive(Debug, Default)]
pub struct Challenges {
    inner: Mutex<Published>,
}

#[derive(Debug, Default)]
struct Published {
    /// HTTP-01: token → key authorization.
    http01: HashMap<String, String>,
    /// TLS-ALPN-01: lowercase domain → challenge certificate.
    tls_alpn01: HashMap<String, Arc<CertifiedKey>>,
}

impl Challenges {
    /// The body to answer for an HTTP-01 request path, if it asks for a
    /// published token (the query string, if any, is ignored).
    pub fn http01_response(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.lock().http01.get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for the SNI name `domain`, if published.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let domain = domain.to_ascii_lowercase();
        self.lock().tls_alpn01.get(&domain).cloned()
    }

    /// Number of responses published (0 when no validation is running).
    pub fn len(&self) -> usize {
        let published = self.lock();
        published.http01.len() + published.tls_alpn01.len()
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves `key_authorization` for `token` (the ACME thread calls the
    /// `publish_*`/`withdraw_*` methods; the loop only looks up).
    pub fn publish_http01(&self, token: &str, key_authorization: &str) {
        let token = token.to_owned();
        let body = key_authorization.to_owned();
        self.lock().http01.insert(token, body);
    }

    /// Stops serving `token`.
    pub fn withdraw_http01(&self, token: &str) {
        self.lock().http01.remove(token);
    }

    /// Serves `certified` to TLS-ALPN-01 validation of `domain`.
    pub fn publish_tls_alpn01(&self, domain: &str, certified: Arc<CertifiedKey>) {
        let domain = domain.to_ascii_lowercase();
        self.lock().tls_alpn01.insert(domain, certified);
    }

    /// Stops serving validation of `domain`.
    pub fn withdraw_tls_alpn01(&self, domain: &str) {
        self.lock().tls_alpn01.remove(&domain.to_ascii_lowercase());
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The self-signed TLS-ALPN-01 certificate for `domain` whose
/// `acmeIdentifier` extension holds `digest`, the SHA-256 of the key
/// authorization (RFC 8737 §3).
pub fn tls_alpn01_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate
    // with webpki, which refuses the unknown critical extension. rcgen
    // made the pair, so it matches.
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| AcmeError::Certificate(crate::tls::LoadError::Key(error)))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_published_tokens_only() {
        let challenges = Challenges::default();
        challenges.publish_http01("tok_en-1", "tok_en-1.thumb");
        let path = "/.well-known/acme-challenge/tok_en-1";
        assert_eq!(
            challenges.http01_response(path).as_deref(),
            Some("tok_en-1.thumb")
        );
        let with_query = format!("{path}?x=1");
        assert!(challenges.http01_response(&with_query).is_some());
        assert_eq!(
            challenges.http01_response("/.well-known/acme-challenge/other"),
            None
        );
        assert_eq!(challenges.http01_response("/tok_en-1"), None);
        assert_eq!(
            challenges.http01_response("/.well-known/acme-challenge/"),
            None
        );
        challenges.withdraw_http01("tok_en-1");
        assert_eq!(challenges.http01_response(path), None);
        assert!(challenges.is_empty());
    }

    #[test]
    fn tls_alpn01_certificates_are_found_by_name_in_any_case() {
        let challenges = Challenges::default();
        let cert = tls_alpn01_certificate("relay.example", &[7; 32]).unwrap();
        challenges.publish_tls_alpn01("Relay.Example", cert);
        assert!(challenges.tls_alpn01("RELAY.example").is_some());
        assert!(challenges.tls_alpn01("other.example").is_none());
        challenges.withdraw_tls_alpn01("relay.example");
        assert!(challenges.is_empty());
    }

    #[test]
    fn tls_alpn01_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [0xab; 32];
        let cert = tls_alpn01_certificate("relay.example", &digest).unwrap();
        let der = cert.end_entity_cert().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6 .1 .5 .5 .7 .1 .31);
        let extension = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier extension");
        assert!(extension.critical);
        // An OCTET STRING of the 32 digest bytes.
        assert_eq!(extension.value, [&[0x04, 32][..], &digest[..]].concat());
    }
}
