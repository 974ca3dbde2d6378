//! Which certificate a TLS handshake gets: [`CertResolver`], rustls's
//! `ResolvesServerCert` for the relay.
//!
//! It serves one certificate at a time, from one of two sources:
//!
//! - **files** (`--tls-cert`, `--tls-key`): loaded at start;
//!   [`CertResolver::reload`] (on SIGHUP) reads them again and swaps the
//!   certificate in, or keeps the old one and says why;
//! - **ACME** (`--domain` alone): the certificate the ACME thread sends
//!   (from its cache at start, then each renewal), installed by the loop
//!   with [`CertResolver::set_certificate`]. Until the first one arrives,
//!   handshakes fail.
//!
//! In ACME mode it also answers TLS-ALPN-01 validation (RFC 8737): a
//! ClientHello whose only ALPN protocol is `acme-tls/1` gets the challenge
//! certificate that the ACME thread published for that SNI name, if any.
//!
//! `resolve` runs on the loop thread inside every handshake: it takes a
//! read lock for one `Arc` clone (and, for a validation request, a mutex
//! for one map lookup). No I/O, nothing that blocks for long. Connections
//! that already finished their handshake keep the certificate they got;
//! a swap only affects handshakes that start after it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::pem::{self, LoadError};
use super::ALPN_ACME_TLS;
use crate::acme::Challenges;

/// Picks the certificate of each handshake.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    source: Source,
}

/// Where the certificate comes from.
#[derive(Debug)]
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Acme { challenges: Arc<Challenges> },
}

impl CertResolver {
    /// Serves the certificate chain in `cert` with the key in `key`;
    /// fails if they cannot be read or do not belong together.
    pub fn from_files(cert: PathBuf, key: PathBuf) -> Result<Self, LoadError> {
        let certified = pem::load_files(&cert, &key)?;
        Ok(CertResolver {
            current: RwLock::new(Some(certified)),
            source: Source::Files { cert, key },
        })
    }

    /// Serves ACME certificates (none yet if `initial` is `None`) and the
    /// TLS-ALPN-01 challenge certificates published in `challenges`.
    pub fn for_acme(challenges: Arc<Challenges>, initial: Option<Arc<CertifiedKey>>) -> Self {
        CertResolver {
            current: RwLock::new(initial),
            source: Source::Acme { challenges },
        }
    }

    /// Whether this resolver answers `acme-tls/1` (the config then offers
    /// that ALPN protocol).
    pub fn is_acme(&self) -> bool {
        matches!(self.source, Source::Acme { .. })
    }

    /// Reads the certificate files again (SIGHUP). On success the next
    /// handshakes get the new certificate; on error the old one stays.
    /// With an ACME source there is nothing to read: `Ok(false)`.
    pub fn reload(&self) -> Result<bool, LoadError> {
        let Source::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let certified = pem::load_files(cert, key)?;
        self.set_certificate(certified);
        Ok(true)
    }

    /// Serves `certified` from the next handshake on.
    pub fn set_certificate(&self, certified: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(certified);
    }

    /// The certificate served now, if any.
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS-ALPN-01 certificate for this handshake, if it is a
    /// validation request (only `acme-tls/1` offered).
    fn challenge_certificate(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Source::Acme { challenges } = &self.source else {
            return None;
        };
        challenges.tls_alpn01(hello.server_name()?)
    }
}

/// Whether the ClientHello offers ALPN `acme-tls/1` and nothing else:
/// the CA's validation request.
pub fn is_acme_tls_hello(hello: &ClientHello<'_>) -> bool {
    let Some(mut protocols) = hello.alpn() else {
        return false;
    };
    protocols.next() == Some(ALPN_ACME_TLS) && protocols.next().is_none()
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_tls_hello(&hello) {
            // Never the real certificate: RFC 8737 §3 wants the challenge
            // one or a failed handshake.
            return self.challenge_certificate(&hello);
        }
        self.certificate()
    }
}
