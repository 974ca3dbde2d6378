//! ACME end to end through the relay itself, against Pebble on loopback
//! with real validation (`tests/support/pebble.rs`):
//!
//! - the Go relay's production command line (`--domain … --cert-cache …
//!   --http-listen … --https-listen … --https-proxy-protocol`) plus
//!   `--acme-directory` and `--acme-ca-root`, run by the real binary: it
//!   obtains a certificate over HTTP-01 (Pebble fetches the token from the
//!   relay's `--http-listen` listener), and a binary and a phone that trust
//!   only Pebble's root connect with the domain as SNI, behind the test's
//!   own PROXY v2 header, and exchange frames. Then the relay and Pebble
//!   stop, and a restart serves the cached certificate at once, asking no
//!   CA. Before that, an upgrade in place (SIGUSR2) keeps serving it;
//! - TLS-ALPN-01 answered by the relay's loop: Pebble validates on the
//!   relay's TLS listener (ALPN `acme-tls/1`), and the certificate reaches
//!   the loop through the channel and the shared waker.
//!
//! Every wait is bounded. Pebble's output is in
//! `$TMPDIR/relay-acme-*-<pid>/*.log`.

#[path = "support/blocking.rs"]
mod blocking;
mod common;
#[path = "support/pebble.rs"]
mod pebble;
#[path = "support/process.rs"]
mod process;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/wss.rs"]
mod wss;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking::wss_pair;
use common::{binary_headers, Harness};
use pebble::Pebble;
use process::{free_port, temp_dir, RelayProcess};
use pyrycode_relay::acme::{Acme, AcmeConfig, ChallengeKind};
use pyrycode_relay::proxy_protocol;
use pyrycode_relay::tls::{self, CertResolver};
use pyrycode_relay::transport::Recipe;
use pyrycode_relay::{Listen, Origin};
use rustls::pki_types::CertificateDer;
use rustls::version::TLS13;
use rustls::{ClientConfig, RootCertStore};
use tls_support::client_config;
use wss::TlsClient;

/// Longest wait for one certificate (validation, issuance, retries).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);

/// A client that trusts only `root`.
fn trusting(root: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    client_config(roots, &[b"http/1.1"], &[&TLS13])
}

/// A binary and a phone through `addr`, each behind its own PROXY header;
/// one message each way. Returns the chain the relay served.
fn exchange_through(addr: SocketAddr, config: &Arc<ClientConfig>) -> Vec<CertificateDer<'static>> {
    let header =
        |port: u16| proxy_protocol::encode(SocketAddr::from(([203, 0, 113, 7], port)), addr, &[]);
    let (binary, _phone) = wss_pair(addr, config, [&header(40001), &header(40002)], "srv-acme");
    let chain = binary.stream.conn.peer_certificates().unwrap();
    chain.iter().map(|c| c.clone().into_owned()).collect()
}

#[test]
fn the_go_command_line_obtains_a_certificate_serves_wss_and_restarts_from_the_cache() {
    let work = temp_dir("acme-process");
    let (http_port, https_port) = (free_port(false), free_port(false));
    let pebble = Pebble::start(&work, http_port, https_port);
    let root = pebble.root();
    let cache = work.join("cache");
    let http = format!("--http-listen=127.0.0.1:{http_port}");
    let https = format!("--https-listen=127.0.0.1:{https_port}");
    let directory = pebble.directory_url();
    let ca_root = pebble.https_root.clone();
    let args = [
        "--domain",
        "relay.test",
        "--cert-cache",
        cache.to_str().unwrap(),
        &http,
        &https,
        "--https-proxy-protocol",
        "--acme-directory",
        &directory,
        "--acme-ca-root",
        ca_root.to_str().unwrap(),
        "--acme-email",
        "ops@relay.test",
        "--metrics-listen",
        "",
    ];
    let mut relay = RelayProcess::start_args(&args, 2);
    let addr = relay.listening[0];
    assert_eq!(addr.port(), https_port);
    relay.wait_logged_within("acme_certificate_obtained domain=relay.test", ISSUE_TIMEOUT);
    relay.wait_logged("tls_certificate_installed source=acme");
    assert!(
        relay.log_text().contains("acme_http01_answered"),
        "{}",
        relay.log_text()
    );
    let config = trusting(&root);
    let chain = exchange_through(addr, &config);
    assert_eq!(chain.len(), 2, "leaf and intermediate");

    // An upgrade in place (SIGUSR2): the new image takes the TLS listener
    // over, binds the HTTP-01 listener anew and serves the cached chain.
    relay.drain_log();
    let before = relay.log.len();
    relay.signal(libc::SIGUSR2);
    relay.wait_for_after(before, "handover_restored");
    let http01 = format!("listening addr=127.0.0.1:{http_port} serves=acme_http01");
    relay.wait_for_after(before, &http01);
    assert_eq!(exchange_through(addr, &config), chain);
    relay.stop();

    // Pebble is gone: the restart serves from the cache and asks no CA.
    drop(pebble);
    let mut relay = RelayProcess::start_args(&args, 2);
    relay.wait_logged("acme_cached_certificate domain=relay.test");
    let cached = exchange_through(relay.listening[0], &config);
    assert_eq!(cached, chain, "the cached chain is the one obtained");
    relay.drain_log();
    assert!(
        !relay.log_text().contains("acme_order_started"),
        "{}",
        relay.log_text()
    );
    relay.stop();
}

#[test]
fn tls_alpn01_is_answered_by_the_relays_loop_and_the_certificate_arrives_through_the_waker() {
    let work = temp_dir("acme-loop");
    let tls_port = free_port(false);
    // HTTP-01 is not offered: nothing listens on this port.
    let pebble = Pebble::start(&work, free_port(false), tls_port);
    let cache = work.join("cache");
    pyrycode_relay::acme::cache_dir::prepare(&cache).unwrap();
    let mut config = AcmeConfig::new("relay.test", &cache);
    config.directory_url = pebble.directory_url();
    config.ca_root = Some(pebble.https_root.clone());
    config.challenge_kinds = vec![ChallengeKind::TlsAlpn01];

    let mut h = Harness::start();
    let acme = Acme::start(config, h.relay().waker()).unwrap();
    let resolver = Arc::new(CertResolver::for_acme(acme.challenges().clone(), None));
    let addr = h
        .relay_mut()
        .listen(Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            origin: Origin::WebSocket,
            recipe: Recipe {
                proxy_protocol: false,
                tls: Some(tls::server_config(resolver.clone())),
            },
        })
        .unwrap();
    h.relay_mut()
        .serve_certificates(resolver.clone(), Some(acme));

    let deadline = Instant::now() + ISSUE_TIMEOUT;
    while resolver.certificate().is_none() {
        assert!(
            Instant::now() < deadline,
            "no certificate within {ISSUE_TIMEOUT:?}"
        );
        h.turn_waiting(Duration::from_millis(10));
    }
    let config = trusting(&pebble.root());
    let mut binary = TlsClient::connect(&mut h, addr, &config, "relay.test", b"");
    binary
        .handshake(&mut h)
        .expect("the obtained certificate verifies");
    assert_eq!(binary.tls.peer_certificates().unwrap().len(), 2);
    let (status, _) = binary.upgrade(
        &mut h,
        "/v1/server",
        &binary_headers("srv-alpn"),
        "relay.test",
    );
    assert_eq!(status, 101);
    h.relay_mut().shutdown();
}
