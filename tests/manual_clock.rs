//! `--manual-clock` end to end, with the real executable, as another
//! project's test suite uses it: relay time moves only through
//! `POST /clock/advance` on the metrics listener, and each answer comes
//! after the timers it fired have done their work on the sockets.
//!
//! Real sockets, real time for the kernel: every read is bounded by
//! [`WAIT`]. "Nothing arrived" is checked with a non-blocking read once
//! the advance has been answered: the relay writes what its timers
//! produce before it writes the answer, so anything it wrongly sent would
//! already be there.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::fixture::{binary_headers, masked_frame, phone_headers, upgrade_head, Frame};
use pyrycode_relay::ws::{OwnedEvent, Reader, Role};

const RELAY: &str = env!("CARGO_BIN_EXE_pyrycode-relay");
/// The longest any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// The relay started with `--manual-clock`; its stderr collected.
struct Relay {
    child: Child,
    addr: SocketAddr,
    control: SocketAddr,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let mut child = Command::new(RELAY)
            .args(["--insecure-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--manual-clock"])
            .args(extra)
            .env_remove("PYRYCODE_RELAY_PRODUCTION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the relay");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let unset: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut relay = Relay {
            child,
            addr: unset,
            control: unset,
            lines,
            log: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        while relay.addr == unset {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match relay.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(err) => panic!("the relay did not start ({err:?}): {:#?}", relay.log),
            };
            relay.log.push(line.clone());
            if let Some(rest) = line.split("control=http://").nth(1) {
                let addr = rest.split('/').next().unwrap();
                relay.control = addr.parse().expect("control address");
            }
            if let Some(rest) = line.split("listening addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                relay.addr = addr.parse().expect("listening address");
            }
        }
        assert_ne!(relay.control, unset, "no control address: {:#?}", relay.log);
        relay
    }

    /// `POST /clock/advance?by=…`; returns the answer's `elapsed_ms`.
    fn advance(&self, by: &str) -> u64 {
        let request = format!("POST /clock/advance?by={by} HTTP/1.1\r\nHost: relay\r\n\r\n");
        let (status, body) = http(self.control, &request);
        assert_eq!(status, 200, "advance {by}: {body}");
        elapsed_ms(&body)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection; the status and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("a response up to EOF");
    let status = response.get(9..12).and_then(|s| s.parse().ok());
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (
        status.unwrap_or_else(|| panic!("not HTTP: {response:?}")),
        body,
    )
}

fn elapsed_ms(body: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
    value["elapsed_ms"].as_u64().expect("elapsed_ms")
}

/// A blocking WebSocket client; frames decoded by the library's reader.
struct Ws {
    stream: TcpStream,
    reader: Reader,
    frames: Vec<Frame>,
}

impl Ws {
    fn connect(addr: SocketAddr, path: &str, headers: &[(&'static str, String)]) -> Ws {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(upgrade_head(path, headers).as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("a response head");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        Ws {
            stream,
            reader: Reader::new(Role::Client),
            frames: Vec::new(),
        }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked_frame(opcode, true, payload))
            .unwrap();
    }

    fn decode(&mut self, bytes: &[u8]) {
        for event in self.reader.read_all(bytes, usize::MAX, &mut Unpooled) {
            self.frames.push(match event {
                OwnedEvent::Message {
                    text: true,
                    payload,
                } => Frame::Text(payload),
                OwnedEvent::Message { payload, .. } => Frame::Binary(payload),
                OwnedEvent::Ping(payload) => Frame::Ping(payload),
                OwnedEvent::Pong(payload) => Frame::Pong(payload),
                OwnedEvent::Close { code, reason } => Frame::Close(code, reason),
                OwnedEvent::Error(err) => panic!("a bad frame from the relay: {err:?}"),
            });
        }
    }

    /// The next frame, waiting at most [`WAIT`].
    fn recv(&mut self) -> Frame {
        while self.frames.is_empty() {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("EOF while waiting for a frame"),
                Ok(n) => self.decode(&chunk[..n]),
                Err(err) => panic!("no frame: {err}"),
            }
        }
        self.frames.remove(0)
    }

    /// The frames that have arrived by now, without waiting for more.
    /// (The kernel may still be moving the relay's last bytes between
    /// loopback sockets: give it a few yields, never a sleep.)
    fn arrived(&mut self) -> Vec<Frame> {
        self.stream.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 4096];
        for _ in 0..100 {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.decode(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => thread::yield_now(),
                Err(err) => panic!("read failed: {err}"),
            }
        }
        self.stream.set_nonblocking(false).unwrap();
        std::mem::take(&mut self.frames)
    }
}

