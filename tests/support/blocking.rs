//! A blocking client of a relay that runs as a process
//! (`support/process.rs`): one HTTP request on a fresh connection, or a
//! WebSocket peer over plain TCP or over TLS (rustls, optionally behind a
//! PROXY header written in the clear). Frames are decoded by the
//! fixture's `FrameReader` (the library's reader in the client role), so
//! the relay's frames must be well-formed.
//!
//! Real time: every read and write is bounded by a socket timeout
//! ([`READ_WAIT`]); EOF, a reset or a timeout where a message was expected
//! fails the test, saying what it waited for. The in-process harness has
//! its own non-blocking clients (`pyrycode_relay::fixture::Client`,
//! `support/wss.rs`).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pyrycode_relay::fixture::{
    binary_headers, envelope, masked_frame, phone_headers, upgrade_head, Frame, FrameReader,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The longest any one read or write may block.
pub const READ_WAIT: Duration = Duration::from_secs(15);

/// A loopback connection to `addr` with [`READ_WAIT`] as its read and write
/// timeouts and Nagle off.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the relay");
    stream.set_read_timeout(Some(READ_WAIT)).unwrap();
    stream.set_write_timeout(Some(READ_WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// One HTTP request on a fresh connection; returns the status, the head
/// and the body (everything up to EOF).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut client = Ws::over(tcp(addr));
    let (status, head) = client.request(request);
    (status, head, client.body_to_eof())
}

/// The body of an HTTP response, as text.
pub fn http_text(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, _, body) = http(addr, request);
    (status, String::from_utf8(body).expect("a text body"))
}

/// A blocking WebSocket (or HTTP) client over `S`.
pub struct Ws<S: Read + Write = TcpStream> {
    pub stream: S,
    /// Bytes read and not yet taken as a head or a frame.
    buf: Vec<u8>,
    frames: FrameReader,
}

/// A [`Ws`] over TLS.
pub type Wss = Ws<StreamOwned<ClientConnection, TcpStream>>;

impl<S: Read + Write> Ws<S> {
    /// A client over a connected `stream` that has sent nothing yet.
    pub fn over(stream: S) -> Ws<S> {
        Ws {
            stream,
            buf: Vec::new(),
            frames: FrameReader::new(),
        }
    }

    /// Sends `head` and returns the response's status and head; what
    /// follows the head stays for the frames or the body.
    pub fn request(&mut self, head: &str) -> (u16, String) {
        self.stream.write_all(head.as_bytes()).unwrap();
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..at + 4).collect();
                let head = String::from_utf8(head).expect("head is text");
                return (head[9..12].parse().expect("status code"), head);
            }
            self.fill("a response head");
        }
    }

    /// A WebSocket upgrade on `path` with `headers` and `Host: host`;
    /// the response's status and head.
    pub fn upgrade<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        path: &str,
        headers: &[(N, V)],
        host: &str,
    ) -> (u16, String) {
        let head =
            upgrade_head(path, headers).replace("Host: relay.test", &format!("Host: {host}"));
        self.request(&head)
    }

    /// Reads what the stream has into the buffer; panics on EOF or error.
    fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!(
                "EOF while waiting for {what} ({} bytes unread)",
                self.buf.len()
            ),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("no {what}: {err}"),
        }
    }

    /// Everything after the head up to EOF.
    pub fn body_to_eof(&mut self) -> Vec<u8> {
        self.stream
            .read_to_end(&mut self.buf)
            .expect("body up to EOF");
        std::mem::take(&mut self.buf)
    }

    /// The next frame in what was read so far.
    fn take_frame(&mut self) -> Option<Frame> {
        let bytes = std::mem::take(&mut self.buf);
        self.frames
            .push(&bytes)
            .expect("the relay's frames are well-formed");
        self.frames.pop()
    }

    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked_frame(opcode, true, payload))
            .expect("send a frame");
    }

    pub fn send_text(&mut self, payload: &[u8]) {
        self.send(0x1, payload);
    }

    /// The next frame; panics on EOF, a reset or after [`READ_WAIT`].
    pub fn recv(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.take_frame() {
                return frame;
            }
            self.fill("a frame");
        }
    }

    /// The next frame that is not a ping or pong; pings are answered.
    pub fn recv_data(&mut self) -> Frame {
        loop {
            match self.recv() {
                Frame::Ping(payload) => self.send(0xA, &payload),
                Frame::Pong(_) => {}
                frame => return frame,
            }
        }
    }

    pub fn recv_text(&mut self) -> Vec<u8> {
        match self.recv_data() {
            Frame::Text(payload) => payload,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Expects a close frame, echoes it, and waits for EOF; returns the
    /// code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        let (code, reason) = match self.recv_data() {
            Frame::Close(Some(code), reason) => (code, reason),
            other => panic!("expected a close with a code, got {other:?}"),
        };
        self.send(0x8, &code.to_be_bytes());
        self.wait_eof();
        (code, reason)
    }

    /// Reads until the relay ends the connection (EOF or a reset).
    pub fn wait_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!("no EOF: {err}"),
            }
        }
    }
}

