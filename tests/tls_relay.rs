//! TLS through the relay's loop, on real loopback sockets, with the
//! harness's manual clock: WSS binaries and phones over TLS 1.3 and 1.2,
//! messages across many records, TLS 1.0/1.1 refused with an alert and
//! nothing else, an idle TLS connection holding no buffer, certificate
//! reloads (live connections keep theirs, a bad file keeps the old one),
//! 421 for a `Host` that is not the domain, the handshake deadline before
//! and after the TLS handshake, TLS-ALPN-01 validation handshakes, the
//! ACME HTTP-01 listener, and closes with `close_notify`.

mod common;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/wss.rs"]
mod wss;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{binary_headers, envelope, phone_headers, Harness, Msg};
use pyrycode_relay::acme::{challenges, Acme, AcmeConfig, Backoff, ChallengeKind, Challenges};
use pyrycode_relay::tls::{self, CertResolver};
use pyrycode_relay::transport::Recipe;
use pyrycode_relay::{Config, Listen, Origin};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion};
use tls_support::{client_config, legacy_client_hello, trusting_client, TestCa};
use wss::{Ending, TlsClient};

const HTTP11: &[u8] = b"http/1.1";
const ACME_TLS: &[u8] = b"acme-tls/1";

/// A relay with a TLS WebSocket listener serving a certificate for
/// `relay.test` from files, and a client config that trusts it.
struct TlsRelay {
    h: Harness,
    tls_addr: SocketAddr,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    client: Arc<ClientConfig>,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-tls-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tls_relay(name: &str, tweak: impl FnOnce(&mut Config)) -> TlsRelay {
    let ca = TestCa::new("relay test root");
    let dir = temp_dir(name);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ca.issue(&["relay.test"]).write(&cert, &key);
    let resolver = Arc::new(CertResolver::from_files(cert.clone(), key.clone()).unwrap());
    let mut h = Harness::with_config(tweak);
    let tls_addr = listen_tls(&mut h, tls::server_config(resolver.clone()), false);
    h.relay_mut().serve_certificates(resolver, None);
    let client = client_config(ca.roots(), &[HTTP11], &[&TLS13, &TLS12]);
    TlsRelay {
        h,
        tls_addr,
        ca,
        cert,
        key,
        client,
    }
}

/// Opens a TLS WebSocket listener (after a PROXY header if asked).
fn listen_tls(h: &mut Harness, config: Arc<rustls::ServerConfig>, proxy: bool) -> SocketAddr {
    h.relay_mut()
        .listen(Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            origin: Origin::WebSocket,
            recipe: Recipe {
                proxy_protocol: proxy,
                tls: Some(config),
            },
        })
        .unwrap()
}

impl TlsRelay {
    /// A TLS client with its handshake done.
    fn client(&mut self, config: &Arc<ClientConfig>) -> TlsClient {
        let mut client = TlsClient::connect(&mut self.h, self.tls_addr, config, "relay.test", b"");
        client.handshake(&mut self.h).expect("handshake");
        client
    }

    fn binary(&mut self, server_id: &str) -> TlsClient {
        let config = self.client.clone();
        let mut client = self.client(&config);
        let (status, head) = client.upgrade(
            &mut self.h,
            "/v1/server",
            &binary_headers(server_id),
            "relay.test",
        );
        assert_eq!(status, 101, "{head}");
        client
    }

    fn phone(&mut self, server_id: &str) -> TlsClient {
        let config = self.client.clone();
        let mut client = self.client(&config);
        let (status, head) = client.upgrade(
            &mut self.h,
            "/v1/client",
            &phone_headers(server_id),
            "relay.test",
        );
        assert_eq!(status, 101, "{head}");
        client
    }
}

/// A phone's message reaches its binary in an envelope; the binary's reply
/// reaches the phone. Returns the phone's conn_id.
fn exchange(h: &mut Harness, binary: &mut TlsClient, phone: &mut TlsClient, frame: &[u8]) {
    phone.send_text(h, frame);
    let wrapped = binary.recv_text(h);
    let value: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
    let conn_id = value["conn_id"].as_str().unwrap().to_string();
    assert_eq!(wrapped, envelope(&conn_id, frame));
    binary.send_text(h, &envelope(&conn_id, frame));
    assert_eq!(phone.recv_text(h), frame);
}

