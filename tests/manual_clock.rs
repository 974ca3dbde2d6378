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

#[path = "support/blocking.rs"]
mod blocking;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use blocking::{http_text as http, Ws};
use process::{free_addr, relay_command, run_to_exit, RelayProcess};
use pyrycode_relay::fixture::{binary_headers, phone_headers, Frame};

/// The relay started with `--manual-clock`, and its control address.
struct Relay {
    relay: RelayProcess,
    control: SocketAddr,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let mut command = relay_command(&["--insecure-listen", "127.0.0.1:0"]);
        command
            .args(["--metrics-listen", "127.0.0.1:0", "--manual-clock"])
            .args(extra);
        let mut relay = RelayProcess::spawn(command, 1);
        let line = relay.wait_logged("control=http://");
        let rest = line.split("control=http://").nth(1).unwrap();
        let control = rest.split('/').next().unwrap();
        let control = control.parse().expect("control address");
        Relay { relay, control }
    }

    /// `POST /clock/advance?by=…`; returns the answer's `elapsed_ms`.
    fn advance(&self, by: &str) -> u64 {
        let request = format!("POST /clock/advance?by={by} HTTP/1.1\r\nHost: relay\r\n\r\n");
        let (status, body) = http(self.control, &request);
        assert_eq!(status, 200, "advance {by}: {body}");
        elapsed_ms(&body)
    }
}

impl Deref for Relay {
    type Target = RelayProcess;
    fn deref(&self) -> &RelayProcess {
        &self.relay
    }
}

impl DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut RelayProcess {
        &mut self.relay
    }
}

fn elapsed_ms(body: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
    value["elapsed_ms"].as_u64().expect("elapsed_ms")
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
    relay.kill();
}

#[test]
fn without_manual_clock_the_clock_paths_are_404() {
    // A production metrics listener needs a fixed port: take a free one.
    let free = free_addr().to_string();
    let args = [
        "--insecure-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &free,
    ];
    let mut command = relay_command(&args);
    command.args(["--log-level", "debug"]);
    // The metrics port is not logged without --manual-clock: find it as
    // the second listening socket of the child in /proc.
    let relay = RelayProcess::spawn(command, 1);
    let metrics = listening_ports(relay.pid())
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
        let mut command = relay_command(&["--insecure-listen", "127.0.0.1:0"]);
        command.args(args);
        if let Some(value) = env {
            command.env("PYRYCODE_RELAY_PRODUCTION", value);
        }
        let (status, _, stderr) = run_to_exit(command);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
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
