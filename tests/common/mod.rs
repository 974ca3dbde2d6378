//! The deterministic test harness: the real relay loop in-process on
//! `127.0.0.1:0`, driven turn by turn, with time from a [`ManualClock`]
//! and clients on real loopback sockets.
//!
//! Nothing here sleeps. A client waiting for bytes lets the relay take
//! turns until the bytes are there (bounded, so a missing frame fails the
//! test instead of hanging it, with a message naming what never came);
//! relay time only moves when a test calls [`Harness::advance`]. A 30 s
//! grace window runs in microseconds.
//!
//! - this file: [`Harness`], [`Client`] and the WebSocket side of a client;
//! - `sockets.rs`: the kernel side (delivery barriers, buffer sizes, the
//!   relay's end of a connection, the hang-up in `Drop`);
//! - `scenarios.rs`: the small scenarios many suites share (a binary and
//!   its phones, one exchange each way, pings answered, closes expected);
//! - `logs.rs`: the relay's log lines, captured per test;
//! - `process.rs`: the real executable, for the tests that need a process.
#![allow(dead_code, unused_imports)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[path = "../support/stream.rs"]
pub mod stream;

mod logs;
mod process;
mod scenarios;
mod sockets;

pub use logs::{capture_logs, take_logs};
pub use process::{RelayProcess, WAIT};
pub use scenarios::*;

use std::collections::VecDeque;

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::ws::{OwnedEvent, Reader, Role};
use pyrycode_relay::{Config, ManualClock, Relay, Stats};

