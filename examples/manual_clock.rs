//! Another project's test, in miniature: start the relay binary with
//! `--manual-clock`, connect a binary and a phone, and make 30 s of grace
//! pass in no time through the control endpoint (docs/TESTING.md).
//!
//! ```text
//! cargo build && cargo run --example manual_clock
//! cargo run --example manual_clock -- path/to/pyrycode-relay
//! ```
//!
//! Only the standard library and the relay's own WebSocket framing are
//! used, so the steps map one to one onto any language's test suite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::ws::{self, OwnedEvent, Reader, Role};

fn main() {
    let relay_path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(beside_this_example);
    let (mut relay, addr, control) = start_relay(&relay_path);

    let mut binary = WebSocket::connect(addr, "/v1/server", &[("X-Pyrycode-Version", "0.9.0")]);
    let mut phone = WebSocket::connect(addr, "/v1/client", &[("X-Pyrycode-Token", "t")]);
    phone.send(0x1, br#"{"hello":true}"#);
    println!(
        "binary got: {}",
        String::from_utf8_lossy(&binary.next_message())
    );

    binary.send(0x8, &1000u16.to_be_bytes()); // the binary leaves
    println!("advance 29s -> {}", advance(control, "29s"));
    println!("advance 2s  -> {}", advance(control, "2s"));
    // The phone's close was written before the advance was answered.
    match phone.next_event() {
        OwnedEvent::Close { code, reason } => println!("phone closed: {code:?} {reason:?}"),
        other => panic!("expected the phone's close, got {other:?}"),
    }
    let _ = relay.kill();
    let _ = relay.wait();
}

/// `target/debug/pyrycode-relay` when this runs as `target/debug/examples/manual_clock`.
fn beside_this_example() -> PathBuf {
    let exe = std::env::current_exe().expect("this example's path");
    let dir = exe.parent().and_then(|examples| examples.parent());
    dir.expect("target/<profile>").join("pyrycode-relay")
}

/// Starts the relay on free loopback ports and reads its two addresses
/// from the log: `manual_clock_enabled control=http://ADDR/…` and
/// `listening addr=ADDR`.
fn start_relay(path: &PathBuf) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(path)
        .args(["--insecure-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--manual-clock"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err} (cargo build first)", path.display()));
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut addr, mut control) = (None, None);
    while addr.is_none() || control.is_none() {
        let line = log.next().expect("the relay's log").expect("a log line");
        let after = |marker: &str| line.split(marker).nth(1).map(str::to_string);
        if let Some(rest) = after("control=http://") {
            control = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = after("listening addr=") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    std::thread::spawn(move || log.for_each(drop)); // keep draining the log
    (child, addr.unwrap(), control.unwrap())
}

/// `POST /clock/advance?by=…`: returns once the timers due by then have
/// fired and their output has been written.
fn advance(control: SocketAddr, by: &str) -> String {
    let mut http = TcpStream::connect(control).expect("the control endpoint");
    write!(
        http,
        "POST /clock/advance?by={by} HTTP/1.1\r\nHost: relay\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

struct WebSocket {
    stream: TcpStream,
    reader: Reader,
    events: Vec<OwnedEvent>,
}

impl WebSocket {
    /// Upgrades on `path` for server-id `example`, with the headers every
    /// client sends plus `extra`.
    fn connect(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> WebSocket {
        let mut stream = TcpStream::connect(addr).expect("the relay");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Pyrycode-Server: example\r\nUser-Agent: example/1\r\n"
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        stream.write_all(format!("{head}\r\n").as_bytes()).unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).expect("a response");
            response.push(byte[0]);
        }
        assert!(response.starts_with(b"HTTP/1.1 101"), "not upgraded");
        let reader = Reader::new(Role::Client);
        WebSocket {
            stream,
            reader,
            events: Vec::new(),
        }
    }

    /// Sends one masked frame.
    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = Vec::new();
        ws::write_client_frame(&mut frame, opcode, true, &[payload], [1, 2, 3, 4]);
        self.stream.write_all(&frame).unwrap();
    }

    fn next_event(&mut self) -> OwnedEvent {
        while self.events.is_empty() {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("a frame within 5 s");
            assert!(n > 0, "the relay closed the connection");
            self.events = self.reader.read_all(&chunk[..n], usize::MAX, &mut Unpooled);
        }
        self.events.remove(0)
    }

    fn next_message(&mut self) -> Vec<u8> {
        match self.next_event() {
            OwnedEvent::Message { payload, .. } => payload,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}
