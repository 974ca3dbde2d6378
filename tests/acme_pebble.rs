//! ACME end to end against Pebble, Let's Encrypt's test CA (Debian
//! package `pebble`, installed by `.ci/run`), on loopback, with real
//! validation (not `PEBBLE_VA_ALWAYS_VALID`):
//!
//! - `pebble-challtestsrv` answers Pebble's DNS: every name is 127.0.0.1;
//! - this test serves the HTTP-01 and TLS-ALPN-01 validation ports from
//!   what the ACME thread publishes (`Challenges`), through the relay's own
//!   TLS config for TLS-ALPN-01;
//! - Pebble rejects 20 % of nonces as `badNonce`, so the retry is used.
//!
//! One order is validated with HTTP-01, another (another domain, another
//! account) with TLS-ALPN-01. Each certificate arrives through the
//! channel and the `mio::Waker`, is served with its intermediate, and
//! verifies against Pebble's root fetched from its management interface.
//! Then Pebble is stopped and a new start serves the cached certificate.
//! A client whose HTTP-01 validation fails backs off and succeeds with
//! TLS-ALPN-01. A client orders twice with its stored account, and
//! replaces it once a restarted Pebble has forgotten it.
//!
//! Every wait is bounded and fails saying what it waited for. Pebble's
//! and its DNS server's output are in `$TMPDIR/relay-pebble-<pid>/*.log`.

#[path = "support/pebble.rs"]
mod pebble;
#[path = "support/process.rs"]
mod process;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use pyrycode_relay::acme::Challenges;
use pyrycode_relay::acme::{cache, Acme, AcmeConfig, AcmeEvent, Backoff, ChallengeKind};
use pyrycode_relay::tls::{self, CertResolver};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::version::TLS13;
use rustls::RootCertStore;

use pebble::{Pebble, NONCE_REJECT_PERCENT};
use process::temp_dir;

const WAKER: Token = Token(7);
/// Longest wait for one certificate (validation, issuance, retries).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn pebble_issues_by_http01_and_tls_alpn01_and_a_restart_serves_the_cache() {
    log_to_stderr();
    let work = temp_dir("pebble");
    let validation = Validation::start(answer_http01);
    let pebble = Pebble::start_rejecting(
        &work,
        validation.http_port,
        validation.tls_port,
        NONCE_REJECT_PERCENT,
    );
    let root = pebble.root();

    let http01 = Order::new(&work, "http01.relay.test", ChallengeKind::Http01, &pebble);
    let certified = obtain(&http01, &validation, &root);
    assert!(
        validation.http_hits.load(Ordering::SeqCst) > 0,
        "no HTTP-01 request"
    );

    let alpn = Order::new(&work, "alpn.relay.test", ChallengeKind::TlsAlpn01, &pebble);
    obtain(&alpn, &validation, &root);
    assert!(
        validation.tls_hits.load(Ordering::SeqCst) > 0,
        "no acme-tls/1 handshake"
    );

    drop(pebble);
    let (_poll, waker) = poll_and_waker();
    let restarted = Acme::start(http01.config.clone(), waker).unwrap();
    let cached = restarted
        .cached_certificate()
        .expect("cached certificate at start");
    assert_eq!(
        cached.cert, certified.cert,
        "the cached chain is the issued one"
    );
    assert_verifies(cached, &root, "http01.relay.test");
    restarted.stop();
}

#[test]
fn a_failed_http01_validation_backs_off_and_tls_alpn01_then_succeeds() {
    log_to_stderr();
    let work = temp_dir("pebble-fallback");
    let validation = Validation::start(answer_404);
    // No badNonce here: an order that failed on nonces (instant-acme tries
    // each request three times) before its HTTP-01 challenge was reached
    // would move on to TLS-ALPN-01 without HTTP-01 ever being tried. The
    // other tests exercise the retry.
    let pebble = Pebble::start(&work, validation.http_port, validation.tls_port);
    let root = pebble.root();

    let mut order = Order::new(&work, "fallback.relay.test", ChallengeKind::Http01, &pebble);
    order.config.challenge_kinds = ChallengeKind::for_listeners(true);
    obtain(&order, &validation, &root);
    assert!(
        validation.http_hits.load(Ordering::SeqCst) > 0,
        "HTTP-01 was tried first"
    );
    assert!(
        validation.tls_hits.load(Ordering::SeqCst) > 0,
        "then TLS-ALPN-01"
    );
}

