//! A TLS client for the in-process harness (`tests/common`): rustls on a
//! non-blocking loopback socket, driven between relay turns, speaking
//! WebSocket through the records. Optionally writes a preface (a PROXY
//! header) in the clear before the ClientHello, as a load balancer would.
//!
//! Nothing sleeps: every wait lets the relay take turns until the thing
//! waited for is there (`Harness::wait_for`), and fails after a bounded
//! number of turns.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

use crate::common::{masked_frame, upgrade_head, FrameReader, Harness, Msg};

/// How a TLS connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// `close_notify`, then the end of the stream.
    CloseNotify,
    /// The TCP stream ended (FIN or reset) without `close_notify`.
    Eof,
}

/// A TLS client of the relay under test.
pub struct TlsClient {
    pub tcp: TcpStream,
    pub tls: ClientConnection,
    plain: Vec<u8>,
    frames: FrameReader,
    /// The TCP stream ended.
    eof: bool,
    /// `close_notify` arrived.
    close_notify: bool,
    /// The TLS session failed on the client's side (e.g. an alert).
    pub error: Option<rustls::Error>,
    /// Raw bytes read after a failure (nothing is decrypted then).
    raw_after_error: usize,
    /// A preface to send in the same write as the ClientHello.
    preface: Vec<u8>,
}

impl TlsClient {
    /// Connects to `addr`, writes `preface` in the clear, and starts a TLS
    /// session for `sni` (nothing is sent until the first pump).
    pub fn connect(
        h: &mut Harness,
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        sni: &str,
        preface: &[u8],
    ) -> TlsClient {
        let mut client = TlsClient::connect_with_hello(h, addr, config, sni, b"");
        client.tcp.set_nonblocking(false).unwrap();
        client.tcp.write_all(preface).unwrap();
        client.tcp.set_nonblocking(true).unwrap();
        h.settle();
        client
    }

    /// Like [`TlsClient::connect`], but the preface goes out in one write
    /// with the ClientHello (a load balancer that forwards the client's
    /// first segment with its header).
    pub fn connect_with_hello(
        h: &mut Harness,
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        sni: &str,
        preface: &[u8],
    ) -> TlsClient {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let tls = ClientConnection::new(config.clone(), name).unwrap();
        h.settle();
        TlsClient {
            tcp,
            tls,
            plain: Vec::new(),
            frames: FrameReader::new(),
            eof: false,
            close_notify: false,
            error: None,
            raw_after_error: 0,
            preface: preface.to_vec(),
        }
    }

    /// Runs the handshake to its end; the client's error if it failed.
    pub fn handshake(&mut self, h: &mut Harness) -> Result<(), rustls::Error> {
        let outcome = h.wait_for("the end of the TLS handshake", |_| {
            self.pump();
            if let Some(error) = self.error.clone() {
                return Ok(Err(error));
            }
            if !self.tls.is_handshaking() {
                self.pump(); // our Finished
                return Ok(Ok(()));
            }
            assert!(
                !self.eof,
                "the relay closed the connection in the handshake (raw {})",
                self.raw_after_error
            );
            Err("handshaking".to_string())
        });
        if outcome.is_ok() {
            h.settle();
        }
        outcome
    }

