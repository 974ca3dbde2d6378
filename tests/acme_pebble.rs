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

#[path = "support/tls.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use pyrycode_relay::acme::Challenges;
use pyrycode_relay::acme::{cache, Acme, AcmeConfig, AcmeEvent, Backoff, ChallengeKind};
use pyrycode_relay::tls::{self, CertResolver};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::version::TLS13;
use rustls::RootCertStore;

use support::TestCa;

const WAKER: Token = Token(7);
/// Longest wait for one certificate (validation, issuance, retries).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a process to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn pebble_issues_by_http01_and_tls_alpn01_and_a_restart_serves_the_cache() {
    log_to_stderr();
    let work = temp_dir("pebble");
    let ca = TestCa::new("pebble https root");
    let validation = Validation::start(answer_http01);
    let pebble = Pebble::start(&work, &ca, validation.http_port, validation.tls_port);
    let root = pebble.root(&ca);

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
    let ca = TestCa::new("pebble https root");
    let validation = Validation::start(answer_404);
    // No badNonce here: an order that failed on nonces (instant-acme tries
    // each request three times) before its HTTP-01 challenge was reached
    // would move on to TLS-ALPN-01 without HTTP-01 ever being tried. The
    // other tests exercise the retry.
    let pebble = Pebble::start_rejecting(&work, &ca, validation.http_port, validation.tls_port, 0);
    let root = pebble.root(&ca);

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
    let ca = TestCa::new("pebble https root");
    let validation = Validation::start(answer_http01);
    let mut pebble = Pebble::start(&work, &ca, validation.http_port, validation.tls_port);
    let order = Order::new(&work, "account.relay.test", ChallengeKind::Http01, &pebble);
    let cache_dir = order.config.cache_dir.clone();
    let forget_certificate =
        || std::fs::remove_file(cache::certificate_path(&cache_dir, "account.relay.test")).unwrap();
    let account = || std::fs::read(cache::account_path(&cache_dir)).unwrap();

    obtain(&order, &validation, &pebble.root(&ca));
    let first_account = account();
    forget_certificate();
    obtain(&order, &validation, &pebble.root(&ca));
    assert_eq!(
        account(),
        first_account,
        "the stored account was used again"
    );

    pebble.restart();
    forget_certificate();
    obtain(&order, &validation, &pebble.root(&ca));
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
    let client = support::client_config(roots, &[b"http/1.1"], &[&TLS13]);
    let mut pair = support::handshake(&server, &client, domain).unwrap_or_else(|e| {
        panic!("{domain}: the chain does not verify against Pebble's root: {e}")
    });
    assert_eq!(pair.echo(b"frame"), b"frame");
}

