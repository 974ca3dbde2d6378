//! Heap that rustls keeps per idle server connection after a full
//! handshake and one echo, buffered API (`ServerConnection`) against the
//! unbuffered one (`UnbufferedServerConnection`, the caller owns the
//! buffers: here they are dropped once the bytes are through, as the
//! relay's pool would take them back). A counting global allocator
//! measures 2,000 connections of each kind; the struct itself is counted
//! apart (it lives inline in the relay's slab entry).
//!
//!     cargo run --release --features ring --bin idle_memory
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static A: Counting = Counting;

fn configs(tickets: usize) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let p = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert: CertificateDer<'static> = rcgen::CertificateParams::new(vec!["relay.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .der()
        .clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut s = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    s.send_tls13_tickets = tickets;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut c = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    (Arc::new(s), Arc::new(c))
}

fn to_client(c: &mut ClientConnection, mut w: &[u8]) {
    while !w.is_empty() {
        c.read_tls(&mut w).unwrap();
        c.process_new_packets().unwrap();
    }
}
fn from_client(c: &mut ClientConnection) -> Vec<u8> {
    let mut w = vec![];
    while c.wants_write() {
        c.write_tls(&mut w).unwrap();
    }
    w
}

fn buffered(s_cfg: &Arc<ServerConfig>, c_cfg: &Arc<ClientConfig>) -> ServerConnection {
    let mut c =
        ClientConnection::new(c_cfg.clone(), ServerName::try_from("relay.test").unwrap()).unwrap();
    let mut s = ServerConnection::new(s_cfg.clone()).unwrap();
    for _ in 0..10 {
        let w = from_client(&mut c);
        let mut r = &w[..];
        while !r.is_empty() {
            s.read_tls(&mut r).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut w = vec![];
        while s.wants_write() {
            s.write_tls(&mut w).unwrap();
        }
        to_client(&mut c, &w);
    }
    // one echo
    c.writer().write_all(b"hello hello hello").unwrap();
    let w = from_client(&mut c);
    let mut r = &w[..];
    while !r.is_empty() {
        s.read_tls(&mut r).unwrap();
        s.process_new_packets().unwrap();
    }
    let mut buf = [0u8; 17];
    s.reader().read_exact(&mut buf).unwrap();
    s.writer().write_all(&buf).unwrap();
    let mut w = vec![];
    while s.wants_write() {
        s.write_tls(&mut w).unwrap();
    }
    to_client(&mut c, &w);
    s
}

/// Drives an unbuffered server with caller-owned buffers (dropped at the end).
fn unbuffered(s_cfg: &Arc<ServerConfig>, c_cfg: &Arc<ClientConfig>) -> UnbufferedServerConnection {
    let mut c =
        ClientConnection::new(c_cfg.clone(), ServerName::try_from("relay.test").unwrap()).unwrap();
    let mut s = UnbufferedServerConnection::new(s_cfg.clone()).unwrap();
    let mut incoming = vec![0u8; 32 * 1024];
    let mut in_len = 0;
    let mut outgoing = vec![0u8; 32 * 1024];
    let mut out_len = 0;
    let mut echoed = false;
    let mut sent_hello = false;
    for _ in 0..100 {
        let w = from_client(&mut c);
        incoming[in_len..in_len + w.len()].copy_from_slice(&w);
        in_len += w.len();
        let status = s.process_tls_records(&mut incoming[..in_len]);
        let discard = status.discard;
        let mut got: Option<Vec<u8>> = None;
        match status.state.unwrap() {
            ConnectionState::EncodeTlsData(mut e) => {
                out_len += e.encode(&mut outgoing[out_len..]).unwrap();
            }
            ConnectionState::TransmitTlsData(t) => {
                to_client(&mut c, &outgoing[..out_len]);
                out_len = 0;
                t.done();
            }
            ConnectionState::BlockedHandshake => {}
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    got = Some(rec.unwrap().payload.to_vec());
                }
            }
            ConnectionState::WriteTraffic(mut wt) => {
                if echoed {
                    break;
                }
                if !sent_hello {
                    c.writer().write_all(b"hello hello hello").unwrap();
                    sent_hello = true;
                }
                let _ = &mut wt;
            }
            ConnectionState::Closed => break,
            _ => {}
        }
        incoming.copy_within(discard..in_len, 0);
        in_len -= discard;
        if let Some(data) = got {
            // encrypt echo
            let status = s.process_tls_records(&mut incoming[..in_len]);
            if let Ok(ConnectionState::WriteTraffic(mut wt)) = status.state {
                let n = wt.encrypt(&data, &mut outgoing).unwrap();
                to_client(&mut c, &outgoing[..n]);
                echoed = true;
            }
        }
    }
    assert!(echoed, "echo");
    let mut back = [0u8; 17];
    c.reader().read_exact(&mut back).unwrap();
    s
}

fn main() {
    let n = 2000;
    for tickets in [0usize, 2] {
        let (s, c) = configs(tickets);
        let _warm = buffered(&s, &c);
        let _warm2 = unbuffered(&s, &c);
        let mut keep_b = Vec::with_capacity(n);
        let mut keep_u = Vec::with_capacity(n);
        let before = LIVE.load(Ordering::Relaxed);
        for _ in 0..n {
            keep_b.push(buffered(&s, &c));
        }
        let mid = LIVE.load(Ordering::Relaxed);
        for _ in 0..n {
            keep_u.push(unbuffered(&s, &c));
        }
        let after = LIVE.load(Ordering::Relaxed);
        println!("tickets={tickets}: buffered ServerConnection idle heap {} B + struct {} B; unbuffered {} B + struct {} B",
            (mid - before) / n as isize, std::mem::size_of::<ServerConnection>(),
            (after - mid) / n as isize, std::mem::size_of::<UnbufferedServerConnection>());
    }
}
