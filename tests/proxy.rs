//! The PROXY protocol v2 through the relay's loop, on real loopback
//! sockets, with the harness's manual clock: a header in one piece, with
//! the request, or cut anywhere; every refusal (missing, malformed, v1,
//! LOCAL, UDP, UNIX, too long) and a late header closing the connection
//! with nothing written; the header's own 5 s deadline beside
//! `--handshake-timeout`; the header's source as the key of the rate limit
//! and of the per-IP cap; and PROXY before TLS, the header arriving with
//! the ClientHello or before it.

mod common;
#[path = "support/tls.rs"]
mod tls_support;
#[path = "support/wss.rs"]
mod wss;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    binary_headers, capture_logs, phone_headers, take_logs, upgrade_head, Client, Harness,
};
use pyrycode_relay::proxy_protocol::{self, SIGNATURE};
use pyrycode_relay::tls::{self, CertResolver};
use pyrycode_relay::transport::Recipe;
use pyrycode_relay::{Config, Listen, Origin};
use rustls::version::{TLS12, TLS13};
use tls_support::{client_config, TestCa};
use wss::{Ending, TlsClient};

/// A relay whose test listener (`h.addr()`) wants a PROXY header.
fn proxied(tweak: impl FnOnce(&mut Config)) -> Harness {
    let mut h = Harness::with_config(tweak);
    let addr = listen_proxied(&mut h, None);
    h.set_addr(addr);
    h
}

/// Opens a WebSocket listener on `h` that wants a PROXY header, then TLS
/// with `tls` if given; its address.
fn listen_proxied(h: &mut Harness, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let recipe = Recipe {
        proxy_protocol: true,
        tls,
    };
    let listen = Listen {
        addr: "127.0.0.1:0".parse().unwrap(),
        origin: Origin::WebSocket,
        recipe,
    };
    h.relay_mut().listen(listen).expect("a PROXY listener")
}

/// The header a load balancer sends for a client at `source`.
fn header(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = match source {
        SocketAddr::V4(_) => "10.0.0.1:443".parse().unwrap(),
        SocketAddr::V6(_) => "[2001:db8::1]:443".parse().unwrap(),
    };
    proxy_protocol::encode(source, destination, &[])
}

/// Sends `header` and an upgrade; returns the status and the client.
fn upgrade_behind(
    h: &mut Harness,
    header: &[u8],
    path: &str,
    headers: &[(&str, String)],
) -> (u16, Client) {
    let mut client = h.connect();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(upgrade_head(path, headers).as_bytes());
    client.send_raw(h, &bytes);
    let (status, _) = client.response(h);
    (status, client)
}

/// Asserts that the relay closes `client` without having written a byte.
fn assert_closed_silently(h: &mut Harness, client: &mut Client, what: &str) {
    let bytes = client.body_until_eof(h);
    assert!(bytes.is_empty(), "{what}: the relay wrote {bytes:?}");
}

#[test]
fn binaries_and_phones_behind_a_header_exchange_frames_and_are_logged_by_its_source() {
    capture_logs();
    let mut h = proxied(|_| {});
    let (status, mut binary) = upgrade_behind(
        &mut h,
        &header("203.0.113.7:40001"),
        "/v1/server",
        &binary_headers("srv-proxied"),
    );
    assert_eq!(status, 101);
    // A TCP6 header with TLVs, sent apart from the request.
    let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
    let v6 = proxy_protocol::encode(
        "[2001:db8::7]:40002".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
        &tlv,
    );
    let mut phone = h.connect();
    phone.send_raw(&mut h, &v6);
    let head = upgrade_head("/v1/client", &phone_headers("srv-proxied"));
    phone.send_raw(&mut h, head.as_bytes());
    assert_eq!(phone.response(&mut h).0, 101);
    phone.send_text(&mut h, br#"{"n":1}"#);
    let wrapped: serde_json::Value = serde_json::from_slice(&binary.recv_text(&mut h)).unwrap();
    assert_eq!(wrapped["frame"], serde_json::json!({"n": 1}));
    // Every line after the header names the client, not the balancer.
    let logs: Vec<String> = take_logs()
        .into_iter()
        .filter(|line| !line.contains("proxy_header "))
        .collect();
    let logs = logs.join("\n");
    assert!(
        logs.contains("server_claimed server_id=srv-proxied remote=203.0.113.7:40001"),
        "{logs}"
    );
    assert!(logs.contains("remote=[2001:db8::7]:40002"), "{logs}");
    assert!(!logs.contains("remote=127.0.0.1"), "{logs}");
}

#[test]
fn a_header_cut_into_single_bytes_is_accepted() {
    let mut h = proxied(|_| {});
    let mut client = h.connect();
    for byte in header("198.51.100.20:5000") {
        client.send_raw(&mut h, &[byte]);
    }
    assert!(!client.is_closed(&mut h));
    let head = upgrade_head("/v1/server", &binary_headers("srv-cut"));
    client.send_raw(&mut h, head.as_bytes());
    assert_eq!(client.response(&mut h).0, 101);
    assert_eq!(h.stats().connections_with_buffers, 0);
}

#[test]
fn every_refused_header_closes_without_a_byte() {
    let mut h = proxied(|_| {});
    let good = header("203.0.113.7:40001");
    let with = |at: usize, value: u8| {
        let mut bytes = good.clone();
        bytes[at] = value;
        bytes
    };
    let mut too_long = SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0x04, 0x00]); // 1024 bytes follow
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing",
            upgrade_head("/v1/server", &binary_headers("srv")).into_bytes(),
        ),
        ("a TLS ClientHello", vec![0x16, 0x03, 0x01, 0x00, 0x05]),
        (
            "v1 text",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40001 443\r\n".to_vec(),
        ),
        (
            "LOCAL, then an upgrade (a LOCAL connection may only ask for /healthz)",
            [
                with(12, 0x20),
                upgrade_head("/v1/server", &binary_headers("srv")).into_bytes(),
            ]
            .concat(),
        ),
        ("bad version", with(12, 0x11)),
        ("bad command", with(12, 0x22)),
        ("UDP", with(13, 0x12)),
        ("UNIX", with(13, 0x31)),
        ("UNSPEC", with(13, 0x00)),
        ("short addresses", with(15, 0x04)),
        ("too long", too_long),
        ("signature typo", with(3, b'X')),
    ];
    for (what, bytes) in cases {
        let mut client = h.connect();
        client.send_raw(&mut h, &bytes);
        assert_closed_silently(&mut h, &mut client, what);
    }
    assert_eq!(h.stats().connections, 0);
}