#[test]
fn wss_binaries_and_phones_exchange_frames_over_tls_1_3_and_1_2() {
    let mut relay = tls_relay("exchange", |_| {});
    for (versions, expected) in [
        (&[&TLS13][..], ProtocolVersion::TLSv1_3),
        (&[&TLS12][..], ProtocolVersion::TLSv1_2),
    ] {
        relay.client = client_config(relay.ca.roots(), &[HTTP11], versions);
        let server_id = format!("srv-{expected:?}");
        let mut binary = relay.binary(&server_id);
        let mut phone = relay.phone(&server_id);
        for client in [&binary, &phone] {
            assert_eq!(client.tls.protocol_version(), Some(expected));
            assert_eq!(client.tls.alpn_protocol(), Some(HTTP11));
        }
        exchange(
            &mut relay.h,
            &mut binary,
            &mut phone,
            br#"{"type":"noise","n":1}"#,
        );
        exchange(
            &mut relay.h,
            &mut binary,
            &mut phone,
            br#"{"type":"noise","n":2}"#,
        );
    }
}

#[test]
fn messages_longer_than_a_record_cross_both_ways_intact() {
    let mut relay = tls_relay("long", |_| {});
    let mut binary = relay.binary("srv-long");
    let mut phone = relay.phone("srv-long");
    // 200 KB: about 13 records each way, and reads that end mid-record.
    let long = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200_000)).into_bytes();
    exchange(&mut relay.h, &mut binary, &mut phone, &long);
    exchange(
        &mut relay.h,
        &mut binary,
        &mut phone,
        br#"{"after":"long"}"#,
    );
}

#[test]
fn an_idle_tls_connection_holds_no_buffer() {
    let mut relay = tls_relay("idle", |_| {});
    let mut binary = relay.binary("srv-idle");
    let mut phone = relay.phone("srv-idle");
    exchange(&mut relay.h, &mut binary, &mut phone, br#"{"hello":1}"#);
    let stats = relay.h.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.connections_with_buffers, 0, "{stats:?}");
    let memory = relay.h.relay().memory();
    assert_eq!(memory.partial_input, 0);
    assert_eq!(memory.queued_output, 0);
}

#[test]
fn tls_1_0_and_1_1_get_a_protocol_version_alert_and_nothing_else() {
    let mut relay = tls_relay("legacy", |_| {});
    relay.h.set_addr(relay.tls_addr);
    for version in [0x0301u16, 0x0302] {
        let mut client = relay.h.connect();
        client.send_raw(&mut relay.h, &legacy_client_hello(version));
        let answer = client.body_until_eof(&mut relay.h);
        // One plaintext alert record: fatal (2), protocol_version (70).
        assert_eq!(
            answer,
            [0x15, 0x03, 0x03, 0x00, 0x02, 2, 70],
            "{version:#06x}"
        );
    }
    // The same hello as TLS 1.2 gets a ServerHello.
    let mut client = relay.h.connect();
    client.send_raw(&mut relay.h, &legacy_client_hello(0x0303));
    client.wait_received(&mut relay.h);
    let first = client.take_bytes();
    assert!(first.len() >= 6, "{first:?}");
    assert_eq!((first[0], first[5]), (0x16, 2), "a ServerHello record");
}

#[test]
fn a_client_offering_alpn_without_http11_is_refused() {
    let mut relay = tls_relay("alpn", |_| {});
    let h2_only = client_config(relay.ca.roots(), &[b"h2"], &[&TLS13]);
    let mut client = TlsClient::connect(&mut relay.h, relay.tls_addr, &h2_only, "relay.test", b"");
    let error = client.handshake(&mut relay.h).unwrap_err();
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "{error}"
    );
    assert!(client.is_closed(&mut relay.h));
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_only() {
    let mut relay = tls_relay("reload", |_| {});
    let mut binary = relay.binary("srv-reload");
    let old_leaf = binary.leaf();

    let issued = relay.ca.issue(&["relay.test"]);
    issued.write(&relay.cert, &relay.key);
    assert!(relay.h.relay_mut().reload_certificates());
    let mut phone = relay.phone("srv-reload");
    assert_eq!(
        phone.leaf(),
        issued.leaf,
        "the next connection gets the new one"
    );
    assert_ne!(phone.leaf(), old_leaf);
    exchange(
        &mut relay.h,
        &mut binary,
        &mut phone,
        br#"{"live":"still"}"#,
    );

    // A key that is not the certificate's: the reload fails, the new
    // certificate stays.
    std::fs::write(&relay.key, relay.ca.issue(&["relay.test"]).key_pem).unwrap();
    assert!(!relay.h.relay_mut().reload_certificates());
    let config = relay.client.clone();
    let next = relay.client(&config);
    assert_eq!(next.leaf(), issued.leaf);
    std::fs::write(&relay.cert, b"not PEM").unwrap();
    assert!(!relay.h.relay_mut().reload_certificates());
    assert_eq!(relay.client(&config).leaf(), issued.leaf);
    exchange(
        &mut relay.h,
        &mut binary,
        &mut phone,
        br#"{"live":"again"}"#,
    );
}

