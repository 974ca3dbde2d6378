//! The files in the `--cert-cache` directory.
//!
//! - `<domain>`: the certificate's private key, then the full chain (leaf
//!   first), all PEM. This is the layout of Go's `autocert.DirCache`, so a
//!   relay that replaces the Go relay on the same machine serves the Go
//!   relay's cached certificate at once, and the other way round.
//! - `acme_account.json`: the ACME account (its URL, its PKCS#8 key and
//!   the directory it belongs to), as `instant-acme` serializes it. An
//!   account of another `--acme-directory` is not used (a new one is made).
//!
//! Every file is written `0600` to a temporary name and renamed into
//! place, so a crash never leaves half a key behind.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::AccountCredentials;
use rustls::sign::CertifiedKey;

use super::AcmeError;
use crate::tls::pem;

/// Name of the account file.
const ACCOUNT_FILE: &str = "acme_account.json";

/// A certificate read from the cache or just issued.
#[derive(Clone, Debug)]
pub struct Cached {
    /// Chain and key, ready to serve.
    pub certified: Arc<CertifiedKey>,
    /// What the leaf says about itself.
    pub info: CertInfo,
}

/// The facts of a leaf certificate that the ACME thread acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The DNS names of its subjectAltName extension.
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// Reads validity and names from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|error| error.to_string())?;
        let validity = cert.validity();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(name) = name {
                    dns_names.push(name.to_string());
                }
            }
        }
        Ok(CertInfo {
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            dns_names,
        })
    }

    /// Whether the certificate names `domain` (ASCII case ignored).
    pub fn covers(&self, domain: &str) -> bool {
        self.dns_names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(domain))
    }

    /// Whether it is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

/// The certificate file of `domain`.
pub fn certificate_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(domain.to_ascii_lowercase())
}

/// The account file.
pub fn account_path(dir: &Path) -> PathBuf {
    dir.join(ACCOUNT_FILE)
}

/// The cached certificate of `domain`, if there is a file. A file that
/// cannot be used (bad PEM, key not the leaf's, another domain) is an
/// error; whether it is still valid is for the caller to decide.
pub fn load_certificate(dir: &Path, domain: &str) -> Result<Option<Cached>, AcmeError> {
    let path = certificate_path(dir, domain);
    let Some(text) = read_if_present(&path)? else {
        return Ok(None);
    };
    let bad = |reason: String| AcmeError::BadCache {
        path: path.clone(),
        reason,
    };
    let certified = pem::from_pem(&text, &text).map_err(|error| bad(error.to_string()))?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| bad(e.to_string()))?;
    let info = CertInfo::from_der(leaf).map_err(bad)?;
    if !info.covers(domain) {
        return Err(bad(format!("the certificate does not name {domain}")));
    }
    Ok(Some(Cached { certified, info }))
}

/// The bytes of the cache file at `path`, or `None` if there is none.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match fs::read(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(AcmeError::Cache {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Writes the certificate file of `domain`: key, then chain.
pub fn store_certificate(
    dir: &Path,
    domain: &str,
    key_pem: &str,
    chain_pem: &str,
) -> Result<(), AcmeError> {
    let mut text = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
    text.push_str(key_pem);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(chain_pem);
    write_private(&certificate_path(dir, domain), text.as_bytes())
}

/// The stored account, if there is one for `directory_url`.
pub fn load_account(
    dir: &Path,
    directory_url: &str,
) -> Result<Option<AccountCredentials>, AcmeError> {
    let path = account_path(dir);
    let Some(text) = read_if_present(&path)? else {
        return Ok(None);
    };
    let bad = |reason: String| AcmeError::BadCache {
        path: path.clone(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if value.get("directory").and_then(|d| d.as_str()) != Some(directory_url) {
        return Ok(None);
    }
    let credentials = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    Ok(Some(credentials))
}

/// Removes the account file (the CA does not know the account any more).
pub fn forget_account(dir: &Path) -> Result<(), AcmeError> {
    let path = account_path(dir);
    match fs::remove_file(&path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(AcmeError::Cache { path, error })
        }
        _ => Ok(()),
    }
}

/// Writes the account file.
pub fn store_account(dir: &Path, credentials: &AccountCredentials) -> Result<(), AcmeError> {
    let path = account_path(dir);
    let text = serde_json::to_vec_pretty(credentials).map_err(|error| AcmeError::BadCache {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    write_private(&path, &text)
}

/// Writes `bytes` to `path` with mode 0600, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> io::Result<()> {
        // A leftover from a crash may have other permissions: start anew.
        match fs::remove_file(&temporary) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|error| {
        let _ = fs::remove_file(&temporary);
        AcmeError::Cache {
            path: path.to_owned(),
            error,
        }
    })
}