/// A balancer's health check (HAProxy `check-send-proxy`): a LOCAL header
/// with no address block, then `/healthz` without a `Host`. The PROXY v2
/// spec says a receiver must accept LOCAL; the relay answers the health
/// check and nothing else on such a connection.
#[test]
fn a_local_header_gets_healthz_and_nothing_else() {
    let mut h = proxied(|config| config.host = Some("relay.test".into()));
    // Captured from HAProxy 2.6: LOCAL, UNSPEC, length 0.
    let mut check = SIGNATURE.to_vec();
    check.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    check.extend_from_slice(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut client = h.connect();
    client.send_raw(&mut h, &check);
    let (status, head) = client.response(&mut h);
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(client.body_until_eof(&mut h)).unwrap();
    assert!(body.starts_with("{\"status\":\"ok\""), "{body}");
    client.hang_up(&mut h);
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn a_late_header_closes_without_a_byte_after_5_seconds_whatever_the_handshake_timeout() {
    let mut h = proxied(|config| config.handshake_timeout = Duration::from_secs(30));
    let mut nothing = h.connect();
    let mut partial = h.connect();
    partial.send_raw(&mut h, &header("203.0.113.7:40001")[..10]);
    let mut in_time = h.connect();
    h.advance(Duration::from_millis(4900));
    in_time.send_raw(&mut h, &header("203.0.113.8:40001"));
    h.advance(Duration::from_millis(100));
    assert_closed_silently(&mut h, &mut nothing, "no header");
    assert_closed_silently(&mut h, &mut partial, "a partial header");
    // The header came in time: the request may take the rest of
    // --handshake-timeout (30 s from the accept).
    h.advance(Duration::from_secs(20));
    assert!(!in_time.is_closed(&mut h));
    let head = upgrade_head("/v1/server", &binary_headers("srv-late"));
    in_time.send_raw(&mut h, head.as_bytes());
    assert_eq!(in_time.response(&mut h).0, 101);

    // Without a request by then: 408, as on any listener.
    let mut slow = h.connect();
    slow.send_raw(&mut h, &header("203.0.113.9:40001"));
    h.advance(Duration::from_secs(29));
    assert!(!slow.is_closed(&mut h));
    h.advance(Duration::from_secs(1));
    assert_eq!(slow.response(&mut h).0, 408);
}

#[test]
fn a_shorter_handshake_timeout_bounds_the_header_too() {
    let mut h = proxied(|config| config.handshake_timeout = Duration::from_secs(2));
    let mut nothing = h.connect();
    h.advance(Duration::from_secs(2));
    assert_closed_silently(&mut h, &mut nothing, "no header within 2 s");
}

#[test]
fn the_rate_limit_counts_the_header_source_not_the_peer() {
    let mut h = proxied(|config| {
        config.rate_limit_burst = 2;
        config.rate_limit_interval = Duration::from_secs(60);
    });
    let a = header("203.0.113.7:40001");
    let b = header("203.0.113.8:40001");
    let mut kept = Vec::new();
    for n in 0..2 {
        let (status, client) = upgrade_behind(
            &mut h,
            &a,
            "/v1/server",
            &binary_headers(&format!("srv-a{n}")),
        );
        assert_eq!(status, 101);
        kept.push(client);
    }
    let (status, _) = upgrade_behind(&mut h, &a, "/v1/server", &binary_headers("srv-a2"));
    assert_eq!(status, 429, "a third attempt from 203.0.113.7");
    // Every connection came from 127.0.0.1; the other client is not limited.
    let (status, _b) = upgrade_behind(&mut h, &b, "/v1/server", &binary_headers("srv-b"));
    assert_eq!(status, 101);
}

#[test]
fn the_per_ip_cap_counts_the_header_source_not_the_peer() {
    let mut h = proxied(|config| config.max_connections_per_ip = 1);
    let a = header("[2001:db8::a]:40001");
    let b = header("[2001:db8::b]:40001");
    let (status, _a) = upgrade_behind(&mut h, &a, "/v1/server", &binary_headers("srv-a"));
    assert_eq!(status, 101);
    let (status, _) = upgrade_behind(&mut h, &a, "/v1/server", &binary_headers("srv-a2"));
    assert_eq!(status, 429);
    let (status, _b) = upgrade_behind(&mut h, &b, "/v1/server", &binary_headers("srv-b"));
    assert_eq!(status, 101);
}

/// A relay whose test listener wants a PROXY header, then TLS.
fn proxied_tls(
    tweak: impl FnOnce(&mut Config),
) -> (Harness, SocketAddr, Arc<rustls::ClientConfig>) {
    let ca = TestCa::new("relay test root");
    let dir = std::env::temp_dir().join(format!("relay-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ca.issue(&["relay.test"]).write(&cert, &key);
    let resolver = Arc::new(CertResolver::from_files(cert, key).unwrap());
    let mut h = Harness::with_config(tweak);
    let addr = listen_proxied(&mut h, Some(tls::server_config(resolver.clone())));
    h.relay_mut().serve_certificates(resolver, None);
    let client = client_config(ca.roots(), &[b"http/1.1"], &[&TLS13, &TLS12]);
    (h, addr, client)
}

#[test]
fn a_header_then_tls_carries_wss_whether_the_hello_comes_with_it_or_after() {
    let (mut h, addr, config) = proxied_tls(|config| config.max_connections_per_ip = 1);
    // The header and the ClientHello in one segment: the bytes after the
    // header are TLS, processed at once.
    let mut binary = TlsClient::connect_with_hello(
        &mut h,
        addr,
        &config,
        "relay.test",
        &header("203.0.113.7:1"),
    );
    binary
        .handshake(&mut h)
        .expect("handshake after a header in the same segment");
    let (status, _) = binary.upgrade(
        &mut h,
        "/v1/server",
        &binary_headers("srv-pt"),
        "relay.test",
    );
    assert_eq!(status, 101);
    // The header alone first, the ClientHello later.
    let mut phone = TlsClient::connect(
        &mut h,
        addr,
        &config,
        "relay.test",
        &header("203.0.113.8:1"),
    );
    phone
        .handshake(&mut h)
        .expect("handshake after a header on its own");
    let (status, _) = phone.upgrade(&mut h, "/v1/client", &phone_headers("srv-pt"), "relay.test");
    assert_eq!(status, 101);
    phone.send_text(&mut h, br#"{"over":"tls"}"#);
    let wrapped: serde_json::Value = serde_json::from_slice(&binary.recv_text(&mut h)).unwrap();
    assert_eq!(wrapped["frame"], serde_json::json!({"over": "tls"}));
    // The per-IP cap sees the header's source through TLS too.
    let mut again = TlsClient::connect_with_hello(
        &mut h,
        addr,
        &config,
        "relay.test",
        &header("203.0.113.7:2"),
    );
    again.handshake(&mut h).unwrap();
    let (status, _) = again.upgrade(
        &mut h,
        "/v1/server",
        &binary_headers("srv-pt2"),
        "relay.test",
    );
    assert_eq!(status, 429);
    assert_eq!(again.wait_end(&mut h), Ending::CloseNotify);
}

#[test]
fn tls_without_the_header_is_refused_without_a_byte() {
    let (mut h, addr, config) = proxied_tls(|_| {});
    let mut client = TlsClient::connect(&mut h, addr, &config, "relay.test", b"");
    let mut closed = false;
    for _ in 0..1000 {
        if client.is_closed(&mut h) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the relay kept a connection without a header");
    assert!(
        client.tls.peer_certificates().is_none(),
        "no ServerHello came back"
    );
    // The same, byte for byte.
    h.set_addr(addr);
    let mut raw = h.connect();
    raw.send_raw(
        &mut h,
        &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00],
    );
    assert_closed_silently(&mut h, &mut raw, "a ClientHello on a PROXY listener");
}