#[test]
fn a_departed_binarys_phone_is_closed_at_the_grace_deadline_before_the_advance_returns() {
    let relay = Relay::start(&[]);
    let mut binary = Ws::connect(relay.addr, "/v1/server", &binary_headers("mc-grace"));
    let mut phone = Ws::connect(relay.addr, "/v1/client", &phone_headers("mc-grace"));
    phone.send(0x1, br#"{"hi":1}"#);
    assert!(matches!(binary.recv(), Frame::Text(_)));

    binary.send(0x8, &1000u16.to_be_bytes());
    assert_eq!(binary.recv(), Frame::Close(Some(1000), String::new()));
    drop(binary);

    assert_eq!(relay.advance("29s"), 29_000);
    assert_eq!(phone.arrived(), vec![], "the phone is still open at 29 s");
    assert_eq!(relay.advance("2s"), 31_000);
    assert_eq!(
        phone.arrived(),
        vec![Frame::Close(Some(4404), "binary gone".to_string())],
        "closed by the time the advance was answered"
    );
    let (status, body) = http(relay.control, "GET /clock HTTP/1.1\r\n\r\n");
    assert_eq!((status, elapsed_ms(&body)), (200, 31_000));
}

#[test]
fn a_silent_phone_is_pinged_at_30s_and_closed_1011_at_60s() {
    let relay = Relay::start(&[]);
    let mut binary = Ws::connect(relay.addr, "/v1/server", &binary_headers("mc-beat"));
    let mut phone = Ws::connect(relay.addr, "/v1/client", &phone_headers("mc-beat"));

    assert_eq!(relay.advance("29s"), 29_000);
    assert_eq!(phone.arrived(), vec![]);
    assert_eq!(relay.advance("1s"), 30_000);
    assert_eq!(phone.arrived(), vec![Frame::Ping(Vec::new())]);
    // The binary answers its ping; the phone does not. The pong is
    // handled before the next advance moves the clock.
    assert_eq!(binary.recv(), Frame::Ping(Vec::new()));
    binary.send(0xA, b"");

    assert_eq!(relay.advance("29s"), 59_000);
    assert_eq!(phone.arrived(), vec![]);
    assert_eq!(relay.advance("1s"), 60_000);
    assert_eq!(
        phone.arrived(),
        vec![Frame::Close(Some(1011), "heartbeat timeout".to_string())]
    );
    // The binary stays, and hears that its phone is gone.
    match binary.recv() {
        Frame::Text(notice) => assert!(
            notice.ends_with(br#","close_code":1011}"#),
            "{}",
            String::from_utf8_lossy(&notice)
        ),
        other => panic!("expected the close notice, got {other:?}"),
    }
    let (_, health) = http(relay.addr, "GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.contains("\"connected_binaries\":1"), "{health}");
}

#[test]
fn the_clock_is_logged_loudly_and_moves_only_when_told() {
    let mut relay = Relay::start(&[]);
    let (_, health) = http(relay.addr, "GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.contains("\"uptime_seconds\":0"), "{health}");
    assert_eq!(relay.advance("2m"), 120_000);
    assert_eq!(relay.advance("500ms"), 120_500);
    let (_, health) = http(relay.addr, "GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.contains("\"uptime_seconds\":120"), "{health}");
    let warning = relay
        .log
        .iter()
        .find(|line| line.contains("manual_clock_enabled"))
        .expect("the manual clock is announced");
    assert!(warning.contains("WARN"), "{warning}");
    relay.child.kill().unwrap();
}

#[test]
fn without_manual_clock_the_clock_paths_are_404() {
    // A production metrics listener needs a fixed port: take a free one.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free loopback port")
        .to_string();
    let mut child = Command::new(RELAY)
        .args([
            "--insecure-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &free,
        ])
        .args(["--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    // The metrics port is not logged without --manual-clock: find it as
    // the second listening socket of the child in /proc.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.expect("a log line").contains("listening addr=") {
            break;
        }
    }
    let metrics = listening_ports(child.id())
        .into_iter()
        .find(|addr| {
            let (status, _) = http(*addr, "GET /metrics HTTP/1.1\r\n\r\n");
            status == 200
        })
        .expect("the metrics listener");
    for request in [
        "POST /clock/advance?by=30s HTTP/1.1\r\n\r\n",
        "GET /clock HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(http(metrics, request).0, 404, "{request}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_manual_clock_is_refused_in_production_and_without_a_control_listener() {
    for (env, args, says) in [
        (
            Some("1"),
            &["--manual-clock"][..],
            "PYRYCODE_RELAY_PRODUCTION",
        ),
        (
            None,
            &["--manual-clock", "--metrics-listen", ""][..],
            "--metrics-listen",
        ),
    ] {
        let mut command = Command::new(RELAY);
        command
            .args(["--insecure-listen", "127.0.0.1:0"])
            .args(args);
        match env {
            Some(value) => command.env("PYRYCODE_RELAY_PRODUCTION", value),
            None => command.env_remove("PYRYCODE_RELAY_PRODUCTION"),
        };
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("run the relay");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// The TCP ports process `pid` listens on (from /proc/net/tcp and the
/// process's socket inodes).
fn listening_ports(pid: u32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(
                        link.strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(ip)),
                port,
            )))
        })
        .collect()
}