/// The ACME thread's log lines, shown by the test harness on failure.
fn log_to_stderr() {
    let _ = simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .init();
}

#[test]
fn a_stored_account_is_reused_and_replaced_once_the_ca_forgot_it() {
    log_to_stderr();
    let work = temp_dir("pebble-account");
    let validation = Validation::start(answer_http01);
    let mut pebble = Pebble::start_rejecting(
        &work,
        validation.http_port,
        validation.tls_port,
        NONCE_REJECT_PERCENT,
    );
    let order = Order::new(&work, "account.relay.test", ChallengeKind::Http01, &pebble);
    let cache_dir = order.config.cache_dir.clone();
    let forget_certificate =
        || std::fs::remove_file(cache::certificate_path(&cache_dir, "account.relay.test")).unwrap();
    let account = || std::fs::read(cache::account_path(&cache_dir)).unwrap();

    obtain(&order, &validation, &pebble.root());
    let first_account = account();
    forget_certificate();
    obtain(&order, &validation, &pebble.root());
    assert_eq!(
        account(),
        first_account,
        "the stored account was used again"
    );

    pebble.restart();
    forget_certificate();
    obtain(&order, &validation, &pebble.root());
    assert_ne!(
        account(),
        first_account,
        "a new account replaced the forgotten one"
    );
}

/// One ACME client setup: a domain, its cache, its challenge kind.
struct Order {
    config: AcmeConfig,
}

impl Order {
    fn new(work: &Path, domain: &str, kind: ChallengeKind, pebble: &Pebble) -> Self {
        let cache_dir = work.join(format!("cache-{domain}"));
        pyrycode_relay::acme::cache_dir::prepare(&cache_dir).unwrap();
        let mut config = AcmeConfig::new(domain, cache_dir);
        config.directory_url = pebble.directory_url();
        config.ca_root = Some(pebble.https_root.clone());
        config.email = Some("ops@relay.test".into());
        config.challenge_kinds = vec![kind];
        config.backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(2),
        };
        Order { config }
    }
}

/// Starts the ACME thread for `order`, waits for its certificate, checks
/// it, and stops the thread.
fn obtain(
    order: &Order,
    validation: &Validation,
    root: &CertificateDer<'static>,
) -> Arc<CertifiedKey> {
    let domain = order.config.domain.clone();
    let (mut poll, waker) = poll_and_waker();
    let acme = Acme::start(order.config.clone(), waker).unwrap();
    assert!(acme.cached_certificate().is_none(), "{domain}: empty cache");
    validation.serve(acme.challenges().clone());

    let certified = wait_for_certificate(&mut poll, &acme, &domain);
    assert!(
        certified.cert.len() >= 2,
        "{domain}: leaf and intermediate served"
    );
    assert_verifies(certified.clone(), root, &domain);
    let cached = cache::load_certificate(&order.config.cache_dir, &domain).unwrap();
    assert_eq!(cached.expect("cache file").certified.cert, certified.cert);
    assert!(
        acme.challenges().is_empty(),
        "{domain}: challenges withdrawn"
    );
    acme.stop();
    certified
}

fn wait_for_certificate(poll: &mut Poll, acme: &Acme, domain: &str) -> Arc<CertifiedKey> {
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    let mut events = Events::with_capacity(4);
    loop {
        if let Some(AcmeEvent::Certificate(certified)) = acme.try_recv() {
            return certified;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{domain}: no certificate from Pebble within {ISSUE_TIMEOUT:?}"
        );
        poll.poll(&mut events, Some(left)).unwrap();
        for event in &events {
            assert_eq!(event.token(), WAKER);
        }
    }
}