impl Ws<TcpStream> {
    /// Upgrades on `path` with `headers`; asserts the 101.
    pub fn connect<N: AsRef<str>, V: AsRef<str>>(
        addr: SocketAddr,
        path: &str,
        headers: &[(N, V)],
    ) -> Ws {
        let mut ws = Ws::over(tcp(addr));
        let (status, head) = ws.upgrade(path, headers, "relay.test");
        assert_eq!(status, 101, "upgrade refused: {head}");
        ws
    }

    /// The frames that have arrived by now, without waiting for more.
    /// (The kernel may still be moving the relay's last bytes between
    /// loopback sockets: give it a few yields, never a sleep.)
    pub fn arrived(&mut self) -> Vec<Frame> {
        self.stream.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 4096];
        for _ in 0..100 {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => thread::yield_now(),
                Err(err) => panic!("read failed: {err}"),
            }
        }
        self.stream.set_nonblocking(false).unwrap();
        std::iter::from_fn(|| self.take_frame()).collect()
    }

    /// This client, and a second handle on its socket for another thread
    /// to write with.
    pub fn split(self) -> (Ws, TcpStream) {
        let writer = self.stream.try_clone().unwrap();
        (self, writer)
    }
}

impl Wss {
    /// Connects to `addr`, writes `preface` (a PROXY header) in the clear,
    /// and completes a TLS handshake for `sni`; the handshake's error if
    /// it failed.
    pub fn connect_tls(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        sni: &str,
        preface: &[u8],
    ) -> Result<Wss, rustls::Error> {
        let mut tcp = tcp(addr);
        tcp.write_all(preface).unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let conn = ClientConnection::new(config.clone(), name).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(err) = stream.conn.complete_io(&mut stream.sock) {
                return Err(match err.into_inner() {
                    Some(inner) => match inner.downcast::<rustls::Error>() {
                        Ok(tls) => *tls,
                        Err(other) => rustls::Error::General(other.to_string()),
                    },
                    None => rustls::Error::General("handshake I/O failed".into()),
                });
            }
        }
        Ok(Ws::over(stream))
    }

    /// The leaf certificate the relay presented.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.stream.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }
}

/// A binary and a phone of `server_id` over TLS to `addr`, each after its
/// preface (a PROXY header, or nothing); both upgraded, one message
/// exchanged each way.
pub fn wss_pair(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    prefaces: [&[u8]; 2],
    server_id: &str,
) -> (Wss, Wss) {
    let headers = [binary_headers(server_id), phone_headers(server_id)];
    let [mut binary, mut phone] = [0, 1].map(|i| {
        let mut ws = Wss::connect_tls(addr, config, "relay.test", prefaces[i]).unwrap();
        let path = ["/v1/server", "/v1/client"][i];
        let (status, head) = ws.upgrade(path, &headers[i], "relay.test");
        assert_eq!(status, 101, "{path}: {head}");
        ws
    });
    exchange(&mut binary, &mut phone, br#"{"hello":"wss"}"#);
    (binary, phone)
}

/// `frame` from the phone to the binary (checking its envelope
/// byte-exact) and back.
pub fn exchange<S: Read + Write>(binary: &mut Ws<S>, phone: &mut Ws<S>, frame: &[u8]) {
    phone.send_text(frame);
    let wrapped = binary.recv_text();
    let value: serde_json::Value = serde_json::from_slice(&wrapped).expect("envelope is JSON");
    let conn_id = value["conn_id"].as_str().expect("conn_id").to_string();
    assert_eq!(wrapped, envelope(&conn_id, frame), "envelope byte-exact");
    binary.send_text(&envelope(&conn_id, frame));
    assert_eq!(phone.recv_text(), frame);
}
