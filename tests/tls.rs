//! The TLS layer (`src/tls/`) on its own, with handshakes in memory:
//! versions, ALPN, certificates from files in every key format, SIGHUP
//! reloads (good and bad files), and the ACME resolver's TLS-ALPN-01
//! answers. The socket-level tests (WSS through the loop) come with the
//! loop integration.

#[path = "support/tls.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyrycode_relay::acme::{challenges, Challenges};
use pyrycode_relay::tls::{self, CertResolver, LoadError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::version::{TLS12, TLS13};
use rustls::{ProtocolVersion, RootCertStore, ServerConnection};

use support::{client_config, handshake, legacy_client_hello, trusting_client, TestCa};

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";
const ACME_TLS: &[u8] = b"acme-tls/1";

/// A fresh directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

fn resolver_from(files: &Files) -> Arc<CertResolver> {
    Arc::new(CertResolver::from_files(files.cert.clone(), files.key.clone()).unwrap())
}

#[test]
fn tls13_and_tls12_handshakes_negotiate_http11_and_carry_data() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("versions");
    let files = files(&dir);
    let issued = ca.issue(&["relay.test"]);
    issued.write(&files.cert, &files.key);
    let server = tls::server_config(resolver_from(&files));

    for (versions, expected) in [
        (&[&TLS13][..], ProtocolVersion::TLSv1_3),
        (&[&TLS12][..], ProtocolVersion::TLSv1_2),
    ] {
        let client = client_config(ca.roots(), &[H2, HTTP11], versions);
        let mut pair = handshake(&server, &client, "relay.test").unwrap();
        assert_eq!(pair.server.protocol_version(), Some(expected));
        assert_eq!(pair.server.alpn_protocol(), Some(HTTP11));
        assert_eq!(pair.server.server_name(), Some("relay.test"));
        assert_eq!(pair.server_leaf(), issued.leaf);
        assert_eq!(
            pair.echo(b"GET / HTTP/1.1\r\n\r\n"),
            b"GET / HTTP/1.1\r\n\r\n"
        );
    }
}

#[test]
fn a_client_without_alpn_is_served_and_one_without_http11_is_refused() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("alpn");
    let files = files(&dir);
    ca.issue(&["relay.test"]).write(&files.cert, &files.key);
    let server = tls::server_config(resolver_from(&files));

    let plain = client_config(ca.roots(), &[], &[&TLS13]);
    let pair = handshake(&server, &plain, "relay.test").unwrap();
    assert_eq!(pair.server.alpn_protocol(), None);

    let h2_only = client_config(ca.roots(), &[H2], &[&TLS13]);
    let error = handshake(&server, &h2_only, "relay.test").err().unwrap();
    assert!(
        matches!(error, rustls::Error::NoApplicationProtocol),
        "{error:?}"
    );
}

/// Feeds a raw ClientHello to the server; returns its verdict and the
/// record types it wrote back.
fn answer_to(server: &Arc<rustls::ServerConfig>, hello: &[u8]) -> (bool, Vec<u8>) {
    let mut conn = ServerConnection::new(server.clone()).unwrap();
    support::deliver(hello, &mut conn).ok();
    let accepted = conn.process_new_packets().is_ok();
    let wire = support::drain(&mut conn);
    (accepted, record_types(&wire))
}

fn record_types(mut wire: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while wire.len() >= 5 {
        types.push(wire[0]);
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        wire = &wire[(5 + len).min(wire.len())..];
    }
    types
}

#[test]
fn tls_1_0_and_1_1_are_refused_with_an_alert() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("legacy");
    let files = files(&dir);
    ca.issue(&["relay.test"]).write(&files.cert, &files.key);
    let server = tls::server_config(resolver_from(&files));

    // The same hello with version 1.2 is answered with a ServerHello:
    // the refusals below are about the version only.
    let (accepted, types) = answer_to(&server, &legacy_client_hello(0x0303));
    assert!(accepted);
    assert_eq!(types.first(), Some(&0x16), "handshake record expected");

    for version in [0x0301, 0x0302] {
        let (accepted, types) = answer_to(&server, &legacy_client_hello(version));
        assert!(!accepted, "version {version:#06x} accepted");
        assert_eq!(types, [0x15], "version {version:#06x}: only an alert");
    }
}

