//! Whole connections through the real relay loop: the relay runs
//! in-process with a `ManualClock` (as in `tests/common/mod.rs`) and the
//! fuzzer's bytes arrive on a real loopback socket, cut into writes at
//! fuzzer-chosen points, with relay time moved between writes by a
//! fuzzer-chosen amount (so handshake, message, ping and pong deadlines
//! fire mid-stream).
//!
//! The first byte picks what the stream is (`mode % 3`):
//! - raw bytes from the first byte on (the HTTP phase and beyond),
//! - a phone's bytes after a valid upgrade (its binary is connected),
//! - a binary's bytes after a valid upgrade (one phone is connected);
//!
//! and the listener it goes to (`mode / 3 % 6`), so the transport layers
//! are fuzzed under it (on the two raw ones, the stream is raw whatever
//! `mode % 3` says):
//! - plain TCP;
//! - a PROXY-protocol listener, the fuzzer's bytes from the first byte
//!   (the header parser, and what follows a header the fuzzer got right);
//! - a PROXY-protocol listener, after a valid header;
//! - a TLS listener, the fuzzer's bytes as raw records (ClientHellos,
//!   alerts, garbage: the TLS layer's partial-record and alert paths);
//! - a TLS listener after a real handshake: the stream is encrypted by a
//!   rustls client and each chunk's records are cut at a fuzzer-chosen
//!   point (partial records between reads);
//! - the same behind a valid PROXY header.
//!
//! Every input must leave the relay clean: once the clients hang up and
//! relay time passes the grace and close deadlines, no connection, peer
//! or buffer is left, and the relay still serves `/healthz`.
#![no_main]

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pyrycode_relay::acme::Challenges;
use pyrycode_relay::tls::{self, CertResolver};
use pyrycode_relay::transport::Recipe;
use pyrycode_relay::{Config, Listen, ManualClock, Origin, Relay, Stats};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

mod split;

struct Fixture {
    relay: Relay,
    clock: ManualClock,
    addr: SocketAddr,
    proxy_addr: SocketAddr,
    tls_addr: SocketAddr,
    proxy_tls_addr: SocketAddr,
    client: Arc<ClientConfig>,
    runs: u64,
}

/// The transport the fuzzed stream goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layers {
    Plain,
    ProxyRaw,
    Proxy,
    TlsRaw,
    Tls,
    ProxyTls,
}

impl Layers {
    fn of(mode: u8) -> Layers {
        match (mode / 3) % 6 {
            0 => Layers::Plain,
            1 => Layers::ProxyRaw,
            2 => Layers::Proxy,
            3 => Layers::TlsRaw,
            4 => Layers::Tls,
            _ => Layers::ProxyTls,
        }
    }

    fn encrypted(self) -> bool {
        matches!(self, Layers::Tls | Layers::ProxyTls)
    }
}

