//! The ACME helper thread: a current-thread tokio runtime (for
//! `instant-acme`'s HTTP client) that lives on this thread only, never
//! on the loop's.
//!
//! ```text
//! wait until the certificate's renewal time (now, if there is none)
//!   → attempt: account, order, validation, download (order.rs)
//!       ok  → cache file, AcmeEvent::Certificate on the channel, wake the
//!             loop; next wait: until two thirds of the new lifetime
//!       err → log, next wait: exponential back-off (schedule.rs); the
//!             next attempt tries the next challenge kind
//! ```
//!
//! Stopping (`Acme::stop`, or dropping it) resolves a oneshot that the
//! runtime selects on, which drops whatever attempt is running (its
//! published challenge responses are withdrawn by their guard).

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::Account;
use mio::Waker;
use tokio::sync::oneshot;

use super::cache::{self, CertInfo};
use super::challenges::Challenges;
use super::schedule::{self, RATE_LIMITED_WAIT};
use super::{order, AcmeConfig, AcmeError, AcmeEvent};
use crate::tls::pem;

/// Never renew again sooner than this after a success, whatever the new
/// certificate's dates say.
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(60);

/// The thread's state.
pub(super) struct Worker {
    pub config: AcmeConfig,
    pub challenges: Arc<Challenges>,
    pub events: Sender<AcmeEvent>,
    pub waker: Arc<Waker>,
    /// The certificate served now (from the cache or the last order).
    pub current: Option<CertInfo>,
    pub account: Option<Account>,
    /// Consecutive failed attempts.
    pub failures: u32,
}

/// The thread's body: runs the worker until `stop` resolves.
pub(super) fn run(worker: Worker, stop: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("acme_thread_failed reason=\"{error}\"");
            return;
        }
    };
    runtime.block_on(async move {
        tokio::select! {
            _ = worker.run() => {}
            _ = stop => {}
        }
    });
    // A DNS lookup may still sit on a blocking thread: do not wait for it.
    runtime.shutdown_background();
}

impl Worker {
    async fn run(mut self) {
        let mut wait = match &self.current {
            Some(info) => schedule::until(SystemTime::now(), schedule::renew_at(info)),
            None => Duration::ZERO,
        };
        loop {
            if !wait.is_zero() {
                log::info!(
                    "acme_waiting domain={} seconds={}",
                    self.config.domain,
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
            }
            wait = match self.attempt().await {
                Ok(info) => self.succeeded(info),
                Err(error) => self.failed(&error),
            };
        }
    }

    /// One order; on success the certificate is cached and sent.
    async fn attempt(&mut self) -> Result<CertInfo, AcmeError> {
        let kinds = &self.config.challenge_kinds;
        let kind = kinds[self.failures as usize % kinds.len()];
        log::info!(
            "acme_order_started domain={} challenge={}",
            self.config.domain,
            kind.as_str()
        );
        if self.account.is_none() {
            self.account = Some(order::account(&self.config).await?);
        }
        let account = self.account.as_ref().expect("set above");
        let issued = order::obtain(account, &self.config.domain, kind, &self.challenges).await?;
        let certified = pem::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())?;
        let leaf = certified
            .end_entity_cert()
            .map_err(|e| bad_issue(e.to_string()))?;
        let info = CertInfo::from_der(leaf).map_err(bad_issue)?;
        let dir: &Path = &self.config.cache_dir;
        if let Err(error) =
            cache::store_certificate(dir, &self.config.domain, &issued.key_pem, &issued.chain_pem)
        {
            // Serve it anyway; a restart will have to order again.
            log::warn!("acme_cache_write_failed reason=\"{error}\"");
        }
        log::info!(
            "acme_certificate_obtained domain={} chain={} expires_in_days={}",
            self.config.domain,
            certified.cert.len(),
            days_until(info.not_after)
        );
        self.send(AcmeEvent::Certificate(certified));
        Ok(info)
    }

    fn send(&self, event: AcmeEvent) {
        if self.events.send(event).is_err() {
            return; // The loop is gone: nothing to wake.
        }
        if let Err(error) = self.waker.wake() {
            log::error!("acme_wake_failed reason=\"{error}\"");
        }
    }

    /// The wait after a success: until two thirds of the new lifetime.
    fn succeeded(&mut self, info: CertInfo) -> Duration {
        self.failures = 0;
        let wait = schedule::until(SystemTime::now(), schedule::renew_at(&info));
        self.current = Some(info);
        wait.max(MIN_RENEWAL_WAIT)
    }

    /// The wait after a failure: the back-off, longer for a rate limit.
    fn failed(&mut self, error: &AcmeError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let mut wait = self
            .config
            .backoff
            .delay(self.failures, schedule::random_unit());
        if error.is_rate_limited() {
            wait = wait.max(RATE_LIMITED_WAIT);
        }
        if error.is_account_gone() {
            self.forget_account();
        }
        log::warn!(
            "acme_order_failed domain={} attempt={} retry_in_seconds={} reason=\"{}\"",
            self.config.domain,
            self.failures,
            wait.as_secs(),
            error.to_string().replace('"', "'")
        );
        wait
    }

    /// Drops the account the CA does not know; the next attempt makes a
    /// new one.
    fn forget_account(&mut self) {
        self.account = None;
        match cache::forget_account(&self.config.cache_dir) {
            Ok(()) => log::warn!("acme_account_forgotten domain={}", self.config.domain),
            Err(error) => log::error!("acme_account_forget_failed reason=\"{error}\""),
        }
    }
}

fn bad_issue(reason: String) -> AcmeError {
    AcmeError::Validation(format!("issued certificate unreadable: {reason}"))
}

/// Whole days from now until `at` (negative once past).
pub(super) fn days_until(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => (ahead.as_secs() / 86_400) as i64,
        Err(past) => -((past.duration().as_secs() / 86_400) as i64),
    }
}