#[test]
fn every_key_format_loads_and_serves() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    for name in ["ec-p256-sec1", "rsa2048-pkcs1", "ed25519-pkcs8"] {
        let files = Files {
            cert: data.join(format!("{name}.crt")),
            key: data.join(format!("{name}.key")),
        };
        let server = tls::server_config(resolver_from(&files));
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(data.join("ca.crt")).unwrap())
            .unwrap();
        let cert = CertificateDer::from_pem_file(&files.cert).unwrap();
        let client = client_config(roots, &[HTTP11], &[&TLS13, &TLS12]);
        let mut pair =
            handshake(&server, &client, "relay.test").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pair.server_leaf(), cert, "{name}");
        assert_eq!(pair.echo(b"ping"), b"ping");
    }
}

#[test]
fn the_whole_chain_is_served() {
    // root → intermediate → leaf; the client trusts only the root.
    let chain = support::ChainCa::new();
    let dir = temp_dir("chain");
    let files = files(&dir);
    let issued = chain.issue(&["relay.test"]);
    issued.write(&files.cert, &files.key);
    let server = tls::server_config(resolver_from(&files));
    let client = client_config(chain.roots(), &[HTTP11], &[&TLS13]);
    let pair = handshake(&server, &client, "relay.test").unwrap();
    assert_eq!(pair.client.peer_certificates().unwrap().len(), 2);
}

#[test]
fn reload_serves_the_new_certificate_to_new_handshakes_and_keeps_live_ones() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("reload");
    let files = files(&dir);
    let first = ca.issue(&["relay.test"]);
    first.write(&files.cert, &files.key);
    let resolver = resolver_from(&files);
    let server = tls::server_config(resolver.clone());
    let client = client_config(ca.roots(), &[HTTP11], &[&TLS13]);
    let mut live = handshake(&server, &client, "relay.test").unwrap();

    let second = ca.issue(&["relay.test"]);
    second.write(&files.cert, &files.key);
    assert!(resolver.reload().unwrap());

    let next = handshake(&server, &client, "relay.test").unwrap();
    assert_eq!(next.server_leaf(), second.leaf);
    assert_eq!(live.server_leaf(), first.leaf);
    assert_eq!(live.echo(b"still here"), b"still here");
}

/// Spoils the certificate files in one way.
type BreakFiles<'a> = Box<dyn Fn() + 'a>;
/// Whether a reload error is the one expected.
type IsExpected = fn(&LoadError) -> bool;

#[test]
fn a_bad_reload_keeps_the_old_certificate_and_says_why() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("bad-reload");
    let files = files(&dir);
    let good = ca.issue(&["relay.test"]);
    good.write(&files.cert, &files.key);
    let resolver = resolver_from(&files);
    let server = tls::server_config(resolver.clone());
    let client = client_config(ca.roots(), &[HTTP11], &[&TLS13]);
    let other = ca.issue(&["relay.test"]);

    let cases: Vec<(&str, BreakFiles, IsExpected)> = vec![
        (
            "garbage certificate",
            Box::new(|| std::fs::write(&files.cert, "not a certificate").unwrap()),
            |e| matches!(e, LoadError::NoCertificate(_)),
        ),
        (
            "missing key file",
            Box::new(|| std::fs::remove_file(&files.key).unwrap()),
            |e| matches!(e, LoadError::Read { .. }),
        ),
        (
            "key of another certificate",
            Box::new(|| std::fs::write(&files.key, &other.key_pem).unwrap()),
            |e| e.to_string().contains("does not belong"),
        ),
        (
            "certificate as key",
            Box::new(|| std::fs::write(&files.key, &good.chain_pem).unwrap()),
            |e| matches!(e, LoadError::NoPrivateKey(_)),
        ),
    ];
    for (name, break_files, expected) in cases {
        good.write(&files.cert, &files.key);
        break_files();
        let error = resolver.reload().expect_err(name);
        assert!(expected(&error), "{name}: {error}");
        let pair = handshake(&server, &client, "relay.test").unwrap();
        assert_eq!(pair.server_leaf(), good.leaf, "{name}");
    }
}

