//! The deterministic test harness: the real relay loop in-process on
//! `127.0.0.1:0`, driven turn by turn, with time from a [`ManualClock`]
//! and clients on real loopback sockets.
//!
//! Nothing here sleeps. A client waiting for bytes lets the relay take
//! turns until the bytes are there (bounded, so a missing frame fails the
//! test instead of hanging it); relay time only moves when a test calls
//! [`Harness::advance`]. A 30 s grace window runs in microseconds.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[path = "../support/stream.rs"]
pub mod stream;

use std::collections::VecDeque;

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::ws::{OwnedEvent, Reader, Role};
use pyrycode_relay::{Config, ManualClock, Relay, Stats};

/// How many relay turns a client waits for something before failing.
const PATIENCE_TURNS: usize = 20_000;

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
        panic!("the relay never became idle");
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

    pub fn stats(&mut self) -> Stats {
        self.settle();
        self.relay.stats()
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
}

impl Client {
    /// Writes all of `bytes`, letting the relay turn while the socket is full.
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
                    assert!(stuck < PATIENCE_TURNS, "the relay stopped reading");
                }
                Err(err) => panic!("write failed: {err}"),
            }
        }
        self.wait_taken(h);
    }

    /// Lets the relay turn until the relay's socket has taken (ACKed)
    /// everything this client wrote, then settles. Loopback delivery can
    /// lag behind `write` on a loaded machine; without this a test could
    /// move the clock before the relay has seen the bytes. Gives up
    /// quietly when the relay's receive window is full (a relay that is
    /// deliberately not reading this client).
    pub fn wait_taken(&mut self, h: &mut Harness) {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        let mut last = None;
        let mut unchanged = 0;
        while let Some(queued @ 1..) = unacknowledged(fd) {
            if last == Some(queued) {
                unchanged += 1;
                if unchanged > 200 {
                    break;
                }
            } else {
                unchanged = 0;
                last = Some(queued);
                // The relay's socket may be holding back its ACK (delayed
                // ACK, up to 40 ms): ask it to send the ACK now.
                if let Some(relay_fd) = self.find_relay_fd() {
                    quick_ack(relay_fd);
                }
            }
            h.turn(Duration::from_millis(1));
        }
        h.settle();
    }

    /// Writes what it can of `bytes` without waiting; returns how much.
    pub fn send_some(&mut self, bytes: &[u8]) -> usize {
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
        panic!("no response head arrived");
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
            assert!(!self.eof, "connection closed while waiting for a frame");
            h.turn(Duration::from_millis(1));
        }
        panic!("no frame arrived");
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
        panic!("the relay never closed the connection");
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
        if let Some(code) = code {
            let _ = self
                .stream
                .write_all(&masked_frame(0x8, true, &code.to_be_bytes()));
        }
        self.wait_eof(h);
        (code, reason)
    }

    fn parse_frame(&mut self) -> Option<Msg> {
        self.frames.take(&mut self.buf)
    }
}

impl Drop for Client {
    /// Hangs up (FIN) and waits, briefly and without the relay's help,
    /// until the relay's socket has acknowledged the FIN: the kernel does
    /// that by itself, but on a loaded machine a moment later, and a test
    /// that counts the relay's connections right after a drop must not
    /// look before the FIN is there.
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let fd = self.stream.as_raw_fd();
        for _ in 0..100_000 {
            match unacknowledged(fd) {
                Some(1..) => std::thread::yield_now(),
                _ => return,
            }
        }
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

/// Kernel buffer sizes of a test socket, to make a peer that stops reading
/// (or a relay that stops reading it) push back after kilobytes instead of
/// the megabytes loopback autotuning allows.
impl Client {
    /// Caps this client's receive buffer (`SO_RCVBUF`).
    pub fn set_recv_buffer(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        set_socket_buffer(self.stream.as_raw_fd(), libc::SO_RCVBUF, bytes);
    }

    /// Caps this client's send buffer (`SO_SNDBUF`).
    pub fn set_send_buffer(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        set_socket_buffer(self.stream.as_raw_fd(), libc::SO_SNDBUF, bytes);
    }

    /// Caps the send buffer of the relay's end of this connection (the
    /// relay runs in this process, so its socket is one of ours).
    pub fn set_relay_send_buffer(&self, bytes: usize) {
        set_socket_buffer(self.relay_fd(), libc::SO_SNDBUF, bytes);
    }

    /// Caps the receive buffer of the relay's end of this connection.
    pub fn set_relay_recv_buffer(&self, bytes: usize) {
        set_socket_buffer(self.relay_fd(), libc::SO_RCVBUF, bytes);
    }