fn poll_and_waker() -> (Poll, Arc<Waker>) {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
    (poll, waker)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free loopback port (TCP, or UDP for the DNS server).
fn free_port(udp: bool) -> u16 {
    match udp {
        true => UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        false => TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}

/// Waits until something listens on the TCP `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status} before listening on {port}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble and its DNS server, killed on drop.
struct Pebble {
    /// Percent of nonces rejected as `badNonce`.
    nonce_reject: u8,
    pebble: Child,
    dns: Child,
    work: PathBuf,
    config_path: PathBuf,
    dns_port: u16,
    acme_port: u16,
    management_port: u16,
    /// The root of Pebble's own HTTPS certificate (`--acme-ca-root`).
    https_root: PathBuf,
}

impl Pebble {
    /// Starts the DNS server, then Pebble validating on `http_port` and
    /// `tls_port` with HTTPS certificates from `ca`.
    fn start(work: &Path, ca: &TestCa, http_port: u16, tls_port: u16) -> Self {
        Pebble::start_rejecting(work, ca, http_port, tls_port, NONCE_REJECT_PERCENT)
    }

    /// [`Pebble::start`], rejecting `nonce_reject` % of nonces.
    fn start_rejecting(
        work: &Path,
        ca: &TestCa,
        http_port: u16,
        tls_port: u16,
        nonce_reject: u8,
    ) -> Self {
        let (dns, dns_port) = start_dns(work);
        let https = ca.issue(&["127.0.0.1", "localhost"]);
        let (cert, key) = (work.join("pebble.crt"), work.join("pebble.key"));
        https.write(&cert, &key);
        let https_root = work.join("root.pem");
        std::fs::write(&https_root, &ca.root_pem).unwrap();
        let (acme_port, management_port) = (free_port(false), free_port(false));
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = work.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let ports = [acme_port, management_port];
        let pebble = spawn_pebble(work, &config_path, dns_port, ports, nonce_reject);
        Pebble {
            nonce_reject,
            pebble,
            dns,
            work: work.to_owned(),
            config_path,
            dns_port,
            acme_port,
            management_port,
            https_root,
        }
    }

    /// Stops Pebble and starts it again on the same ports: same directory
    /// URL, but every account, order and root forgotten.
    fn restart(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let ports = [self.acme_port, self.management_port];
        self.pebble = spawn_pebble(
            &self.work,
            &self.config_path,
            self.dns_port,
            ports,
            self.nonce_reject,
        );
    }

    fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root of the certificates Pebble issues (regenerated each run).
    fn root(&self, https_ca: &TestCa) -> CertificateDer<'static> {
        let body = https_get(https_ca, self.management_port, "/roots/0");
        CertificateDer::from_pem_slice(body.as_bytes()).expect("Pebble's root is PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pebble-challtestsrv` as DNS server only: every name is 127.0.0.1.
fn start_dns(work: &Path) -> (Child, u16) {
    let (dns_port, management_port) = (free_port(true), free_port(false));
    let dns_address = format!("127.0.0.1:{dns_port}");
    let management_address = format!("127.0.0.1:{management_port}");
    let args = [
        "-dns01",
        &dns_address,
        "-management",
        &management_address,
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-defaultIPv4",
        "127.0.0.1",
        "-defaultIPv6",
        "",
    ];
    let mut dns = spawn(work, "pebble-challtestsrv", &args, &[]);
    wait_listening(management_port, "pebble-challtestsrv", &mut dns);
    (dns, dns_port)
}

/// Percent of nonces Pebble rejects as `badNonce` by default, so that
/// instant-acme's retry (RFC 8555 §6.5) is exercised.
const NONCE_REJECT_PERCENT: u8 = 20;

/// Pebble with real validation, fast, rejecting `nonce_reject` % of nonces.
fn spawn_pebble(
    work: &Path,
    config: &Path,
    dns_port: u16,
    ports: [u16; 2],
    nonce_reject: u8,
) -> Child {
    let dns = format!("127.0.0.1:{dns_port}");
    let args = ["-config", config.to_str().unwrap(), "-dnsserver", &dns];
    let reject = nonce_reject.to_string();
    let env = [
        ("PEBBLE_VA_NOSLEEP", "1"),
        ("PEBBLE_WFE_NONCEREJECT", reject.as_str()),
    ];
    let mut pebble = spawn(work, "pebble", &args, &env);
    wait_listening(ports[0], "pebble", &mut pebble);
    wait_listening(ports[1], "pebble management", &mut pebble);
    pebble
}

/// Runs `program`; its output goes to `<work>/<program>.log`.
fn spawn(work: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(work.join(format!("{program}.log"))).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command.env_remove("PEBBLE_VA_ALWAYS_VALID");
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install the Debian package pebble (.ci/run does)")
    })
}

/// `GET path` over HTTPS from 127.0.0.1:`port`, trusting `ca`; the body.
fn https_get(ca: &TestCa, port: u16, path: &str) -> String {
    let client = support::client_config(ca.roots(), &[b"http/1.1"], &[&TLS13]);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, socket);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
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