/// How many relay turns a client waits for something before failing.
const PATIENCE_TURNS: usize = 20_000;

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` milliseconds.
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The relay under test and its clock.
pub struct Harness {
    pub relay: Relay,
    pub clock: ManualClock,
    pub addr: SocketAddr,
}

impl Harness {
    /// A relay with SPEC defaults, except a rate limit loose enough for
    /// many test clients from one address.
    pub fn new() -> Harness {
        Harness::with_config(|_| {})
    }

    /// A relay with the defaults changed by `tweak`.
    pub fn with_config(tweak: impl FnOnce(&mut Config)) -> Harness {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            rate_limit_burst: 100_000,
            ..Config::default()
        };
        tweak(&mut config);
        let clock = ManualClock::new();
        let relay = Relay::new(config, Box::new(clock.clone())).expect("relay binds");
        let addr = relay.local_addr();
        Harness { relay, clock, addr }
    }

    /// One turn of the loop, waiting at most `wait` of real time for
    /// readiness (relay time does not move).
    pub fn turn(&mut self, wait: Duration) -> bool {
        self.relay.turn(Some(wait)).expect("relay turn")
    }

    /// Turns until the loop has had nothing to do for a few turns in a row.
    pub fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..PATIENCE_TURNS {
            if self.turn(Duration::ZERO) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
                // On a loaded machine loopback packets are delivered by a
                // kernel thread (ksoftirqd): give it the CPU before the
                // next look, so bytes already written are not missed.
                std::thread::yield_now();
            }
        }
        panic!("the relay never became idle: it had work in each of {PATIENCE_TURNS} turns");
    }

    /// Moves relay time forward by `by` and lets the relay act on it.
    pub fn advance(&mut self, by: Duration) {
        self.settle();
        self.clock.advance(by);
        self.settle();
    }

    /// Moves relay time forward by `total` in steps of `step`.
    pub fn advance_in_steps(&mut self, total: Duration, step: Duration) {
        let mut gone = Duration::ZERO;
        while gone < total {
            self.advance(step);
            gone += step;
        }
    }

    /// Lets the relay turn (without moving relay time) until `done` holds;
    /// fails naming `what` if it never does.
    pub fn eventually(&mut self, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
        for _ in 0..PATIENCE_TURNS {
            if done(self) {
                return;
            }
            self.turn(Duration::from_millis(1));
        }
        panic!("never happened within {PATIENCE_TURNS} relay turns: {what}");
    }

    pub fn stats(&mut self) -> Stats {
        self.settle();
        self.relay.stats()
    }

    /// The binaries and phones the relay counts, after a settle.
    pub fn peers(&mut self) -> (usize, usize) {
        let stats = self.stats();
        (stats.binaries, stats.phones)
    }

    /// The value of one metric series of `/metrics`, e.g.
    /// `pyrycode_relay_push_wakes_total{outcome="dropped"}`.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.relay.metrics_text();
        let line = text
            .lines()
            .find(|line| {
                line.rsplit_once(' ')
                    .is_some_and(|(name, _)| name == series)
            })
            .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"));
        let value = line.rsplit(' ').next().unwrap();
        value
            .parse()
            .unwrap_or_else(|_| panic!("metric {series} is not a count: {line}"))
    }

    /// Messages the relay has forwarded from phones to binaries.
    pub fn forwarded_phone_to_binary(&self) -> u64 {
        self.metric(r#"pyrycode_relay_frames_forwarded_total{direction="phone_to_binary"}"#)
    }

    /// A plain TCP connection to the relay, nothing sent yet.
    pub fn connect(&mut self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_nonblocking(true).unwrap();
        stream.set_nodelay(true).unwrap();
        let client = Client {
            stream,
            buf: Vec::new(),
            frames: ServerFrames::default(),
            eof: false,
            may_leave_unread: false,
        };
        self.settle();
        client
    }

    /// Sends `head` and returns the response status and head; the client
    /// keeps any bytes after the head.
    pub fn request(&mut self, head: &str) -> (u16, String, Client) {
        let mut client = self.connect();
        client.send_raw(self, head.as_bytes());
        let (status, response) = client.response_head(self);
        (status, response, client)
    }

    /// `/healthz`, asserting the 200: the body as text and as JSON.
    pub fn healthz(&mut self) -> (String, serde_json::Value) {
        let (status, response, mut client) =
            self.request("GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n");
        assert_eq!(status, 200, "{response}");
        let body = String::from_utf8(client.body_until_eof(self)).expect("healthz body is UTF-8");
        let value = serde_json::from_str(&body).expect("healthz body is JSON");
        (body, value)
    }

    /// The binaries and phones `/healthz` counts.
    pub fn counts(&mut self) -> (u64, u64) {
        let (_, value) = self.healthz();
        (
            value["connected_binaries"].as_u64().unwrap(),
            value["connected_phones"].as_u64().unwrap(),
        )
    }

    /// Upgrades on `path` with `headers` (name, value) plus valid WebSocket
    /// headers; returns the status, the response head and the client.
    pub fn upgrade<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        path: &str,
        headers: &[(N, V)],
    ) -> (u16, String, Client) {
        let head = upgrade_head(path, headers);
        self.request(&head)
    }

    /// A binary claiming `server_id`; asserts the 101.
    pub fn binary(&mut self, server_id: &str) -> Client {
        let (status, head, client) = self.upgrade("/v1/server", &binary_headers(server_id));
        assert_eq!(status, 101, "binary upgrade refused: {head}");
        client
    }

    /// A phone dialling `server_id`; asserts the 101.
    pub fn phone(&mut self, server_id: &str) -> Client {
        let (status, head, client) = self.upgrade("/v1/client", &phone_headers(server_id));
        assert_eq!(status, 101, "phone upgrade refused: {head}");
        client
    }

    /// A phone of `server_id` together with the conn_id its binary saw
    /// (learned from the phone's first message, which it sends).
    pub fn phone_with_id(&mut self, server_id: &str, binary: &mut Client) -> (Client, String) {
        let mut phone = self.phone(server_id);
        phone.send_text(self, br#"{"hello":true}"#);
        let envelope = binary.recv_text(self);
        let value: serde_json::Value = serde_json::from_slice(&envelope).expect("envelope is JSON");
        let conn_id = value["conn_id"].as_str().expect("conn_id").to_string();
        assert_eq!(value["frame"], serde_json::json!({"hello": true}));
        (phone, conn_id)
    }
}

/// The headers a real binary sends.
pub fn binary_headers(server_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Pyrycode-Server", server_id.to_string()),
        ("X-Pyrycode-Version", "0.9.0".to_string()),
        ("User-Agent", "pyry/0.9.0".to_string()),
    ]
}

/// The headers a real phone sends.
pub fn phone_headers(server_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Pyrycode-Server", server_id.to_string()),
        ("X-Pyrycode-Token", "opaque-secret-token".to_string()),
        ("X-Pyrycode-Device-Name", "Pixel".to_string()),
        ("User-Agent", "okhttp/4.12".to_string()),
    ]
}

/// A request head for a WebSocket upgrade on `path` with extra headers.
pub fn upgrade_head<N: AsRef<str>, V: AsRef<str>>(path: &str, headers: &[(N, V)]) -> String {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{}: {}\r\n", name.as_ref(), value.as_ref()));
    }
    head.push_str("\r\n");
    head
}

/// The closes the relay starts, as `(code, reason)` (SPEC §8).
pub const HEARTBEAT_TIMEOUT: (u16, &str) = (1011, "heartbeat timeout");
pub const MESSAGE_TIMEOUT: (u16, &str) = (1008, "message timeout");
pub const BACKLOG_FULL: (u16, &str) = (1011, "phone backlog full");
pub const SHUTTING_DOWN: (u16, &str) = (1001, "shutting down");
pub const NO_SERVER: (u16, &str) = (4404, "no server with that id");
pub const BINARY_GONE: (u16, &str) = (4404, "binary gone");
pub const RECLAIMED: (u16, &str) = (4404, "binary reclaimed server-id");
pub const ALREADY_CLAIMED: (u16, &str) = (4409, "server-id already claimed");
pub const TOO_MANY_PHONES: (u16, &str) = (4429, "too many phones for server-id");

/// A frame the relay sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A test client on a real socket: speaks WebSocket (masked frames) or
/// anything else a test wants to send.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    frames: ServerFrames,
    eof: bool,
    /// Set by [`Client::send_some`]: this client may have written bytes the
    /// relay deliberately never reads, so its hang-up need not reach the
    /// relay (see `Drop` in `sockets.rs`).
    may_leave_unread: bool,
}

impl Client {
    /// Writes all of `bytes`, letting the relay turn while the socket is
    /// full, then waits until the relay's socket has taken them
    /// ([`Client::wait_taken`]). For bytes the relay is meant not to read,
    /// use [`Client::send_some`].
    pub fn send_raw(&mut self, h: &mut Harness, bytes: &[u8]) {
        let mut at = 0;
        let mut stuck = 0;
        while at < bytes.len() {
            match self.stream.write(&bytes[at..]) {
                Ok(n) => {
                    at += n;
                    stuck = 0;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    h.turn(Duration::from_millis(1));
                    stuck += 1;
                    assert!(
                        stuck < PATIENCE_TURNS,
                        "the relay stopped reading: {at} of {} bytes written",
                        bytes.len()
                    );
                }
                Err(err) => panic!("write failed after {at} of {} bytes: {err}", bytes.len()),
            }
        }
        self.wait_taken(h);
    }

    /// Writes what it can of `bytes` without waiting; returns how much.
    /// For tests that push until the relay stops reading this client: such
    /// a client may be dropped with bytes the relay never took.
    pub fn send_some(&mut self, bytes: &[u8]) -> usize {
        self.may_leave_unread = true;
        match self.stream.write(bytes) {
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => 0,
            Err(err) => panic!("write failed: {err}"),
        }
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, h: &mut Harness, opcode: u8, fin: bool, payload: &[u8]) {
        let frame = masked_frame(opcode, fin, payload);
        self.send_raw(h, &frame);
    }

    pub fn send_text(&mut self, h: &mut Harness, payload: &[u8]) {
        self.send_frame(h, 0x1, true, payload);
    }

    pub fn send_binary(&mut self, h: &mut Harness, payload: &[u8]) {
        self.send_frame(h, 0x2, true, payload);
    }

    pub fn send_ping(&mut self, h: &mut Harness, payload: &[u8]) {
        self.send_frame(h, 0x9, true, payload);
    }

    pub fn send_pong(&mut self, h: &mut Harness, payload: &[u8]) {
        self.send_frame(h, 0xA, true, payload);
    }

    pub fn send_close(&mut self, h: &mut Harness, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(h, 0x8, true, &payload);
    }

    /// Reads whatever the socket has now into the buffer.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let mut got = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return got;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    got = true;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return got,
                Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return got;
                }
                Err(err) => panic!("read failed: {err}"),
            }
        }
    }

    /// Waits for an HTTP response head; returns its status and text.
    pub fn response_head(&mut self, h: &mut Harness) -> (u16, String) {
        for _ in 0..PATIENCE_TURNS {
            self.fill();
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let head = String::from_utf8(head).expect("response head is text");
                let status = head[9..12].parse().expect("status code");
                return (status, head);
            }
            assert!(
                !self.eof,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            h.turn(Duration::from_millis(1));
        }
        panic!(
            "no response head arrived within {PATIENCE_TURNS} relay turns; got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// The bytes after the response head, up to EOF.
    pub fn body_until_eof(&mut self, h: &mut Harness) -> Vec<u8> {
        self.wait_eof(h);
        std::mem::take(&mut self.buf)
    }

    /// Waits for the next frame.
    pub fn recv(&mut self, h: &mut Harness) -> Msg {
        for _ in 0..PATIENCE_TURNS {
            if let Some(msg) = self.parse_frame() {
                return msg;
            }
            self.fill();
            if let Some(msg) = self.parse_frame() {
                return msg;
            }
            assert!(
                !self.eof,
                "connection closed while waiting for a frame ({} bytes of a partial frame)",
                self.buf.len()
            );
            h.turn(Duration::from_millis(1));
        }
        panic!(
            "no frame arrived within {PATIENCE_TURNS} relay turns ({} bytes of a partial frame)",
            self.buf.len()
        );
    }

    /// Waits for the next frame that is not a ping or pong.
    pub fn recv_data(&mut self, h: &mut Harness) -> Msg {
        loop {
            match self.recv(h) {
                Msg::Ping(_) | Msg::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// Waits for a text message and returns its bytes.
    pub fn recv_text(&mut self, h: &mut Harness) -> Vec<u8> {
        match self.recv_data(h) {
            Msg::Text(bytes) => bytes,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Waits for a close frame (skipping pings); returns its code and reason.
    pub fn recv_close(&mut self, h: &mut Harness) -> (Option<u16>, String) {
        match self.recv_data(h) {
            Msg::Close(code, reason) => (code, reason),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// A frame already received, without waiting (after a settle).
    pub fn try_recv(&mut self, h: &mut Harness) -> Option<Msg> {
        h.settle();
        self.fill();
        self.parse_frame()
    }

    /// Asserts that nothing but pings arrived.
    pub fn assert_no_data(&mut self, h: &mut Harness) {
        while let Some(msg) = self.try_recv(h) {
            assert!(matches!(msg, Msg::Ping(_)), "unexpected frame {msg:?}");
        }
        assert!(!self.eof, "connection unexpectedly closed");
    }

    /// Waits until the relay closes the TCP connection.
    pub fn wait_eof(&mut self, h: &mut Harness) {
        for _ in 0..PATIENCE_TURNS {
            self.fill();
            if self.eof {
                return;
            }
            h.turn(Duration::from_millis(1));
        }
        panic!("the relay never closed the connection (waited {PATIENCE_TURNS} relay turns)");
    }

    /// Whether the relay has closed the TCP connection (after a settle).
    pub fn is_closed(&mut self, h: &mut Harness) -> bool {
        h.settle();
        self.fill();
        self.eof
    }

    /// Completes a close the relay started: expects its close frame,
    /// echoes it, and waits for EOF. Returns the code and reason.
    pub fn expect_closed_by_relay(&mut self, h: &mut Harness) -> (Option<u16>, String) {
        let (code, reason) = self.recv_close(h);
        match code {
            Some(code) => _ = self.echo_close(h, code),
            None => self.wait_eof(h),
        }
        (code, reason)
    }

    /// Answers a close already received with a close of `code` and waits
    /// for the relay's FIN; returns whether the echo could be written (the
    /// relay may have hung up already).
    pub fn echo_close(&mut self, h: &mut Harness, code: u16) -> bool {
        let written = self
            .stream
            .write_all(&masked_frame(0x8, true, &code.to_be_bytes()))
            .is_ok();
        self.wait_eof(h);
        written
    }

    /// [`Client::expect_closed_by_relay`], asserting the code and reason
    /// (one of the `(code, reason)` constants, e.g. [`BINARY_GONE`]).
    pub fn expect_closed(&mut self, h: &mut Harness, (code, reason): (u16, &str)) {
        let (got, why) = self.expect_closed_by_relay(h);
        assert_eq!((got, why.as_str()), (Some(code), reason));
    }

    /// Waits for a close frame (skipping pings) and asserts its code and
    /// reason; the handshake is left to the test.
    pub fn expect_close_frame(&mut self, h: &mut Harness, (code, reason): (u16, &str)) {
        let (got, why) = self.recv_close(h);
        assert_eq!((got, why.as_str()), (Some(code), reason));
    }

    fn parse_frame(&mut self) -> Option<Msg> {
        self.frames.take(&mut self.buf)
    }
}

/// Decodes what the relay sends with the library's WebSocket reader (in
/// the client role: the relay's frames must be unmasked and well-formed).
#[derive(Default)]
pub struct ServerFrames {
    reader: Option<Reader>,
    decoded: VecDeque<Msg>,
}

impl ServerFrames {
    /// The next frame the relay sent: `buf` (bytes read from the socket)
    /// is emptied into the reader first.
    pub fn take(&mut self, buf: &mut Vec<u8>) -> Option<Msg> {
        if !buf.is_empty() {
            let reader = self.reader.get_or_insert_with(|| Reader::new(Role::Client));
            for event in reader.read_all(buf, usize::MAX, &mut Unpooled) {
                self.decoded.push_back(match event {
                    OwnedEvent::Message {
                        text: true,
                        payload,
                    } => Msg::Text(payload),
                    OwnedEvent::Message {
                        text: false,
                        payload,
                    } => Msg::Binary(payload),
                    OwnedEvent::Ping(payload) => Msg::Ping(payload),
                    OwnedEvent::Pong(payload) => Msg::Pong(payload),
                    OwnedEvent::Close { code, reason } => Msg::Close(code, reason),
                    OwnedEvent::Error(error) => panic!("the relay sent a bad frame: {error:?}"),
                });
            }
            buf.clear();
        }
        self.decoded.pop_front()
    }

    /// Bytes of a partial frame the reader holds.
    pub fn pending(&self) -> usize {
        self.reader.as_ref().map_or(0, Reader::pending_len)
    }
}

/// A client frame: masked with a fixed key.
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    stream::client_frame(opcode, fin, [0x37, 0xfa, 0x21, 0x3d], payload)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Builds a binary→phone envelope with `frame` spliced in verbatim.
pub fn envelope(conn_id: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = format!("{{\"conn_id\":\"{conn_id}\",\"frame\":").into_bytes();
    out.extend_from_slice(frame);
    out.push(b'}');
    out
}

/// The close notice a binary gets when one of its phones is gone (SPEC §5.4).
pub fn close_notice(conn_id: &str, code: u16) -> Vec<u8> {
    format!("{{\"conn_id\":\"{conn_id}\",\"close_code\":{code}}}").into_bytes()
}
