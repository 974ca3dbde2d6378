//! TLS for the benchmark: the certificate of a run and the client side of
//! the simulated peers.
//!
//! * [`Pki::generate`] makes one ECDSA P-256 certificate per run, signed by
//!   a root made for the run, and writes the files both targets are given:
//!   the relay gets `cert.pem` and `key.pem` (`--tls-cert`, `--tls-key`),
//!   HAProxy gets `haproxy.pem` (the same certificate and key in one file,
//!   `bind … ssl crt`). So both serve the very same certificate.
//! * [`Client`] is what a simulated peer dials with: a rustls client
//!   configuration (ring provider, TLS 1.3 and 1.2, ALPN `http/1.1`, no
//!   session resumption, so that every connection does a full handshake)
//!   that checks the server's certificate against the run's root and the
//!   SNI name [`SERVER_NAME`]. It also keeps a [`HandshakeLog`]: what each
//!   target's handshakes negotiated, for the report.
//! * [`TlsStream`] is one connection: a non-blocking `mio` socket and a
//!   buffered `rustls::ClientConnection`, read and written like a socket
//!   that carries plaintext (see [`crate::transport::Transport`]).

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mio::net::TcpStream;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use serde_json::{json, Value};

/// The name the run's certificate is for, and the SNI the peers send.
pub const SERVER_NAME: &str = "relay-bench.test";

/// The only application protocol either target is offered.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Ciphertext read from the socket in one `read`, at most: room is left in
/// the caller's plaintext buffer for a record that was split across reads
/// (up to 16 KiB of plaintext whose ciphertext came in earlier).
const RECORD_SLACK: usize = 32 * 1024;

/// The files of a run's certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM), for the relay's `--tls-cert`.
    pub cert: PathBuf,
    /// Its PKCS#8 key (PEM), for the relay's `--tls-key`.
    pub key: PathBuf,
    /// Certificate then key in one file, for HAProxy's `crt`.
    pub haproxy_pem: PathBuf,
}

/// A run's root and the certificate it signed.
pub struct Pki {
    pub files: CertFiles,
    root: CertificateDer<'static>,
}

impl Pki {
    /// Makes a root and an ECDSA P-256 server certificate for
    /// [`SERVER_NAME`], `localhost` and `127.0.0.1`, and writes the files
    /// into `dir` (the key `0600`).
    pub fn generate(dir: &Path) -> Result<Pki, String> {
        let err = |e: rcgen::Error| format!("certificate: {e}");
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let root_key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
        let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "relay-bench root");
        root_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).map_err(err)?;

        let key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
        let mut params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])
                .map_err(err)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &root).map_err(err)?;

        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            haproxy_pem: dir.join("haproxy.pem"),
        };
        let key_pem = key.serialize_pem();
        write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
        write_file(&files.key, key_pem.as_bytes(), 0o600)?;
        write_file(
            &files.haproxy_pem,
            format!("{}{key_pem}", cert.pem()).as_bytes(),
            0o600,
        )?;
        Ok(Pki {
            files,
            root: root.der().clone(),
        })
    }

    /// The client the simulated peers use against this run's targets.
    pub fn client(&self) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.root.clone())
            .map_err(|e| format!("the run's root: {e}"))?;
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        Ok(Client::new(roots, name))
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Trust for `--url wss://…`: the roots in `ca` (PEM), or Mozilla's.
pub fn roots_for_url(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let Some(path) = ca else {
        return Ok(RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ));
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--tls-ca {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(roots)
}

/// What the handshakes of one target negotiated.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Full handshakes (no resumption).
    pub full: u64,
    /// Full TLS 1.3 handshakes that needed a HelloRetryRequest.
    pub hello_retry: u64,
    /// Resumed sessions (never expected: resumption is off).
    pub resumed: u64,
    /// "version suite group alpn" → handshakes.
    pub negotiated: BTreeMap<String, u64>,
}

/// Handshakes by target, shared by every connection of a [`Client`].
#[derive(Debug, Default)]
pub struct HandshakeLog {
    by_target: BTreeMap<String, Tally>,
}