    /// The descriptor of the relay's end of this connection: the socket
    /// of this process whose peer is this client.
    fn relay_fd(&self) -> std::os::fd::RawFd {
        self.find_relay_fd()
            .expect("the relay's end of this connection was not found")
    }
}

/// The IPv4 address `get` (getsockname or getpeername) gives for `fd`.
fn socket_addr(
    fd: std::os::fd::RawFd,
    get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_in is plain data; the length tells the kernel its size.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid pointers to `addr` and `len`; a non-socket fd just fails.
    let rc = unsafe { get(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

fn set_socket_buffer(fd: std::os::fd::RawFd, option: libc::c_int, bytes: usize) {
    let value = bytes as libc::c_int;
    // SAFETY: a socket descriptor and a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Delivery barriers. A loopback write normally lands in the other
/// socket during the write call, but under load the kernel may defer that
/// to a later softirq: a `settle` can then find nothing to do, and a
/// following `advance` moves time before the relay has read a pong (or
/// before a client sees the ping it must answer). These wait on the
/// kernel's own count of unacknowledged bytes (`TIOCOUTQ`), which reaches
/// zero only once the receiving socket has the bytes.
impl Client {
    /// Waits until the relay's socket holds everything this client wrote,
    /// then lets the relay act on it.
    pub fn wait_delivered(&mut self, h: &mut Harness) {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        for _ in 0..PATIENCE_TURNS {
            // Done once acknowledged, or once the relay has no socket for
            // this connection any more (nothing left to deliver to).
            if unacknowledged(fd) == Some(0) || self.find_relay_fd().is_none() {
                h.settle();
                return;
            }
            h.turn(Duration::from_millis(1));
        }
        panic!("the relay's socket never took this client's bytes");
    }

    /// Waits until this client's socket holds everything the relay's
    /// socket has taken for it (the client must have room to receive).
    pub fn wait_received(&mut self, h: &mut Harness) {
        use std::os::fd::AsRawFd;
        h.settle();
        for _ in 0..PATIENCE_TURNS {
            match self.find_relay_fd().and_then(unacknowledged) {
                None | Some(0) => return,
                Some(_) => {
                    // Take what arrived and acknowledge it now rather
                    // than after the delayed-ACK timer (up to 40 ms).
                    self.fill();
                    quick_ack(self.stream.as_raw_fd());
                    h.turn(Duration::from_millis(1));
                }
            }
        }
        panic!("this client's socket never took the relay's bytes");
    }

    /// Both directions: the relay has read what this client sent, acted on
    /// it, and this client's socket holds what the relay wrote.
    pub fn sync(&mut self, h: &mut Harness) {
        self.wait_delivered(h);
        self.wait_received(h);
    }

    /// Closes this client's socket and waits until the relay's socket has
    /// the FIN, then lets the relay act on it.
    pub fn hang_up(mut self, h: &mut Harness) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.wait_delivered(h);
    }

    /// Bytes the relay's socket of this connection has received but the
    /// relay has not read (`FIONREAD`); `None` once the relay dropped it.
    pub fn relay_unread(&self) -> Option<usize> {
        let fd = self.find_relay_fd()?;
        let mut value: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through a valid pointer.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut value as *mut libc::c_int) };
        (rc == 0).then_some(value as usize)
    }

    /// Bytes the relay wrote to this connection that this client's socket
    /// has not taken yet; `None` once the relay dropped it.
    pub fn relay_unacknowledged(&self) -> Option<usize> {
        self.find_relay_fd().and_then(unacknowledged)
    }

    /// Waits until neither socket of this connection moves any bytes for
    /// a few real milliseconds (for a client that has stopped reading).
    pub fn wait_still(&mut self, h: &mut Harness) {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        let state = |c: &Client| {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int through a valid pointer.
            unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread as *mut libc::c_int) };
            (unread, c.relay_unacknowledged(), c.relay_unread())
        };
        let mut last = state(self);
        let mut still = 0;
        for _ in 0..PATIENCE_TURNS {
            h.turn(Duration::from_millis(1));
            let now = state(self);
            if now == last {
                still += 1;
                if still >= 10 {
                    h.settle();
                    return;
                }
            } else {
                still = 0;
                last = now;
            }
        }
        panic!("the connection never became still");
    }

    /// The relay's end of this connection, if the relay still has it.
    fn find_relay_fd(&self) -> Option<std::os::fd::RawFd> {
        let local = self.stream.local_addr().ok()?;
        let peer = self.stream.peer_addr().ok()?;
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .find(|&fd| {
                socket_addr(fd, libc::getpeername) == Some(local)
                    && socket_addr(fd, libc::getsockname) == Some(peer)
            })
    }
}

/// Makes socket `fd` acknowledge what it has received at once.
fn quick_ack(fd: std::os::fd::RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a socket descriptor and a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Bytes written to socket `fd` that its peer has not acknowledged yet.
fn unacknowledged(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut value: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut value as *mut libc::c_int) };
    (rc == 0).then_some(value as usize)
}
