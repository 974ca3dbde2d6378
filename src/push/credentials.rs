//! The Google service-account key that push signs its OAuth assertions
//! with, read from `PYRYCODE_RELAY_FCM_CREDENTIALS`.
//!
//! As in the Go relay, the variable holds the whole JSON key itself (not a
//! path to a file). Unset means push is off. A set value must be a usable
//! key: `type` is `service_account`, `client_email` is present and
//! `private_key` is an RSA key in PEM (PKCS#8, or PKCS#1) that `ring`
//! accepts for signing, so a bad key fails at start rather than at the
//! first wake. `token_uri` defaults to Google's and must pass the
//! [`Endpoint`] rule.
//!
//! Nothing here ever returns, prints or logs the value: every error is a
//! fixed sentence naming at most a field, never quoting it (`serde_json`'s
//! and PEM errors can echo input, so they are dropped, not wrapped).

use std::ffi::OsString;
use std::fmt;
use std::sync::Arc;

use ring::error::KeyRejected;
use ring::signature::RsaKeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::Deserialize;

use super::endpoint::{Endpoint, EndpointError};

/// The environment variable holding the service-account JSON key.
pub const CREDENTIALS_ENV: &str = "PYRYCODE_RELAY_FCM_CREDENTIALS";

/// Google's OAuth token endpoint, used when the key has no `token_uri`.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A parsed, usable service-account key. Its `Debug` shows no secret.
pub struct ServiceAccountKey {
    /// The assertion's issuer (`iss`).
    pub(crate) client_email: String,
    /// The JWT header's `kid`, when the key names itself.
    pub(crate) key_id: Option<String>,
    /// The RSA key that signs assertions (RS256).
    pub(crate) signer: Arc<RsaKeyPair>,
    /// Where assertions are exchanged for access tokens; also their `aud`.
    pub(crate) token_uri: Endpoint,
    /// The key's own Firebase project, unless `--fcm-project` overrides it.
    pub(crate) project_id: Option<String>,
}

/// Why the credentials were refused. The text never contains the value.
#[derive(Clone, Copy, Debug)]
pub enum CredentialsError {
    /// The variable is set but not valid UTF-8.
    NotUnicode,
    /// Not a JSON object whose fields have the expected types.
    NotJson,
    /// `type` is not `service_account`.
    NotServiceAccount,
    /// `client_email` is missing or empty.
    NoClientEmail,
    /// `private_key` is missing or not a PEM private key.
    PrivateKeyNotPem,
    /// `private_key` is a PEM key of another kind (e.g. EC).
    PrivateKeyNotRsa,
    /// `private_key` is an RSA key `ring` will not sign with; `ring`'s
    /// reason is one fixed word (e.g. `TooSmall`).
    PrivateKeyRejected(KeyRejected),
    /// `token_uri` does not pass the endpoint rule.
    TokenUri(EndpointError),
}

/// The fields of a service-account key push reads; others are ignored.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// Reads [`CREDENTIALS_ENV`]: `Ok(None)` when unset (push off), the key
/// when set and usable, else why not (never the value).
pub fn from_env() -> Result<Option<ServiceAccountKey>, CredentialsError> {
    from_value(std::env::var_os(CREDENTIALS_ENV))
}

/// [`from_env`] on a given value of the variable (`None`: unset).
pub fn from_value(value: Option<OsString>) -> Result<Option<ServiceAccountKey>, CredentialsError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let json = value
        .into_string()
        .map_err(|_| CredentialsError::NotUnicode)?;
    ServiceAccountKey::from_json(json.as_bytes()).map(Some)
}

impl ServiceAccountKey {
    /// Parses and checks a service-account JSON key.
    pub fn from_json(json: &[u8]) -> Result<ServiceAccountKey, CredentialsError> {
        let file: KeyFile = serde_json::from_slice(json).map_err(|_| CredentialsError::NotJson)?;
        if file.kind.as_deref() != Some("service_account") {
            return Err(CredentialsError::NotServiceAccount);
        }
        let client_email = file
            .client_email
            .filter(|email| !email.is_empty())
            .ok_or(CredentialsError::NoClientEmail)?;
        let signer = rsa_signer(file.private_key.as_deref().unwrap_or(""))?;
        let token_uri = Endpoint::parse(file.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI))
            .map_err(CredentialsError::TokenUri)?;
        Ok(ServiceAccountKey {
            client_email,
            key_id: file.private_key_id.filter(|id| !id.is_empty()),
            signer: Arc::new(signer),
            token_uri,
            project_id: file.project_id.filter(|id| !id.is_empty()),
        })
    }

    /// The key's own `project_id`, if it has one.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// Where access tokens are fetched (the key's `token_uri`).
    pub fn token_uri(&self) -> &Endpoint {
        &self.token_uri
    }
}

/// The RSA key pair in `pem`: PKCS#8 (`BEGIN PRIVATE KEY`, what Google
/// issues) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
fn rsa_signer(pem: &str) -> Result<RsaKeyPair, CredentialsError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| CredentialsError::PrivateKeyNotPem)?;
    let parsed = match &der {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err(CredentialsError::PrivateKeyNotRsa),
    };
    parsed.map_err(CredentialsError::PrivateKeyRejected)
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CREDENTIALS_ENV} is not a usable service-account key: ")?;
        match self {
            CredentialsError::NotUnicode => f.write_str("not UTF-8")?,
            CredentialsError::NotJson => f.write_str("not a JSON object of string fields")?,
            CredentialsError::NotServiceAccount => f.write_str("type is not service_account")?,
            CredentialsError::NoClientEmail => f.write_str("client_email is missing")?,
            CredentialsError::PrivateKeyNotPem => {
                f.write_str("private_key is missing or not a PEM private key")?
            }
            CredentialsError::PrivateKeyNotRsa => f.write_str("private_key is not an RSA key")?,
            CredentialsError::PrivateKeyRejected(why) => {
                write!(f, "private_key is not a usable RSA key ({why})")?
            }
            CredentialsError::TokenUri(why) => write!(f, "token_uri refused: {why}")?,
        }
        f.write_str(" (value withheld)")
    }
}

impl std::error::Error for CredentialsError {}