impl HandshakeLog {
    /// One line per target, e.g.
    /// `relay: TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 http/1.1 (1,234 full)`.
    pub fn lines(&self) -> Vec<String> {
        self.by_target
            .iter()
            .map(|(target, t)| {
                let params: Vec<String> = t.negotiated.keys().cloned().collect();
                let mut line = format!("{target}: {} ({} full", params.join(" | "), t.full);
                if t.hello_retry > 0 {
                    line.push_str(&format!(", {} with HelloRetryRequest", t.hello_retry));
                }
                if t.resumed > 0 {
                    line.push_str(&format!(", {} RESUMED", t.resumed));
                }
                line.push(')');
                line
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        self.by_target
            .iter()
            .map(|(target, t)| {
                (
                    target.clone(),
                    json!({
                        "full_handshakes": t.full,
                        "hello_retry_requests": t.hello_retry,
                        "resumed": t.resumed,
                        "negotiated": t.negotiated,
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// How a simulated peer starts TLS, and the log of what it negotiated.
#[derive(Clone, Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// The target these connections go to, as the log names it.
    target: String,
    log: Arc<Mutex<HandshakeLog>>,
}

impl Client {
    /// TLS 1.3 and 1.2 on ring, ALPN `http/1.1`, no resumption; the
    /// server must present a certificate for `name` that chains to `roots`.
    pub fn new(roots: RootCertStore, name: ServerName<'static>) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.3 and 1.2")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        // Every connection is a full handshake: what a phone that was
        // offline pays, and what the churn scenario's CPU per cycle means.
        config.resumption = Resumption::disabled();
        Client {
            config: Arc::new(config),
            name,
            target: String::new(),
            log: Arc::default(),
        }
    }

    /// The same client, logging its handshakes under `target`.
    pub fn for_target(&self, target: &str) -> Client {
        Client {
            target: target.to_string(),
            ..self.clone()
        }
    }

    /// Starts a client session on a socket (connected or connecting):
    /// the ClientHello is queued and goes out with the first flush.
    pub fn start(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(io::Error::other)?;
        Ok(TlsStream {
            tcp,
            conn,
            close_notify: false,
        })
    }

    /// Notes what `stream`'s finished handshake negotiated.
    pub fn record(&self, stream: &TlsStream) {
        let c = &stream.conn;
        let name = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let key = format!(
            "{} {} {} {}",
            name(c.protocol_version().map(|v| format!("{v:?}"))),
            name(
                c.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            name(
                c.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
            name(
                c.alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            ),
        );
        let mut log = self.log.lock().expect("handshake log");
        let tally = log.by_target.entry(self.target.clone()).or_default();
        match c.handshake_kind() {
            Some(HandshakeKind::Resumed) => tally.resumed += 1,
            Some(HandshakeKind::FullWithHelloRetryRequest) => {
                tally.full += 1;
                tally.hello_retry += 1;
            }
            _ => tally.full += 1,
        }
        *tally.negotiated.entry(key).or_default() += 1;
    }

    /// The handshakes of every target so far.
    pub fn log(&self) -> std::sync::MutexGuard<'_, HandshakeLog> {
        self.log.lock().expect("handshake log")
    }
}

/// One TLS client connection on a non-blocking socket.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ClientConnection,
    /// The server's `close_notify` arrived: bytes after it are discarded
    /// until the server's FIN.
    close_notify: bool,
}

impl TlsStream {
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Reads plaintext into `buf`, like a socket: `Ok(0)` at the server's
    /// FIN, `WouldBlock` when nothing more is there. `cipher` is scratch
    /// space for the ciphertext of one socket read; `buf` must be more than
    /// 64 KiB so that everything decrypted from one read fits.
    pub fn read(&mut self, buf: &mut [u8], cipher: &mut [u8]) -> io::Result<usize> {
        assert!(buf.len() > 2 * RECORD_SLACK, "plaintext buffer too small");
        let cap = cipher.len().min(buf.len() - RECORD_SLACK);
        loop {
            let n = match self.tcp.read(&mut cipher[..cap]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(0);
            }
            if self.close_notify {
                continue;
            }
            let filled = self.decrypt(&cipher[..n], buf)?;
            self.flush()?;
            if filled > 0 {
                return Ok(filled);
            }
        }
    }

    /// Feeds ciphertext to rustls and moves the plaintext out into `buf`;
    /// returns the plaintext length.
    fn decrypt(&mut self, mut cipher: &[u8], buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while !cipher.is_empty() && !self.close_notify {
            if self.conn.read_tls(&mut cipher)? == 0 {
                break;
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls queued an alert saying why; send it if we can.
                let _ = self.flush();
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
            loop {
                if filled == buf.len() {
                    return Err(io::Error::other("TLS plaintext overflowed the read buffer"));
                }
                match self.conn.reader().read(&mut buf[filled..]) {
                    Ok(0) => {
                        self.close_notify = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(filled)
    }

    /// Encrypts up to all of `data` and sends what the socket takes;
    /// `WouldBlock` when rustls's send buffer is full.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.flush()?;
        let n = self.conn.writer().write(data)?;
        self.flush()?;
        if n == 0 && !data.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends queued records (handshake messages, alerts, encrypted data)
    /// until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection, StreamOwned};

    fn server_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let cert = CertificateDer::from_pem_file(&pki.files.cert).unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.files.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A blocking rustls server on loopback that echoes one line, sends
    /// close_notify and closes.
    fn echo_server(
        config: Arc<ServerConfig>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = ServerConnection::new(config).unwrap();
            let mut tls = StreamOwned::new(conn, sock);
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while tls.read(&mut byte).unwrap_or(0) == 1 {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            let _ = tls.write_all(&line);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (addr, handle)
    }

    /// Drives `stream` on a poll until `done` or a bounded number of turns.
    fn drive(stream: &mut TlsStream, mut step: impl FnMut(&mut TlsStream) -> bool) {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        poll.registry()
            .register(
                stream.tcp_mut(),
                mio::Token(0),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !step(stream) {
            assert!(Instant::now() < deadline, "no progress within 10 s");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
    }

    #[test]
    fn a_client_round_trips_through_a_tls_server_and_sees_its_close() {
        let dir = std::env::temp_dir().join(format!("relay-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::generate(&dir).unwrap();
        let pem = std::fs::read_to_string(&pki.files.haproxy_pem).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("BEGIN PRIVATE KEY"));
        let (addr, server) = echo_server(server_config(&pki, &[ALPN_HTTP11]));
        let client = pki.client().unwrap().for_target("test");
        let tcp = TcpStream::connect(addr).unwrap();
        let mut stream = client.start(tcp).unwrap();
        let mut sent = 0;
        let message = b"hello over tls\n";
        let mut got = Vec::new();
        let mut eof = false;
        let (mut buf, mut cipher) = (vec![0u8; 128 * 1024], vec![0u8; 128 * 1024]);
        drive(&mut stream, |s| {
            if sent < message.len() {
                match s.write(&message[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => return false,
                    Err(e) => panic!("write: {e}"),
                }
            }
            s.flush()
                .or_else(|e| match e.kind() {
                    ErrorKind::NotConnected => Ok(()),
                    _ => Err(e),
                })
                .unwrap();
            loop {
                match s.read(&mut buf, &mut cipher) {
                    Ok(0) => {
                        eof = true;
                        return true;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == ErrorKind::NotConnected => return false,
                    Err(e) => panic!("read: {e}"),
                }
            }
        });
        server.join().unwrap();
        assert!(eof);
        assert_eq!(got, message);
        client.record(&stream);
        let lines = client.log().lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("test: TLSv1_3 "), "{lines:?}");
        assert!(lines[0].contains("http/1.1 (1 full)"), "{lines:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let dir = std::env::temp_dir().join(format!("relay-bench-tls-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::generate(&dir).unwrap();
        let (addr, _server) = echo_server(server_config(&pki, &[ALPN_HTTP11]));
        let mut roots = RootCertStore::empty();
        roots.add(pki.root.clone()).unwrap();
        let client = Client::new(roots, ServerName::try_from("other.test").unwrap());
        let mut stream = client.start(TcpStream::connect(addr).unwrap()).unwrap();
        let (mut buf, mut cipher) = (vec![0u8; 128 * 1024], vec![0u8; 128 * 1024]);
        let mut error = None;
        drive(&mut stream, |s| {
            let _ = s.flush();
            match s.read(&mut buf, &mut cipher) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    false
                }
                other => {
                    error = Some(format!("{other:?}"));
                    true
                }
            }
        });
        let error = error.unwrap();
        assert!(error.contains("NotValidForName"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn url_roots_come_from_the_given_file_or_mozilla() {
        let dir = std::env::temp_dir().join(format!("relay-bench-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::generate(&dir).unwrap();
        assert_eq!(roots_for_url(Some(&pki.files.cert)).unwrap().len(), 1);
        assert!(roots_for_url(None).unwrap().len() > 100);
        let err = roots_for_url(Some(&pki.files.key)).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        let err = roots_for_url(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(err.starts_with("--tls-ca "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