#[test]
fn start_fails_on_unusable_files() {
    let dir = temp_dir("start");
    let files = files(&dir);
    let error = CertResolver::from_files(files.cert.clone(), files.key.clone()).unwrap_err();
    assert!(error.to_string().contains("cert.pem"), "{error}");
}

fn acme_resolver(challenges: &Arc<Challenges>) -> Arc<CertResolver> {
    Arc::new(CertResolver::for_acme(challenges.clone(), None))
}

#[test]
fn acme_mode_fails_handshakes_until_a_certificate_arrives() {
    let ca = TestCa::new("test root");
    let challenges = Arc::new(Challenges::default());
    let resolver = acme_resolver(&challenges);
    let server = tls::server_config(resolver.clone());
    let client = client_config(ca.roots(), &[HTTP11], &[&TLS13]);
    assert!(handshake(&server, &client, "relay.test").is_err());

    let issued = ca.issue(&["relay.test"]);
    let certified = tls::pem::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes());
    resolver.set_certificate(certified.unwrap());
    let pair = handshake(&server, &client, "relay.test").unwrap();
    assert_eq!(pair.server_leaf(), issued.leaf);
    assert_eq!(pair.server.alpn_protocol(), Some(HTTP11));
}

#[test]
fn tls_alpn01_validation_gets_the_challenge_certificate_and_only_it() {
    let ca = TestCa::new("test root");
    let challenges = Arc::new(Challenges::default());
    let resolver = acme_resolver(&challenges);
    let issued = ca.issue(&["relay.test"]);
    let certified = tls::pem::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes());
    resolver.set_certificate(certified.unwrap());
    let server = tls::server_config(resolver);
    let (validator, seen) = trusting_client(&[ACME_TLS]);

    // Nothing published: the validation handshake fails.
    assert!(handshake(&server, &validator, "relay.test").is_err());

    let challenge = challenges::tls_alpn01_certificate("relay.test", &[9; 32]).unwrap();
    let challenge_leaf = challenge.end_entity_cert().unwrap().clone().into_owned();
    challenges.publish_tls_alpn01("relay.test", challenge);
    let pair = handshake(&server, &validator, "relay.test").unwrap();
    assert_eq!(pair.server.alpn_protocol(), Some(ACME_TLS));
    assert!(tls::is_acme_validation(pair.server.alpn_protocol()));
    assert_eq!(seen.lock().unwrap().last(), Some(&challenge_leaf));

    // Another name, or a client offering more than acme-tls/1, is not a
    // validation request.
    assert!(handshake(&server, &validator, "other.test").is_err());
    let (browser, seen) = trusting_client(&[HTTP11, ACME_TLS]);
    let pair = handshake(&server, &browser, "relay.test").unwrap();
    assert_eq!(pair.server.alpn_protocol(), Some(HTTP11));
    assert_eq!(seen.lock().unwrap().last(), Some(&issued.leaf));
}

#[test]
fn files_mode_never_offers_acme_tls() {
    let ca = TestCa::new("test root");
    let dir = temp_dir("no-acme");
    let files = files(&dir);
    ca.issue(&["relay.test"]).write(&files.cert, &files.key);
    let server = tls::server_config(resolver_from(&files));
    assert_eq!(server.alpn_protocols, [HTTP11.to_vec()]);
    let (validator, _) = trusting_client(&[ACME_TLS]);
    assert!(handshake(&server, &validator, "relay.test").is_err());
}