/// A handshake with the relay's TLS config serving `certified`, from a
/// client that trusts only Pebble's root and names `domain`.
fn assert_verifies(certified: Arc<CertifiedKey>, root: &CertificateDer<'static>, domain: &str) {
    let resolver = Arc::new(CertResolver::for_acme(
        Arc::new(Challenges::default()),
        None,
    ));
    resolver.set_certificate(certified);
    let server = tls::server_config(resolver);
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let client = tls_support::client_config(roots, &[b"http/1.1"], &[&TLS13]);
    let mut pair = tls_support::handshake(&server, &client, domain).unwrap_or_else(|e| {
        panic!("{domain}: the chain does not verify against Pebble's root: {e}")
    });
    assert_eq!(pair.echo(b"frame"), b"frame");
}

fn poll_and_waker() -> (Poll, Arc<Waker>) {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
    (poll, waker)
}

/// The validation ports Pebble's VA connects to, answering from the
/// challenges of the ACME client under test.
struct Validation {
    http_port: u16,
    tls_port: u16,
    current: Arc<Mutex<Option<Arc<Challenges>>>>,
    http_hits: Arc<AtomicUsize>,
    tls_hits: Arc<AtomicUsize>,
}

impl Validation {
    /// Listens for both validations; HTTP-01 requests get `http`.
    fn start(http_answer: Answer) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").unwrap();
        let validation = Validation {
            http_port: http.local_addr().unwrap().port(),
            tls_port: tls.local_addr().unwrap().port(),
            current: Arc::new(Mutex::new(None)),
            http_hits: Arc::new(AtomicUsize::new(0)),
            tls_hits: Arc::new(AtomicUsize::new(0)),
        };
        let (current, hits) = (validation.current.clone(), validation.http_hits.clone());
        std::thread::spawn(move || accept(http, current, hits, http_answer));
        let (current, hits) = (validation.current.clone(), validation.tls_hits.clone());
        std::thread::spawn(move || accept(tls, current, hits, answer_tls_alpn01));
        validation
    }

    fn serve(&self, challenges: Arc<Challenges>) {
        *self.current.lock().unwrap() = Some(challenges);
    }
}

type Answer = fn(TcpStream, &Arc<Challenges>) -> bool;

fn accept(
    listener: TcpListener,
    current: Arc<Mutex<Option<Arc<Challenges>>>>,
    hits: Arc<AtomicUsize>,
    answer: Answer,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let challenges = current.lock().unwrap().clone();
        if let Some(challenges) = challenges {
            if answer(stream, &challenges) {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Answers one HTTP-01 request as the loop will; true if it found a token.
fn answer_http01(mut stream: TcpStream, challenges: &Arc<Challenges>) -> bool {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return false;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let found = challenges.http01_response(path);
    let response = match &found {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let _ = stream.write_all(response.as_bytes());
    found.is_some()
}

/// Answers 404 whatever the request: an HTTP-01 validation that fails.
/// Counts every request.
fn answer_404(mut stream: TcpStream, _: &Arc<Challenges>) -> bool {
    let mut head = [0u8; 1024];
    let _ = stream.read(&mut head);
    let response = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    stream.write_all(response.as_bytes()).is_ok()
}

/// Runs one handshake with the relay's ACME TLS config; true if it
/// negotiated `acme-tls/1` (a validation).
fn answer_tls_alpn01(mut stream: TcpStream, challenges: &Arc<Challenges>) -> bool {
    let resolver = Arc::new(CertResolver::for_acme(challenges.clone(), None));
    let mut conn = rustls::ServerConnection::new(tls::server_config(resolver)).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut stream).is_err() {
            return false;
        }
    }
    let validated = tls::is_acme_validation(conn.alpn_protocol());
    conn.send_close_notify();
    let _ = conn.complete_io(&mut stream);
    validated
}