#[test]
fn a_host_that_is_not_the_domain_gets_421() {
    let mut relay = tls_relay("host", |config| config.host = Some("relay.test".into()));
    for host in [
        "relay.test",
        "relay.test:443",
        "RELAY.Test:8443",
        "relay.test.",
    ] {
        let config = relay.client.clone();
        let mut client = relay.client(&config);
        let (status, head) = client.upgrade(
            &mut relay.h,
            "/v1/server",
            &binary_headers(&format!("srv-{}", host.len())),
            host,
        );
        assert_eq!(status, 101, "{host}: {head}");
    }
    for host in [
        "other.test",
        "relay.test.evil",
        "www.relay.test",
        "127.0.0.1",
    ] {
        let config = relay.client.clone();
        let mut client = relay.client(&config);
        let (status, _) =
            client.upgrade(&mut relay.h, "/v1/server", &binary_headers("srv-x"), host);
        assert_eq!(status, 421, "{host}");
        assert_eq!(client.wait_end(&mut relay.h), Ending::CloseNotify);
    }
    // No Host at all, and /healthz for another name.
    for head in [
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: other.test\r\n\r\n",
    ] {
        let config = relay.client.clone();
        let mut client = relay.client(&config);
        client.send(&mut relay.h, head.as_bytes());
        let (status, response) = client.response(&mut relay.h);
        assert_eq!(status, 421, "{head:?}");
        assert!(response.starts_with("HTTP/1.1 421 Misdirected Request\r\n"));
    }
    let config = relay.client.clone();
    let mut client = relay.client(&config);
    client.send(
        &mut relay.h,
        b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    );
    assert_eq!(client.response(&mut relay.h).0, 200);
    let text = relay.h.relay().metrics_text();
    assert!(
        text.contains(r#"pyrycode_relay_http_refusals_total{reason="misdirected",status="421"} 6"#),
        "{text}"
    );
}

#[test]
fn the_handshake_deadline_closes_silently_before_tls_and_with_408_after() {
    let mut relay = tls_relay("deadline", |_| {});
    relay.h.set_addr(relay.tls_addr);
    // Half a ClientHello, then nothing: no HTTP was spoken, none is answered.
    let mut silent = relay.h.connect();
    silent.send_raw(&mut relay.h, &legacy_client_hello(0x0303)[..20]);
    let mut idle = relay.h.connect();
    let config = relay.client.clone();
    let mut established = relay.client(&config);
    relay.h.advance(Duration::from_secs(5));
    assert!(silent.body_until_eof(&mut relay.h).is_empty());
    assert!(idle.body_until_eof(&mut relay.h).is_empty());
    let (status, _) = established.response(&mut relay.h);
    assert_eq!(status, 408);
    assert_eq!(established.wait_end(&mut relay.h), Ending::CloseNotify);
}

#[test]
fn a_close_the_relay_starts_ends_with_close_notify() {
    let mut relay = tls_relay("close", |_| {});
    let mut binary = relay.binary("srv-close");
    relay.h.relay_mut().shutdown();
    assert_eq!(
        binary.recv_data(&mut relay.h),
        Msg::Close(Some(1001), "shutting down".into())
    );
    binary.send(
        &mut relay.h,
        &common::masked_frame(0x8, true, &1001u16.to_be_bytes()),
    );
    assert_eq!(binary.wait_end(&mut relay.h), Ending::CloseNotify);
    binary.hang_up(&mut relay.h);
    assert!(relay.h.relay().is_finished());
}

#[test]
fn a_corrupt_record_ends_that_connection_only() {
    let mut relay = tls_relay("corrupt", |_| {});
    let mut binary = relay.binary("srv-corrupt");
    let mut phone = relay.phone("srv-corrupt");
    let mut other_binary = relay.binary("srv-other");
    let mut other_phone = relay.phone("srv-other");
    exchange(&mut relay.h, &mut binary, &mut phone, br#"{"n":1}"#);
    // An application-data record whose tag cannot verify.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend_from_slice(&[0xAB; 0x40]);
    phone.tcp.write_all(&record).unwrap();
    assert_ne!(phone.wait_end(&mut relay.h), Ending::CloseNotify);
    // The binary hears that its phone is gone; the others go on.
    let notice: serde_json::Value =
        serde_json::from_slice(&binary.recv_text(&mut relay.h)).unwrap();
    assert_eq!(notice["close_code"], 1001);
    exchange(
        &mut relay.h,
        &mut other_binary,
        &mut other_phone,
        br#"{"n":2}"#,
    );
}

/// A relay whose TLS listener serves ACME certificates: `served` to
/// ordinary clients and the published TLS-ALPN-01 certificate to
/// validation handshakes.
#[test]
fn a_tls_alpn01_validation_gets_the_challenge_certificate_then_close_notify() {
    let ca = TestCa::new("relay test root");
    let served = ca.issue(&["relay.test"]);
    let certified =
        pyrycode_relay::tls::pem::from_pem(served.chain_pem.as_bytes(), served.key_pem.as_bytes())
            .unwrap();
    let published = Arc::new(Challenges::default());
    let challenge = challenges::tls_alpn01_certificate("relay.test", &[7; 32]).unwrap();
    published.publish_tls_alpn01("relay.test", challenge.clone());
    let resolver = Arc::new(CertResolver::for_acme(published, Some(certified)));
    let mut h = Harness::start();
    let addr = listen_tls(&mut h, tls::server_config(resolver.clone()), false);
    h.relay_mut().serve_certificates(resolver, None);

    let (validator, seen) = trusting_client(&[ACME_TLS]);
    let mut validation = TlsClient::connect(&mut h, addr, &validator, "relay.test", b"");
    validation.handshake(&mut h).expect("validation handshake");
    assert_eq!(validation.tls.alpn_protocol(), Some(ACME_TLS));
    assert_eq!(seen.lock().unwrap()[0], challenge.cert[0]);
    assert_eq!(validation.wait_end(&mut h), Ending::CloseNotify);
    assert!(validation.unread_plaintext().is_empty());

    // Another name has no challenge: no certificate, no handshake.
    let mut unknown = TlsClient::connect(&mut h, addr, &validator, "other.test", b"");
    assert!(unknown.handshake(&mut h).is_err());

    // An ordinary client gets the ACME certificate and WebSocket.
    let client = client_config(ca.roots(), &[HTTP11], &[&TLS13]);
    let mut binary = TlsClient::connect(&mut h, addr, &client, "relay.test", b"");
    binary.handshake(&mut h).unwrap();
    assert_eq!(binary.leaf(), served.leaf);
    let (status, _) = binary.upgrade(
        &mut h,
        "/v1/server",
        &binary_headers("srv-acme"),
        "relay.test",
    );
    assert_eq!(status, 101);
}

#[test]
fn the_http01_listener_answers_published_tokens_and_404_to_everything_else() {
    let dir = temp_dir("http01");
    let mut config = AcmeConfig::new("relay.test", dir.join("cache"));
    // Nothing listens there: the thread's first order fails and backs off.
    config.directory_url = "https://127.0.0.1:9/dir".into();
    config.challenge_kinds = vec![ChallengeKind::Http01];
    config.backoff = Backoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    pyrycode_relay::acme::cache_dir::prepare(&config.cache_dir).unwrap();
    let mut h = Harness::start();
    let acme = Acme::start(config, h.relay().waker()).unwrap();
    acme.challenges()
        .publish_http01("tok-en_1", "tok-en_1.thumbprint");
    let resolver = Arc::new(CertResolver::for_acme(acme.challenges().clone(), None));
    h.relay_mut().serve_certificates(resolver, Some(acme));
    let addr = h
        .relay_mut()
        .listen(Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            origin: Origin::AcmeHttp01,
            recipe: Recipe::plain(),
        })
        .unwrap();
    h.set_addr(addr);

    let (status, head, mut client) =
        h.request("GET /.well-known/acme-challenge/tok-en_1 HTTP/1.1\r\nHost: relay.test\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: text/plain\r\n"), "{head}");
    assert_eq!(client.body_until_eof(&mut h), b"tok-en_1.thumbprint");
    for path in [
        "/.well-known/acme-challenge/other",
        "/.well-known/acme-challenge/",
        "/healthz",
        "/metrics",
        "/tok-en_1",
    ] {
        let (status, _, _) = h.request(&format!("GET {path} HTTP/1.1\r\nHost: relay.test\r\n\r\n"));
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = h.upgrade("/v1/server", &binary_headers("srv-http01"));
    assert_eq!(status, 404);
    drop(client);
    h.relay_mut().shutdown(); // stops the ACME thread
    h.settle();
    assert!(h.relay().is_finished());
}
