//! Push wakes (SPEC §5.3): a binary sends
//! `{"push_wake":{"platform":"fcm","token":"…"}}` when a phone it needs is
//! asleep, and the relay sends that phone a content-free FCM message so it
//! reconnects, without ever stalling the loop.
//!
//! [`Push`] is the part the loop owns. Its [`Push::request`] checks the
//! wake, applies the limits and hands it to a worker thread through a
//! bounded queue; it never waits. The workers make the blocking HTTPS
//! calls (OAuth token, then FCM) and send each [`Outcome`] back, waking
//! the loop's poll through a `mio::Waker`; the loop then calls
//! [`Push::take_outcomes`] to log each one and count it.
//!
//! | file | owns |
//! |---|---|
//! | `credentials` | the service-account key from `PYRYCODE_RELAY_FCM_CREDENTIALS` |
//! | `config` | project, endpoint and limits, checked at start |
//! | `endpoint` | which URLs secrets may be sent to |
//! | `wake` | the `push_wake` object and the token fingerprint |
//! | `admission` | the per-server-id bucket and the in-flight cap |
//! | `grant` | the RS256 JWT-bearer grant and the access-token cache |
//! | `fcm` | the FCM call and what its reply means |
//! | `http` | the bounded HTTP client |
//! | `courier` | one wake start to end, on a worker |
//! | `worker` | the threads, the bounded queue and the waker |
//! | `outcome` | the log line and metric label of a finished wake |
//!
//! Time: the loop passes its clock's `now` to `request` and `sweep`; each
//! job carries its admission `now`, and the token cache measures expiry on
//! it (see `grant`), so under a `ManualClock` a test decides when a token
//! has expired. Only log durations and the JWT's `iat`/`exp` use real time.
//!
//! Secrets (device tokens, the key, access tokens, assertions, FCM's free
//! text) never appear in a log line, an error or a `Debug` output.

mod admission;
mod config;
mod courier;
pub mod credentials;
mod endpoint;
mod fcm;
mod grant;
mod http;
mod outcome;
mod wake;
mod worker;

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Token, Waker};

pub use admission::{Limits, Refusal};
pub use config::{PushConfig, PushConfigError, DEFAULT_WORKERS};
pub use credentials::{CredentialsError, ServiceAccountKey, CREDENTIALS_ENV, DEFAULT_TOKEN_URI};
pub use endpoint::{Endpoint, EndpointError, DEFAULT_FCM_ENDPOINT};
pub use fcm::REPLY_LIMIT;
pub use grant::{FCM_SCOPE, JWT_BEARER_GRANT, REFRESH_MARGIN, TOKEN_REPLY_LIMIT};
pub use http::{Cause, HTTP_TIMEOUT};
pub use outcome::{Outcome, WakeResult, DROPPED_LABEL, OUTCOME_LABELS};
pub use wake::{Fingerprint, WakeRequest, MAX_TOKEN_LEN};

use admission::Gate;
use courier::{Courier, Job};
use worker::Pool;

/// Whether a wake was handed to a worker.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A worker will send it; its [`Outcome`] comes back later.
    Admitted,
    /// Dropped: log it with [`Refusal::log`] and count `outcome="dropped"`.
    Refused(Refusal),
}

/// Push wakes, owned by the loop.
pub struct Push {
    gate: Gate,
    pool: Pool,
}

impl Push {
    /// Starts the workers for `config`.
    pub fn new(config: PushConfig) -> Result<Push, PushConfigError> {
        let send_url = config.send_url();
        let agent = http::agent(config.http_timeout);
        let courier = Courier::new(agent, config.key, send_url);
        let pool = Pool::start(courier, config.workers, config.limits.max_in_flight)
            .map_err(PushConfigError::Spawn)?;
        Ok(Push {
            gate: Gate::new(config.limits),
            pool,
        })
    }

    /// Registers the waker that makes `token` readable on `registry`'s
    /// poll whenever outcomes are waiting. Call once, before any request.
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        self.pool.register(registry, token)
    }

    /// Instead of [`Push::register`]: wake the loop through a waker it
    /// already has (mio allows one `Waker` per poll), and drain
    /// [`Push::take_outcomes`] whenever that waker's token is readable.
    pub fn use_waker(&self, waker: Arc<Waker>) -> io::Result<()> {
        self.pool.use_waker(waker)
    }

    /// Asks for a wake from `server_id`'s binary; `push_wake` is the raw
    /// JSON value of its `push_wake` key, `now` the loop's time. Checks
    /// the object, then the in-flight cap, then the server-id's bucket,
    /// and hands an admitted wake to a worker. Never blocks.
    pub fn request(&mut self, server_id: &str, push_wake: &[u8], now: Instant) -> Admission {
        let wake = match WakeRequest::parse(push_wake) {
            Ok(wake) => wake,
            Err(why) => return Admission::Refused(why),
        };
        if let Err(why) = self.gate.admit(server_id, now) {
            return Admission::Refused(why);
        }
        let job = Job {
            server_id: server_id.to_owned(),
            fingerprint: wake.fingerprint(),
            token: wake.token,
            admitted_at: now,
        };
        match self.pool.submit(job) {
            Ok(()) => Admission::Admitted,
            Err(why) => {
                self.gate.undo(server_id);
                Admission::Refused(why)
            }
        }
    }

    /// The outcomes finished so far, without waiting. Call when the
    /// waker's token is readable; log each ([`Outcome::log`]) and count it
    /// under [`Outcome::label`]. Each one frees its in-flight slot.
    pub fn take_outcomes(&mut self) -> impl Iterator<Item = Outcome> + '_ {
        std::iter::from_fn(move || {
            let outcome = self.pool.try_outcome()?;
            self.gate.finished();
            Some(outcome)
        })
    }

    /// Forgets server-ids that have not asked for a wake lately (their
    /// bucket is full again). Call every minute or so.
    pub fn sweep(&mut self, now: Instant) {
        self.gate.sweep(now);
    }

    /// Wakes admitted whose outcome has not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// Server-ids whose bucket is remembered.
    pub fn tracked_server_ids(&self) -> usize {
        self.gate.tracked()
    }
}

#[cfg(test)]
mod tests {
    /// The loop may live on any thread it is moved to.
    #[test]
    fn push_is_send() {
        fn send<T: Send>() {}
        send::<super::Push>();
        send::<super::Outcome>();
    }
}
