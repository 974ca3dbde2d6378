//! Certificates and keys from PEM: the `--tls-cert`/`--tls-key` files and
//! the ACME cache's certificate file.
//!
//! A certificate file holds the full chain, leaf first, then the
//! intermediates (served as they are, so a client that trusts only the
//! root can verify the leaf). A key file holds one private key: PKCS#8
//! (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`);
//! ECDSA P-256/P-384, Ed25519 and RSA keys are accepted. The key must
//! belong to the leaf: a mismatched pair is refused here, not discovered
//! in a failing handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::provider;

/// Why a certificate and key could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The error of the read.
        error: std::io::Error,
    },
    /// No `CERTIFICATE` block, or one that is not valid base64.
    NoCertificate(String),
    /// No private-key block, or one that is not valid base64.
    NoPrivateKey(String),
    /// The key's type is not supported, or it is not the leaf's key.
    Key(rustls::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            LoadError::NoCertificate(detail) => write!(f, "no certificate: {detail}"),
            LoadError::NoPrivateKey(detail) => write!(f, "no private key: {detail}"),
            LoadError::Key(rustls::Error::InconsistentKeys(_)) => {
                write!(f, "the private key does not belong to the certificate")
            }
            LoadError::Key(error) => write!(f, "unusable private key: {error}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads a certificate chain file and a key file.
pub fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, LoadError> {
    let chain_pem = read(cert)?;
    let key_pem = read(key)?;
    from_pem(&chain_pem, &key_pem)
}

/// Builds a certificate from PEM text: every `CERTIFICATE` block of
/// `chain_pem` in order, and the first private key of `key_pem` (the two
/// may be the same text, as in the ACME cache file).
pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, LoadError> {
    let chain = chain_from_pem(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| LoadError::NoPrivateKey(error.to_string()))?;
    from_der(chain, key)
}

/// The `CERTIFICATE` blocks of `pem`, in order; at least one.
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| LoadError::NoCertificate(error.to_string()))?;
    if chain.is_empty() {
        return Err(LoadError::NoCertificate("no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// Pairs a DER chain with a DER key, checking that the key is the leaf's.
pub fn from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, LoadError> {
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(LoadError::Key)?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })
}
