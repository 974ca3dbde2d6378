//! Server-side CPU of a full TLS 1.3 handshake (ECDSA P-256 certificate)
//! and of sealing records, for the crypto provider chosen by the feature
//! (`ring` or `aws`). Client and server run in memory on one thread; only
//! the server's share is timed for the handshake.
//!
//! `KX=x25519` restricts key exchange to X25519 on both sides (aws-lc-rs
//! otherwise negotiates the X25519MLKEM768 hybrid, which ring lacks).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[cfg(feature = "ring")]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
#[cfg(feature = "aws")]
fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
    let cert: CertificateDer<'static> = params.self_signed(&key).unwrap().der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut provider = provider();
    if std::env::var("KX").as_deref() == Ok("x25519") {
        provider
            .kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::X25519);
    }
    let provider = Arc::new(provider);
    let versions = [&rustls::version::TLS13];
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

fn transfer(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> bool {
    let mut wire = Vec::new();
    from(&mut wire);
    if !wire.is_empty() {
        to(&wire);
    }
    !wire.is_empty()
}

fn connect(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ServerConnection, ClientConnection, u128) {
    let name = ServerName::try_from("relay.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut server_ns = 0;
    loop {
        let sent = transfer(
            &mut |w| {
                while c.wants_write() {
                    c.write_tls(w).unwrap();
                }
            },
            &mut |mut r: &[u8]| {
                let start = Instant::now();
                while !r.is_empty() {
                    s.read_tls(&mut r).unwrap();
                    s.process_new_packets().unwrap();
                }
                server_ns += start.elapsed().as_nanos();
            },
        );
        let start = Instant::now();
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        server_ns += start.elapsed().as_nanos();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
            c.process_new_packets().unwrap();
        }
        if !sent && wire.is_empty() && !c.is_handshaking() && !s.is_handshaking() {
            return (s, c, server_ns);
        }
    }
}

fn main() {
    let (server, client) = configs();
    let n = 2000;
    let mut server_ns = 0;
    for _ in 0..n {
        server_ns += connect(&server, &client).2;
    }
    println!(
        "full TLS 1.3 handshake, ECDSA P-256: server {:.1} us",
        server_ns as f64 / 1e3 / n as f64
    );
    let (mut s, mut c, _) = connect(&server, &client);
    for size in [100usize, 1024, 16384] {
        let message = vec![7u8; size];
        let mut back = vec![0u8; size];
        let iterations = if size > 1000 { 20_000 } else { 200_000 };
        let mut seal_ns = 0;
        for _ in 0..iterations {
            let start = Instant::now();
            s.writer().write_all(&message).unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            seal_ns += start.elapsed().as_nanos();
            let mut r = &wire[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                c.process_new_packets().unwrap();
            }
            c.reader().read_exact(&mut back).unwrap();
        }
        println!(
            "record {size} B: server seal {:.2} us",
            seal_ns as f64 / 1e3 / iterations as f64
        );
    }
}
