//! What can go wrong in the ACME thread. Every error ends one attempt;
//! the thread logs it (`acme_order_failed reason=…`) and backs off.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::ChallengeKind;
use crate::tls::LoadError;

/// One failed step of getting a certificate.
#[derive(Debug)]
pub enum AcmeError {
    /// The ACME server or the HTTP exchange with it failed.
    Acme(instant_acme::Error),
    /// The CA did not validate the domain (its reason).
    Validation(String),
    /// The CA offered no challenge of the kind this relay can answer.
    NoChallenge(ChallengeKind),
    /// A key, CSR or challenge certificate could not be generated.
    Generate(rcgen::Error),
    /// The issued chain and key cannot be served.
    Certificate(LoadError),
    /// Reading or writing a cache file failed.
    Cache {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// A cache file is there but cannot be used.
    BadCache {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl AcmeError {
    /// Whether the CA refused because of a rate limit (then the thread
    /// waits at least `schedule::RATE_LIMITED_WAIT`).
    pub fn is_rate_limited(&self) -> bool {
        match self {
            AcmeError::Acme(instant_acme::Error::Api(problem)) => {
                problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
            }
            _ => false,
        }
    }
}

impl AcmeError {
    /// Whether the CA no longer knows the stored account (a CA that lost
    /// its state, a deactivated account): the thread then forgets it and
    /// creates a new one for the next attempt.
    pub fn is_account_gone(&self) -> bool {
        match self {
            AcmeError::Acme(instant_acme::Error::Api(problem)) => {
                problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
            }
            _ => false,
        }
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::Acme(error) => write!(f, "ACME: {error}"),
            AcmeError::Validation(reason) => write!(f, "validation failed: {reason}"),
            AcmeError::NoChallenge(kind) => {
                write!(f, "the CA offers no {} challenge", kind.as_str())
            }
            AcmeError::Generate(error) => write!(f, "key generation: {error}"),
            AcmeError::Certificate(error) => write!(f, "issued certificate: {error}"),
            AcmeError::Cache { path, error } => write!(f, "{}: {error}", path.display()),
            AcmeError::BadCache { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for AcmeError {}

impl From<instant_acme::Error> for AcmeError {
    fn from(error: instant_acme::Error) -> Self {
        AcmeError::Acme(error)
    }
}

impl From<rcgen::Error> for AcmeError {
    fn from(error: rcgen::Error) -> Self {
        AcmeError::Generate(error)
    }
}

impl From<LoadError> for AcmeError {
    fn from(error: LoadError) -> Self {
        AcmeError::Certificate(error)
    }
}