/// A certificate for `fuzz.test` signed by a throw-away CA, the relay's
/// resolver serving it, and a client trusting the CA.
fn certificates() -> (Arc<CertResolver>, Arc<ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec!["fuzz.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let certified = tls::pem::from_pem(leaf.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("a usable certificate");
    let resolver = Arc::new(CertResolver::for_acme(
        Arc::new(Challenges::default()),
        Some(certified),
    ));
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(Arc::new(tls::provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    (resolver, Arc::new(client))
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn fixture() -> Fixture {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit_burst: u32::MAX,
        max_connections_per_ip: usize::MAX,
        // Small enough for the fuzzer to reach 1009 and the backlog rules.
        max_message_size: 4096,
        phone_backlog: 16 * 1024,
        binary_high_water: 16 * 1024,
        binary_low_water: 4 * 1024,
        ..Config::default()
    };
    let clock = ManualClock::new();
    let mut relay = Relay::new(config, Box::new(clock.clone())).expect("relay binds");
    let addr = relay.local_addr();
    let (resolver, client) = certificates();
    let server = tls::server_config(resolver.clone());
    let mut listen = |proxy_protocol, tls: Option<_>| {
        relay
            .listen(Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                origin: Origin::WebSocket,
                recipe: Recipe {
                    proxy_protocol,
                    tls,
                },
            })
            .expect("listener binds")
    };
    let proxy_addr = listen(true, None);
    let tls_addr = listen(false, Some(server.clone()));
    let proxy_tls_addr = listen(true, Some(server));
    relay.serve_certificates(resolver, None);
    Fixture {
        relay,
        clock,
        addr,
        proxy_addr,
        tls_addr,
        proxy_tls_addr,
        client,
        runs: 0,
    }
}

impl Fixture {
    fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..100_000 {
            if self.relay.turn(Some(Duration::ZERO)).expect("turn") {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
            }
        }
        panic!("the relay never became idle");
    }

    fn connect(&mut self) -> TcpStream {
        self.connect_to(self.addr)
    }

    fn connect_to(&mut self, addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nonblocking(true).unwrap();
        stream.set_nodelay(true).unwrap();
        self.settle();
        stream
    }

    /// The fuzzed client's socket on the listener of `layers`: a valid
    /// PROXY header sent and a TLS handshake done where the layers say so.
    fn open(&mut self, layers: Layers) -> (TcpStream, Option<ClientConnection>) {
        let addr = match layers {
            Layers::Plain => self.addr,
            Layers::ProxyRaw | Layers::Proxy => self.proxy_addr,
            Layers::TlsRaw | Layers::Tls => self.tls_addr,
            Layers::ProxyTls => self.proxy_tls_addr,
        };
        let mut stream = self.connect_to(addr);
        if matches!(layers, Layers::Proxy | Layers::ProxyTls) {
            let source = SocketAddr::from(([10, 9, (self.runs >> 8) as u8, self.runs as u8], 4000));
            let header = pyrycode_relay::proxy_protocol::encode(source, addr, &[]);
            self.send(&mut stream, &header, &mut []);
        }
        if !layers.encrypted() {
            return (stream, None);
        }
        let name = ServerName::try_from("fuzz.test").unwrap();
        let mut tls = ClientConnection::new(self.client.clone(), name).unwrap();
        for _ in 0..10_000 {
            while tls.wants_write() {
                match tls.write_tls(&mut stream) {
                    Ok(_) => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("handshake write: {err}"),
                }
            }
            if !tls.is_handshaking() {
                self.settle();
                return (stream, Some(tls));
            }
            self.relay.turn(Some(Duration::ZERO)).expect("turn");
            match tls.read_tls(&mut stream) {
                Ok(0) => panic!("the relay closed the TLS handshake"),
                Ok(_) => {
                    tls.process_new_packets().expect("the relay's handshake");
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => panic!("handshake read: {err}"),
            }
        }
        panic!("the TLS handshake never finished");
    }

    /// Writes all of `bytes`, turning the relay while the socket is full,
    /// and reads (and drops) what the relay sent to every client.
    fn send(&mut self, stream: &mut TcpStream, bytes: &[u8], others: &mut [TcpStream]) {
        let mut at = 0;
        let mut stuck = 0;
        while at < bytes.len() {
            match stream.write(&bytes[at..]) {
                Ok(n) => at += n,
                // The relay stopped reading (backpressure, or it closed
                // us): what is left is never read, which is allowed.
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    self.relay.turn(Some(Duration::ZERO)).expect("turn");
                    drain(stream);
                    others.iter_mut().for_each(drain);
                    stuck += 1;
                    if stuck > 64 {
                        break;
                    }
                }
                Err(_) => break, // reset by the relay
            }
        }
        self.settle();
        drain(stream);
        others.iter_mut().for_each(drain);
        self.settle();
    }
}

fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn upgrade(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn binary_head(server_id: &str) -> Vec<u8> {
    upgrade(
        "/v1/server",
        &[
            ("X-Pyrycode-Server", server_id),
            ("X-Pyrycode-Version", "1"),
            ("User-Agent", "pyry"),
        ],
    )
}

fn phone_head(server_id: &str) -> Vec<u8> {
    upgrade(
        "/v1/client",
        &[
            ("X-Pyrycode-Server", server_id),
            ("X-Pyrycode-Token", "t"),
            ("User-Agent", "okhttp"),
        ],
    )
}

/// The records that carry `plaintext`.
fn seal(tls: &mut ClientConnection, plaintext: &[u8]) -> Vec<u8> {
    let mut records = Vec::new();
    tls.writer().write_all(plaintext).unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut records).unwrap();
    }
    records
}

