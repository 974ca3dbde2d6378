//! ACME autocert for `--domain`: the relay obtains and renews its own
//! certificate, on a helper thread, and hands it to the loop.
//!
//! ```text
//! main, at start-up                       ACME thread "acme"
//!   cache_dir::prepare(dir)  (exit 1 on error)
//!   Acme::start(config, waker) ──spawn──▶ sleep until renewal (now if no cert)
//!     cached_certificate() → resolver      order: publish the challenge response
//!     challenges() → resolver, HTTP-01       in Challenges (shared); CA validates
//!                                          AcmeEvent::Certificate → channel, wake
//! loop
//!   waker token readable → while let Some(event) = acme.try_recv()
//!                             → resolver.set_certificate(certificate)
//! ```
//!
//! - [`cache_dir`]: the cache directory's permission rules.
//! - [`cache`]: the files in it (Go `autocert` layout for the certificate).
//! - [`challenges`]: HTTP-01 and TLS-ALPN-01 responses shared with the loop.
//! - [`schedule`]: renewal at two thirds of the lifetime, back-off.
//! - `order`: one order with `instant-acme`.
//! - `worker`: the thread itself.
//!
//! `instant-acme` is async; its runtime is a current-thread tokio runtime
//! that exists on the ACME thread only. The loop never blocks on it: it
//! reads a channel when the waker fires and looks up challenge responses
//! under a mutex held for one map lookup.
//!
//! A restart with a valid cached certificate serves it at once:
//! [`Acme::start`] reads the cache before the thread starts, and the
//! thread does not contact the CA until the renewal time.

pub mod cache;
pub mod cache_dir;
pub mod challenges;
mod error;
mod order;
pub mod schedule;
mod worker;

use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use mio::Waker;
use rustls::sign::CertifiedKey;
use tokio::sync::oneshot;

pub use cache::CertInfo;
pub use challenges::Challenges;
pub use error::AcmeError;
pub use schedule::Backoff;

/// `--acme-directory` default: Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the CA may check that we control the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token served over plain HTTP on port 80 (`--http-listen`).
    Http01,
    /// A special certificate on port 443 (the TLS listener).
    TlsAlpn01,
}

impl ChallengeKind {
    /// The kinds to try, in order (the thread moves to the next one after
    /// each failure): HTTP-01 first when there is an HTTP listener, since
    /// it works behind any TLS setup; then TLS-ALPN-01, which needs only
    /// the TLS listener.
    pub fn for_listeners(http_listener: bool) -> Vec<ChallengeKind> {
        match http_listener {
            true => vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            false => vec![ChallengeKind::TlsAlpn01],
        }
    }

    /// The challenge's name in RFC 8555 / 8737.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// What the ACME thread needs to know (from the flags).
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// `--domain`: the one name of the certificate.
    pub domain: String,
    /// `--cert-cache`, already checked by [`cache_dir::prepare`].
    pub cache_dir: PathBuf,
    /// `--acme-directory`.
    pub directory_url: String,
    /// `--acme-email`: the account's contact, if given.
    pub email: Option<String>,
    /// `--acme-ca-root`: trust this root (PEM) for the ACME server's own
    /// HTTPS instead of the system's roots (Pebble in tests).
    pub ca_root: Option<PathBuf>,
    /// Challenge kinds to try, in order; never empty.
    pub challenge_kinds: Vec<ChallengeKind>,
    /// Back-off after failures.
    pub backoff: Backoff,
}

impl AcmeConfig {
    /// Defaults: Let's Encrypt, no email, system roots, TLS-ALPN-01 only
    /// (set `challenge_kinds` with [`ChallengeKind::for_listeners`] when
    /// there is an HTTP listener).
    pub fn new(domain: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        AcmeConfig {
            domain: domain.into(),
            cache_dir: cache_dir.into(),
            directory_url: LETS_ENCRYPT.to_owned(),
            email: None,
            ca_root: None,
            challenge_kinds: ChallengeKind::for_listeners(false),
            backoff: Backoff::default(),
        }
    }
}

/// What the ACME thread tells the loop.
#[derive(Debug)]
pub enum AcmeEvent {
    /// A new certificate for the domain: serve it from the next handshake
    /// on (`CertResolver::set_certificate`).
    Certificate(Arc<CertifiedKey>),
}

/// The running ACME thread, owned by the loop.
pub struct Acme {
    challenges: Arc<Challenges>,
    cached: Option<Arc<CertifiedKey>>,
    events: Receiver<AcmeEvent>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Acme {
    /// Reads the cache, then starts the thread. `waker` is the loop's
    /// `mio::Waker` (its token tells the loop to call [`Acme::try_recv`]).
    pub fn start(config: AcmeConfig, waker: Arc<Waker>) -> io::Result<Acme> {
        Acme::start_with(config, waker, Arc::new(Challenges::default()))
    }

    /// [`Acme::start`], publishing challenge responses in `challenges`:
    /// the caller can build its TLS config and bind its listeners first,
    /// so that they are there before the CA is told to validate.
    pub fn start_with(
        config: AcmeConfig,
        waker: Arc<Waker>,
        challenges: Arc<Challenges>,
    ) -> io::Result<Acme> {
        assert!(!config.challenge_kinds.is_empty(), "no challenge kind");
        let cached = load_cached(&config);
        let (sender, events) = mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let worker = worker::Worker {
            current: cached.as_ref().map(|c| c.info.clone()),
            config,
            challenges: challenges.clone(),
            events: sender,
            waker,
            account: None,
            failures: 0,
        };
        let thread = std::thread::Builder::new()
            .name("acme".into())
            .spawn(move || worker::run(worker, stopped))?;
        Ok(Acme {
            challenges,
            cached: cached.map(|c| c.certified),
            events,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The valid certificate found in the cache at start, to serve at once.
    pub fn cached_certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.cached.clone()
    }

    /// The challenge responses, for the resolver and the HTTP-01 listener.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// The next event, if any (call until `None` when the waker fires).
    pub fn try_recv(&self) -> Option<AcmeEvent> {
        self.events.try_recv().ok()
    }

    /// Stops the thread (dropping any attempt in flight) and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The cached certificate of the domain, if it is there and valid now.
fn load_cached(config: &AcmeConfig) -> Option<cache::Cached> {
    let domain = &config.domain;
    match cache::load_certificate(&config.cache_dir, domain) {
        Ok(Some(cached)) if cached.info.is_valid_at(SystemTime::now()) => {
            log::info!(
                "acme_cached_certificate domain={domain} expires_in_days={} renew_in_days={}",
                worker::days_until(cached.info.not_after),
                worker::days_until(schedule::renew_at(&cached.info))
            );
            Some(cached)
        }
        Ok(Some(_)) => {
            log::info!("acme_cached_certificate_expired domain={domain}");
            None
        }
        Ok(None) => None,
        Err(error) => {
            log::warn!("acme_cache_unusable domain={domain} reason=\"{error}\"");
            None
        }
    }
}
