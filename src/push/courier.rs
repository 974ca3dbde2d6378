//! One wake from start to end, on a worker thread: an access token (from
//! the cache, or fetched), then the FCM call, reduced to an [`Outcome`].
//!
//! The token cache is shared by the workers behind a mutex that is held
//! across a fetch, so workers that need a token at the same time wait for
//! the one fetch instead of each making their own (a fetch is bounded by
//! the HTTP timeout). A 401 from FCM drops the cached token, so the next
//! wake fetches a new one instead of failing until the old one expires.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use ureq::Agent;

use super::credentials::ServiceAccountKey;
use super::fcm::{self, SendResult};
use super::grant::{self, AccessToken, FetchError, TokenCache};
use super::http::Cause;
use super::outcome::{Outcome, WakeResult};
use super::wake::Fingerprint;

/// An admitted wake on its way to a worker.
pub(crate) struct Job {
    pub(crate) server_id: String,
    /// The device token; dropped with the job once sent.
    pub(crate) token: String,
    pub(crate) fingerprint: Fingerprint,
    /// The loop's `now` when the wake was admitted (see `grant`).
    pub(crate) admitted_at: Instant,
}

/// What the workers share to deliver wakes.
pub(crate) struct Courier {
    agent: Agent,
    key: ServiceAccountKey,
    send_url: String,
    tokens: Mutex<TokenCache>,
}

impl Courier {
    pub(crate) fn new(agent: Agent, key: ServiceAccountKey, send_url: String) -> Courier {
        Courier {
            agent,
            key,
            send_url,
            tokens: Mutex::default(),
        }
    }

    /// Delivers `job` and says what came of it.
    pub(crate) fn deliver(&self, job: &Job) -> Outcome {
        let started = Instant::now();
        let result = self.attempt(job);
        job.outcome(result, started)
    }

    fn attempt(&self, job: &Job) -> WakeResult {
        let token = match self.access_token(job.admitted_at) {
            Ok(token) => token,
            Err(FetchError { status, cause }) => {
                return WakeResult::TokenFetchFailed { status, cause }
            }
        };
        match fcm::send(&self.agent, &self.send_url, token.secret(), &job.token) {
            SendResult::Sent { message_id } => WakeResult::Sent { message_id },
            SendResult::Rejected {
                status,
                fcm_status,
                fcm_error,
            } => {
                if status == 401 {
                    self.cache().invalidate();
                }
                match fcm_error.as_deref() {
                    Some("UNREGISTERED") => WakeResult::Unregistered { status, fcm_status },
                    _ => WakeResult::SendFailed {
                        status: Some(status),
                        cause: Cause::Status,
                        fcm_status,
                        fcm_error,
                    },
                }
            }
            SendResult::Failed(cause) => WakeResult::SendFailed {
                status: None,
                cause,
                fcm_status: None,
                fcm_error: None,
            },
        }
    }

    /// A token good at `now`, fetched under the cache's lock if need be.
    fn access_token(&self, now: Instant) -> Result<AccessToken, FetchError> {
        let mut cache = self.cache();
        if let Some(token) = cache.valid(now) {
            return Ok(token.clone());
        }
        let fresh = grant::fetch(&self.agent, &self.key, now)?;
        cache.store(fresh.clone());
        Ok(fresh)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        // The cache holds no invariant a panic could break mid-way.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Job {
    /// The outcome of this job, whose work began at `started`.
    pub(crate) fn outcome(&self, result: WakeResult, started: Instant) -> Outcome {
        Outcome {
            server_id: self.server_id.clone(),
            fingerprint: self.fingerprint,
            duration: started.elapsed(),
            result,
        }
    }
}