/// Reads and decrypts until the end of the 101 response head.
fn expect_tls_101(f: &mut Fixture, stream: &mut TcpStream, tls: &mut ClientConnection) {
    let mut got = Vec::new();
    for _ in 0..100_000 {
        match tls.read_tls(stream) {
            Ok(0) => panic!("closed before the 101"),
            Ok(_) => {
                tls.process_new_packets().expect("the relay's records");
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = tls.reader().read(&mut chunk) {
                    got.extend_from_slice(&chunk[..n]);
                }
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    assert!(got.starts_with(b"HTTP/1.1 101 "));
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                f.relay.turn(Some(Duration::ZERO)).expect("turn");
            }
            Err(err) => panic!("read: {err}"),
        }
    }
    panic!("no 101");
}

/// Reads until the end of the 101 response head.
fn expect_101(f: &mut Fixture, stream: &mut TcpStream) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    for _ in 0..100_000 {
        match stream.read(&mut byte) {
            Ok(1) => {
                got.push(byte[0]);
                if got.ends_with(b"\r\n\r\n") {
                    assert!(got.starts_with(b"HTTP/1.1 101 "));
                    return;
                }
            }
            Ok(_) => panic!("closed before the 101"),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                f.relay.turn(Some(Duration::ZERO)).expect("turn");
            }
            Err(err) => panic!("read: {err}"),
        }
    }
    panic!("no 101");
}

fn run(f: &mut Fixture, data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    f.runs += 1;
    let layers = Layers::of(mode);
    let server_id = format!("fz-{}", f.runs);
    let input = split::split(data);
    let mut others = Vec::new();
    let mut prefix = Vec::new();
    // On a raw PROXY or TLS listener the stream is raw from its first byte.
    let kind = match layers {
        Layers::ProxyRaw | Layers::TlsRaw => 0,
        _ => mode % 3,
    };
    match kind {
        0 => {}
        1 => {
            let mut binary = f.connect();
            binary.write_all(&binary_head(&server_id)).unwrap();
            f.settle();
            expect_101(f, &mut binary);
            others.push(binary);
            prefix = phone_head(&server_id);
        }
        _ => {
            prefix = binary_head(&server_id);
        }
    }
    let (mut client, mut tls) = f.open(layers);
    if kind == 2 {
        // The fuzzed binary gets a phone; its conn_id is unknown to the
        // fuzzer, but its frames reach the binary and notices go out.
        match tls.as_mut() {
            Some(session) => {
                let records = seal(session, &prefix);
                client.write_all(&records).unwrap();
                f.settle();
                expect_tls_101(f, &mut client, session);
            }
            None => {
                client.write_all(&prefix).unwrap();
                f.settle();
                expect_101(f, &mut client);
            }
        }
        prefix.clear();
        let mut phone = f.connect();
        phone.write_all(&phone_head(&server_id)).unwrap();
        f.settle();
        expect_101(f, &mut phone);
        let mut hello = vec![0x81, 0x80 | 2, 0, 0, 0, 0];
        hello.extend_from_slice(b"{}");
        phone.write_all(&hello).unwrap();
        others.push(phone);
    }
    let mut first = true;
    for (chunk, extra) in input.chunks {
        let mut bytes = std::mem::take(&mut prefix);
        bytes.extend_from_slice(chunk);
        if let Some(session) = tls.as_mut() {
            // The chunk's records, cut at a point the fuzzer chose: the
            // relay reads a partial record, then the rest.
            let records = seal(session, &bytes);
            let cut = if records.is_empty() { 0 } else { usize::from(extra) * 131 % records.len() };
            f.send(&mut client, &records[..cut], &mut others);
            f.send(&mut client, &records[cut..], &mut others);
        } else if !first || !bytes.is_empty() {
            f.send(&mut client, &bytes, &mut others);
        }
        first = false;
        if extra != 0 {
            // Up to ~64 s of relay time, in 250 ms steps.
            f.clock
                .advance(Duration::from_millis(250 * u64::from(extra)));
            f.settle();
            drain(&mut client);
            others.iter_mut().for_each(drain);
            f.settle();
        }
    }
    // Hang up everything and let every deadline pass.
    drop(client);
    drop(others);
    f.settle();
    for _ in 0..3 {
        f.clock.advance(Duration::from_secs(31));
        f.settle();
    }
    assert_eq!(
        f.relay.stats(),
        Stats::default(),
        "the relay kept something after every client left"
    );
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let f = slot.get_or_insert_with(fixture);
        run(f, data);
    });
});
