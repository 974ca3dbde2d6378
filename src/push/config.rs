//! Push's configuration as `main` builds it at start: the service-account
//! key from the environment, the FCM project (the key's `project_id`
//! unless `--fcm-project` overrides it), the FCM endpoint
//! (`--fcm-endpoint`), and the limits. Every error is a one-line reason
//! for exit 2 that never contains the credentials.

use std::fmt;
use std::time::Duration;

use super::admission::Limits;
use super::credentials::{self, CredentialsError, ServiceAccountKey};
use super::endpoint::{Endpoint, EndpointError};
use super::http::HTTP_TIMEOUT;

/// Worker threads by default. Wakes are human-paced and a call normally
/// takes tens of milliseconds, so a few threads keep up; when FCM stalls,
/// the in-flight cap (not the thread count) bounds what waits.
pub const DEFAULT_WORKERS: usize = 4;

/// The longest project id accepted.
const MAX_PROJECT_LEN: usize = 128;

/// Everything [`super::Push::new`] needs.
#[derive(Debug)]
pub struct PushConfig {
    /// The service account that signs the OAuth assertions.
    pub key: ServiceAccountKey,
    /// The Firebase project messages are sent through.
    pub project: String,
    /// The FCM origin (`--fcm-endpoint`).
    pub fcm_endpoint: Endpoint,
    /// Admission limits.
    pub limits: Limits,
    /// Worker threads making the HTTP calls.
    pub workers: usize,
    /// The bound on each HTTP call.
    pub http_timeout: Duration,
}

/// Why push could not be configured. Never contains the credentials.
#[derive(Debug)]
pub enum PushConfigError {
    /// `PYRYCODE_RELAY_FCM_CREDENTIALS` is set but not a usable key.
    Credentials(CredentialsError),
    /// Neither the key's `project_id` nor `--fcm-project` names a project.
    NoProject,
    /// The project id has characters that do not belong in a URL path.
    BadProject,
    /// `--fcm-endpoint` does not pass the endpoint rule.
    FcmEndpoint(EndpointError),
    /// A worker thread could not be started.
    Spawn(std::io::Error),
}

impl PushConfig {
    /// The configuration from a parsed key, the `--fcm-project` override
    /// and the `--fcm-endpoint` URL, with the default limits.
    pub fn new(
        key: ServiceAccountKey,
        project_override: Option<&str>,
        fcm_endpoint: &str,
    ) -> Result<PushConfig, PushConfigError> {
        let project = project_override
            .or(key.project_id())
            .ok_or(PushConfigError::NoProject)?
            .to_owned();
        if !is_project_id(&project) {
            return Err(PushConfigError::BadProject);
        }
        let fcm_endpoint = Endpoint::parse(fcm_endpoint).map_err(PushConfigError::FcmEndpoint)?;
        Ok(PushConfig {
            key,
            project,
            fcm_endpoint,
            limits: Limits::default(),
            workers: DEFAULT_WORKERS,
            http_timeout: HTTP_TIMEOUT,
        })
    }

    /// What `main` calls at start: `Ok(None)` when
    /// `PYRYCODE_RELAY_FCM_CREDENTIALS` is unset (push off), the
    /// configuration when it is set and everything checks, else the reason
    /// to exit 2 with.
    pub fn from_env(
        project_override: Option<&str>,
        fcm_endpoint: &str,
    ) -> Result<Option<PushConfig>, PushConfigError> {
        match credentials::from_env().map_err(PushConfigError::Credentials)? {
            None => Ok(None),
            Some(key) => PushConfig::new(key, project_override, fcm_endpoint).map(Some),
        }
    }

    /// The full URL messages are posted to.
    pub fn send_url(&self) -> String {
        self.fcm_endpoint
            .join(&super::fcm::send_path(&self.project))
    }
}

/// Google project ids are lowercase letters, digits and hyphens (older
/// ones `domain.com:name`); whatever it is, it must be safe in a path.
fn is_project_id(id: &str) -> bool {
    (1..=MAX_PROJECT_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
}

impl fmt::Display for PushConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushConfigError::Credentials(why) => write!(f, "{why}"),
            PushConfigError::NoProject => f.write_str(
                "push: no FCM project: the service-account key has no project_id and --fcm-project is not set",
            ),
            PushConfigError::BadProject => {
                f.write_str("push: the FCM project id may only hold letters, digits, '-', '.', ':' and '_'")
            }
            PushConfigError::FcmEndpoint(why) => write!(f, "push: --fcm-endpoint refused: {why}"),
            PushConfigError::Spawn(why) => write!(f, "push: cannot start a worker thread: {why}"),
        }
    }
}

impl std::error::Error for PushConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_are_path_safe() {
        for ok in ["pyrycode-mobile", "example.com:proj", "p1"] {
            assert!(is_project_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "a?b", "a%2f", "a b", &"a".repeat(129)] {
            assert!(!is_project_id(bad), "{bad}");
        }
    }
}