    /// Writes what rustls has to send, reads what the socket has, and
    /// decrypts it.
    fn pump(&mut self) {
        if !self.preface.is_empty() {
            let mut first = std::mem::take(&mut self.preface);
            while self.tls.wants_write() {
                self.tls.write_tls(&mut first).unwrap();
            }
            self.tcp.set_nonblocking(false).unwrap();
            self.tcp.write_all(&first).unwrap();
            self.tcp.set_nonblocking(true).unwrap();
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        loop {
            if self.error.is_some() {
                return self.read_raw();
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(_) => {
                    if let Err(error) = self.tls.process_new_packets() {
                        self.error = Some(error);
                        let _ = self.tls.write_tls(&mut self.tcp); // our alert
                    }
                    self.take_plaintext();
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    break;
                }
                Err(err) => panic!("read failed: {err}"),
            }
        }
        self.take_plaintext();
    }

    fn take_plaintext(&mut self) {
        let mut chunk = [0u8; 32 * 1024];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => {
                    self.close_notify = true;
                    return;
                }
                Ok(n) => self.plain.extend_from_slice(&chunk[..n]),
                Err(_) => return, // nothing yet, or the stream ended without close_notify
            }
        }
    }

    fn read_raw(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.tcp.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.raw_after_error += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    /// Sends `bytes` through the session, letting the relay turn until
    /// they are on the wire and the relay's socket has taken them.
    pub fn send(&mut self, h: &mut Harness, bytes: &[u8]) {
        let mut at = 0;
        h.wait_for("the relay reading what a TLS client sent", |_| {
            if at < bytes.len() {
                at += self.tls.writer().write(&bytes[at..]).unwrap();
            }
            self.pump();
            if at == bytes.len() && !self.tls.wants_write() {
                return Ok(());
            }
            assert!(!self.eof, "the relay closed the connection");
            Err(format!("{at} of {} bytes taken", bytes.len()))
        });
        h.settle();
    }

    pub fn send_frame(&mut self, h: &mut Harness, opcode: u8, payload: &[u8]) {
        self.send(h, &masked_frame(opcode, true, payload));
    }

    pub fn send_text(&mut self, h: &mut Harness, payload: &[u8]) {
        self.send_frame(h, 0x1, payload);
    }

    /// Waits for an HTTP response head; returns its status and text.
    pub fn response(&mut self, h: &mut Harness) -> (u16, String) {
        let end = h.wait_for("an HTTP response head over TLS", |_| {
            self.pump();
            if let Some(end) = find(&self.plain, b"\r\n\r\n") {
                return Ok(end + 4);
            }
            assert!(
                !self.eof && self.error.is_none(),
                "connection closed before a response ({:?})",
                self.error
            );
            Err(format!("{} bytes of a head", self.plain.len()))
        });
        let head: Vec<u8> = self.plain.drain(..end).collect();
        let head = String::from_utf8(head).expect("response head is text");
        let status = head[9..12].parse().expect("status code");
        (status, head)
    }

    /// Sends a WebSocket upgrade on `path` with `headers` and `Host: host`;
    /// returns the response status and head.
    pub fn upgrade<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        h: &mut Harness,
        path: &str,
        headers: &[(N, V)],
        host: &str,
    ) -> (u16, String) {
        let head =
            upgrade_head(path, headers).replace("Host: relay.test", &format!("Host: {host}"));
        self.send(h, head.as_bytes());
        self.response(h)
    }

    /// Waits for the next WebSocket frame.
    pub fn recv(&mut self, h: &mut Harness) -> Msg {
        h.wait_for("a frame over TLS", |_| {
            self.pump();
            let plain = std::mem::take(&mut self.plain);
            self.frames
                .push(&plain)
                .expect("the relay's frames are well-formed");
            if let Some(msg) = self.frames.pop() {
                return Ok(msg);
            }
            assert!(!self.eof, "connection closed while waiting for a frame");
            Err(format!(
                "{} bytes of a partial frame",
                self.frames.pending()
            ))
        })
    }

    /// The next frame that is not a ping or pong.
    pub fn recv_data(&mut self, h: &mut Harness) -> Msg {
        loop {
            match self.recv(h) {
                Msg::Ping(_) | Msg::Pong(_) => continue,
                other => return other,
            }
        }
    }

    pub fn recv_text(&mut self, h: &mut Harness) -> Vec<u8> {
        match self.recv_data(h) {
            Msg::Text(bytes) => bytes,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Waits until the relay ends the connection; says how.
    pub fn wait_end(&mut self, h: &mut Harness) -> Ending {
        h.wait_for("the relay ending a TLS connection", |_| {
            self.pump();
            match (self.eof, self.close_notify) {
                (true, true) => Ok(Ending::CloseNotify),
                (true, false) => Ok(Ending::Eof),
                (false, _) => Err("still open".to_string()),
            }
        })
    }

    /// Plaintext received and not yet taken as a response or frame.
    pub fn unread_plaintext(&self) -> &[u8] {
        &self.plain
    }

    /// The leaf certificate the relay presented.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.tls.peer_certificates().expect("a certificate")[0]
            .clone()
            .into_owned()
    }

    /// Sends FIN and lets the relay turn until it has dropped its end.
    pub fn hang_up(&mut self, h: &mut Harness) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        let before = h.relay().stats().connections;
        h.eventually("the relay dropping a TLS connection", |h| {
            h.relay().stats().connections < before
        });
        h.settle();
    }

    /// Whether the relay's end of this connection is gone (after a settle).
    pub fn is_closed(&mut self, h: &mut Harness) -> bool {
        h.settle();
        self.pump();
        self.eof
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
