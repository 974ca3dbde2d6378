//! Whole connections through the real relay loop: the relay runs
//! in-process with a `ManualClock` (as in `tests/common/mod.rs`) and the
//! fuzzer's bytes arrive on a real loopback socket, cut into writes at
//! fuzzer-chosen points, with relay time moved between writes by a
//! fuzzer-chosen amount (so handshake, message, ping and pong deadlines
//! fire mid-stream).
//!
//! The first byte picks what the stream is:
//! - raw bytes from the first byte on (the HTTP phase and beyond),
//! - a phone's bytes after a valid upgrade (its binary is connected),
//! - a binary's bytes after a valid upgrade (one phone is connected).
//!
//! Every input must leave the relay clean: once the clients hang up and
//! relay time passes the grace and close deadlines, no connection, peer
//! or buffer is left, and the relay still serves `/healthz`.
#![no_main]

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pyrycode_relay::{Config, ManualClock, Relay, Stats};

mod split;

struct Fixture {
    relay: Relay,
    clock: ManualClock,
    addr: SocketAddr,
    runs: u64,
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
    let relay = Relay::new(config, Box::new(clock.clone())).expect("relay binds");
    let addr = relay.local_addr();
    Fixture {
        relay,
        clock,
        addr,
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
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_nonblocking(true).unwrap();
        stream.set_nodelay(true).unwrap();
        self.settle();
        stream
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
    let server_id = format!("fz-{}", f.runs);
    let input = split::split(data);
    let mut others = Vec::new();
    let mut prefix = Vec::new();
    match mode % 3 {
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
    let mut client = f.connect();
    if mode % 3 == 2 {
        // The fuzzed binary gets a phone; its conn_id is unknown to the
        // fuzzer, but its frames reach the binary and notices go out.
        client.write_all(&prefix).unwrap();
        f.settle();
        expect_101(f, &mut client);
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
        if !first || !bytes.is_empty() {
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
