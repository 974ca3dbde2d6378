//! Upgrading the real executable in place (issue #12), real sockets, real
//! time: the relay runs from a copy in a temporary directory; a test puts
//! another file at that path and sends SIGUSR2.
//!
//! - pairs exchanging in both directions lose nothing, see no close, and
//!   the process (same PID) now runs the new file;
//! - timers survive: a grace window and a pong deadline end on their old
//!   schedule (short timing flags);
//! - a failed upgrade — the new file exits 1, is not executable, reads
//!   only an unknown state version, or never answers — costs nothing, and
//!   a second SIGUSR2 during a check is ignored;
//! - push wakes in flight finish before the exec, or are counted as
//!   abandoned when FCM does not answer within the bounded second.
//!
//! Every wait is bounded and names what it waited for. The only timing
//! assertions are the timer tests' windows, each a second or more wide
//! on either side of the difference they detect.

#[path = "support/blocking.rs"]
mod blocking;
mod common;
mod fake_http;
#[path = "support/process.rs"]
mod process;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blocking::{http, Ws};
use common::{binary_headers, envelope, masked_frame, phone_headers, Msg};
use fake_http::google::{key_json, oauth_server, PRIVATE_KEY};
use fake_http::{FakeServer, Reply, Stall};
use process::{
    clean_command, free_addr, relay_command, run_relay, run_to_exit, RelayProcess, TempDir, PLAIN,
    RELAY,
};

/// The longest any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------
// The relay, run from a file the test can replace
// ---------------------------------------------------------------------

/// Puts a new file at `path` the way a package upgrade does: written
/// beside it, then renamed over it. `extra` makes its bytes differ from
/// the build under test (an ELF file runs the same with bytes appended).
fn install(path: &Path, source: &Path, extra: &[u8], mode: u32) {
    let staged = path.with_extension("new");
    let mut bytes = std::fs::read(source).expect("read the new file");
    bytes.extend_from_slice(extra);
    std::fs::write(&staged, &bytes).expect("write the new file");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staged, path).expect("rename over the old file");
}

fn install_script(path: &Path, script: &str) {
    let staged = path.with_extension("script");
    std::fs::write(&staged, script).unwrap();
    install(path, &staged, b"", 0o755);
}

/// The relay run from a copy in a directory of its own, with a metrics
/// listener on a fixed free port.
struct Upgradable {
    relay: RelayProcess,
    exe: PathBuf,
    metrics: SocketAddr,
    _dir: TempDir,
}

impl Upgradable {
    /// Copies the relay to a temporary directory and starts it from there.
    fn start(tag: &str, extra: &[&str]) -> Upgradable {
        Upgradable::start_with_env(tag, extra, &[])
    }

    /// [`Upgradable::start`] with environment variables `env` set.
    fn start_with_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Upgradable {
        let dir = TempDir::new(&format!("handover-{tag}"));
        let exe = dir.path().join("pyrycode-relay");
        install(&exe, Path::new(RELAY), b"", 0o755);
        let metrics = free_addr();
        let mut command = clean_command(&exe);
        command
            .args(["--insecure-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--rate-limit-burst", "1000"])
            .args(extra)
            .envs(env.iter().copied());
        Upgradable {
            relay: RelayProcess::spawn_within(command, 1, WAIT),
            exe,
            metrics,
            _dir: dir,
        }
    }

    /// What `/proc/PID/exe` is: its target and its inode.
    fn running_file(&self) -> (PathBuf, u64) {
        let link = format!("/proc/{}/exe", self.pid());
        let target = std::fs::read_link(&link).expect("read /proc/PID/exe");
        (target, std::fs::metadata(&link).unwrap().ino())
    }
}

impl Deref for Upgradable {
    type Target = RelayProcess;
    fn deref(&self) -> &RelayProcess {
        &self.relay
    }
}

impl DerefMut for Upgradable {
    fn deref_mut(&mut self) -> &mut RelayProcess {
        &mut self.relay
    }
}

/// One HTTP GET on a fresh connection; the response up to EOF.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay.test\r\n\r\n");
    let (_, head, body) = http(addr, &request);
    head + &String::from_utf8_lossy(&body)
}

// ---------------------------------------------------------------------
// The suite's WebSocket peers (`support/blocking.rs`); any close or error
// fails the test
// ---------------------------------------------------------------------

impl Ws {
    fn binary(addr: SocketAddr, server_id: &str) -> Ws {
        Ws::connect(addr, "/v1/server", &binary_headers(server_id))
    }

    fn phone(addr: SocketAddr, server_id: &str) -> Ws {
        Ws::connect(addr, "/v1/client", &phone_headers(server_id))
    }

    /// A phone and the conn_id its binary saw.
    fn phone_of(addr: SocketAddr, server_id: &str, binary: &mut Ws) -> (Ws, String) {
        let mut phone = Ws::phone(addr, server_id);
        phone.send(0x1, b"{\"hello\":1}");
        let Msg::Text(wrapped) = binary.recv() else {
            panic!("no envelope")
        };
        let value: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        (phone, value["conn_id"].as_str().unwrap().to_string())
    }
}

// ---------------------------------------------------------------------
// Continuous exchange with flow control
// ---------------------------------------------------------------------

/// Frames received in one direction, for the writer's window and the
/// test's progress checks.
#[derive(Default)]
struct Progress {
    received: Mutex<u64>,
    moved: Condvar,
}

impl Progress {
    fn add(&self) {
        *self.received.lock().unwrap() += 1;
        self.moved.notify_all();
    }

    fn get(&self) -> u64 {
        *self.received.lock().unwrap()
    }

    /// Waits until at least `n` frames arrived.
    fn wait_for(&self, n: u64, what: &str) {
        let deadline = Instant::now() + WAIT;
        let mut got = self.received.lock().unwrap();
        while *got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: {} of {n} frames arrived", *got);
            got = self.moved.wait_timeout(got, left).unwrap().0;
        }
    }
}

/// At most this many frames in flight per direction.
const WINDOW: u64 = 64;

fn frame(direction: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"dir":"{direction}","seq":{seq},"pad":"{}"}}"#,
        "é".repeat((seq % 50) as usize)
    )
    .into_bytes()
}

/// Sends frames `0, 1, …` until `stop`, never more than [`WINDOW`] ahead
/// of the receiver; then an end marker. Returns how many it sent.
fn spawn_writer(
    mut stream: TcpStream,
    wrap: Option<String>,
    direction: &'static str,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    thread::spawn(move || {
        let send = |stream: &mut TcpStream, inner: &[u8]| {
            let payload = match &wrap {
                Some(conn_id) => envelope(conn_id, inner),
                None => inner.to_vec(),
            };
            stream
                .write_all(&masked_frame(0x1, true, &payload))
                .expect("write a frame");
        };
        let mut seq = 0;
        while !stop.load(Ordering::SeqCst) {
            if seq >= progress.get() + WINDOW {
                progress.wait_for(seq + 1 - WINDOW, direction);
                continue;
            }
            send(&mut stream, &frame(direction, seq));
            seq += 1;
        }
        send(&mut stream, b"\"end\"");
        seq
    })
}

/// Checks every frame against what was sent, in order, exactly once,
/// byte-exact, up to the end marker. Returns how many it got.
fn spawn_reader(
    mut ws: Ws,
    unwrap: Option<String>,
    direction: &'static str,
    progress: Arc<Progress>,
) -> JoinHandle<u64> {
    thread::spawn(move || {
        let mut seq = 0;
        loop {
            let payload = match ws.recv() {
                Msg::Text(payload) => payload,
                other => panic!("{direction}: after frame {seq} came {other:?}"),
            };
            let expect = |inner: &[u8]| match &unwrap {
                Some(conn_id) => envelope(conn_id, inner),
                None => inner.to_vec(),
            };
            if payload == expect(b"\"end\"") {
                return seq;
            }
            assert_eq!(
                String::from_utf8_lossy(&payload),
                String::from_utf8_lossy(&expect(&frame(direction, seq))),
                "{direction}: frame {seq}"
            );
            seq += 1;
            progress.add();
        }
    })
}

/// One binary and one phone exchanging both ways.
struct Pair {
    writers: Vec<JoinHandle<u64>>,
    readers: Vec<JoinHandle<u64>>,
    progress: [Arc<Progress>; 2],
}

impl Pair {
    fn start(addr: SocketAddr, server_id: &str, stop: &Arc<AtomicBool>) -> Pair {
        let mut binary = Ws::binary(addr, server_id);
        let (phone, conn_id) = Ws::phone_of(addr, server_id, &mut binary);
        let (binary, binary_out) = binary.split();
        let (phone, phone_out) = phone.split();
        let up = Arc::new(Progress::default());
        let down = Arc::new(Progress::default());
        Pair {
            writers: vec![
                spawn_writer(phone_out, None, "up", up.clone(), stop.clone()),
                spawn_writer(
                    binary_out,
                    Some(conn_id.clone()),
                    "down",
                    down.clone(),
                    stop.clone(),
                ),
            ],
            readers: vec![
                spawn_reader(binary, Some(conn_id), "up", up.clone()),
                spawn_reader(phone, None, "down", down.clone()),
            ],
            progress: [up, down],
        }
    }

    fn wait_progress(&self, more: u64, what: &str) {
        for progress in &self.progress {
            progress.wait_for(progress.get() + more, what);
        }
    }

    /// Joins every thread (a panic there fails the test) and checks that
    /// each direction received exactly what was sent.
    fn finish(self) -> u64 {
        let sent: Vec<u64> = self
            .writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect();
        let got: Vec<u64> = self
            .readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect();
        assert_eq!(sent, got, "frames sent and received, up and down");
        sent.iter().sum()
    }
}

fn exchange_one(addr: SocketAddr, server_id: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let pair = Pair::start(addr, server_id, &stop);
    pair.wait_progress(20, "a short exchange");
    stop.store(true, Ordering::SeqCst);
    pair.finish();
}

// ---------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------

#[test]
fn pairs_exchanging_through_an_upgrade_lose_nothing_and_see_no_close() {
    let mut relay = Upgradable::start("pairs", &["--ping-interval", "60s"]);
    let pid = relay.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let pairs: Vec<Pair> = (0..4)
        .map(|i| Pair::start(relay.addr, &format!("pairs-{i}"), &stop))
        .collect();
    for pair in &pairs {
        pair.wait_progress(200, "before the upgrade");
    }

    install(&relay.exe, Path::new(RELAY), b"\0the new build", 0o755);
    let (new_path, new_inode) = (
        relay.exe.clone(),
        std::fs::metadata(&relay.exe).unwrap().ino(),
    );
    assert_ne!(relay.running_file().1, new_inode);
    relay.signal(libc::SIGUSR2);
    relay.signal(libc::SIGUSR2); // a second one, while the first runs
    relay.wait_count("handover_restored", 1);
    for pair in &pairs {
        pair.wait_progress(200, "after the upgrade");
    }
    relay.assert_alive();
    assert_eq!(relay.pid(), pid);
    assert_eq!(relay.running_file(), (new_path, new_inode), "/proc/PID/exe");
    let restored = relay.wait_count("handover_restored", 1);
    assert!(restored.contains("connections=8 "), "{restored}");
    let health = http_get(relay.addr, "/healthz");
    assert!(
        health.contains("\"connected_binaries\":4,\"connected_phones\":4"),
        "{health}"
    );
    let gauges = http_get(relay.metrics, "/metrics");
    assert!(
        gauges.contains("pyrycode_relay_connected_phones 4"),
        "{gauges}"
    );

    stop.store(true, Ordering::SeqCst);
    let total: u64 = pairs.into_iter().map(Pair::finish).sum();
    assert!(total >= 8 * 400, "{total} frames");
    let metrics = http_get(relay.metrics, "/metrics");
    let forwarded = |direction: &str| -> u64 {
        let key = format!("frames_forwarded_total{{direction=\"{direction}\"}} ");
        let line = metrics.lines().find(|l| l.contains(&key)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Every frame of the test plus the four hellos and end markers: the
    // counters moved with the connections.
    assert_eq!(
        forwarded("phone_to_binary") + forwarded("binary_to_phone"),
        total + 4 + 8,
        "{metrics}"
    );
    exchange_one(relay.addr, "pairs-new");
}

#[test]
fn a_grace_window_and_a_pong_deadline_end_on_their_old_schedule() {
    let mut relay = Upgradable::start(
        "timers",
        &[
            "--grace-period",
            "4s",
            "--ping-interval",
            "2s",
            "--pong-timeout",
            "3s",
        ],
    );
    let addr = relay.addr;
    // A phone whose binary will leave; it answers pings.
    let mut leaving = Ws::binary(addr, "timers-grace");
    let (orphan, _) = Ws::phone_of(addr, "timers-grace", &mut leaving);
    let orphan_closed = watch(orphan, true);
    // A phone that never answers a ping, beside a binary that does.
    let mut holder = Ws::binary(addr, "timers-beat");
    let (silent, _) = Ws::phone_of(addr, "timers-beat", &mut holder);
    let silent_closed = watch(silent, false);
    let _holder = watch(holder, true);

    let first_ping = silent_closed.1.recv_timeout(WAIT).expect("the first ping");
    drop(leaving);
    let left = Instant::now();
    // Relay time passes before the upgrade: 1.5 s of the 4 s grace window
    // and of the 3 s pong wait.
    thread::sleep(Duration::from_millis(1500));
    relay.signal(libc::SIGUSR2);
    relay.wait_count("handover_restored", 1);

    let (code, at) = silent_closed.0.recv_timeout(WAIT).expect("heartbeat close");
    assert_eq!(code, Some(1011), "the silent phone: heartbeat timeout");
    let after_ping = at - first_ping;
    assert!(
        after_ping >= Duration::from_millis(2900) && after_ping < Duration::from_millis(3750),
        "closed {after_ping:?} after the ping: the pong deadline was 3 s"
    );
    let (code, at) = orphan_closed.0.recv_timeout(WAIT).expect("grace expiry");
    assert_eq!(code, Some(4404), "the orphaned phone: binary gone");
    let after_leaving = at - left;
    assert!(
        after_leaving >= Duration::from_millis(3950) && after_leaving < Duration::from_millis(4750),
        "released {after_leaving:?} after the binary left: the grace period was 4 s"
    );
    relay.assert_alive();
}

/// Reads `ws` on a thread: reports its pings (answering them if `pong`)
/// and its close code with the instant each arrived.
#[allow(clippy::type_complexity)]
fn watch(mut ws: Ws, pong: bool) -> (Receiver<(Option<u16>, Instant)>, Receiver<Instant>) {
    let (closed_tx, closed) = mpsc::channel();
    let (ping_tx, pings) = mpsc::channel();
    thread::spawn(move || loop {
        match ws.recv() {
            Msg::Ping(payload) => {
                let _ = ping_tx.send(Instant::now());
                if pong {
                    ws.send(0xA, &payload);
                }
            }
            Msg::Close(code, _) => {
                let _ = closed_tx.send((code, Instant::now()));
                return;
            }
            _ => {}
        }
    });
    (closed, pings)
}

/// What a failed upgrade is, how the test makes it, and why it must be refused.
type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);

#[test]
fn a_failed_upgrade_costs_no_connection() {
    let mut relay = Upgradable::start("failed", &["--ping-interval", "60s"]);
    let addr = relay.addr;
    let pid = relay.pid();
    let original = relay.running_file().1;
    let stop = Arc::new(AtomicBool::new(false));
    let pair = Pair::start(addr, "failed-pair", &stop);
    pair.wait_progress(50, "before");
    let exe = relay.exe.clone();
    let answers = |formats: &str| {
        format!(
            "#!/bin/sh\nsleep 1\necho '{{\"version\":\"0.0.1\",\"state_formats\":{formats}}}'\n"
        )
    };
    let cases: [Case; 4] = [
        (
            "exits 1",
            Box::new(|| install(&exe, Path::new("/bin/false"), b"", 0o755)),
            "check_failed status",
        ),
        (
            "not executable",
            Box::new(|| install(&exe, Path::new(RELAY), b"", 0o644)),
            "check_failed exe=",
        ),
        (
            "an older build: unknown state format",
            Box::new(|| install_script(&exe, &answers("[0]"))),
            "reads state formats [0], not 1",
        ),
        (
            "never answers",
            Box::new(|| install_script(&exe, "#!/bin/sh\nexec sleep 60\n")),
            "check_timeout",
        ),
    ];
    for (round, (what, put_file, reason)) in cases.iter().enumerate() {
        put_file();
        relay.signal(libc::SIGUSR2);
        if round == 2 {
            // The check sleeps 1 s: a second SIGUSR2 lands while it runs.
            let started = relay.count("upgrade_started");
            relay.wait_count("upgrade_started", started + 1);
            relay.signal(libc::SIGUSR2);
            relay.wait_count("upgrade_busy", 1);
        }
        let refused = relay.wait_count("upgrade_refused", round + 1);
        assert!(refused.contains(reason), "{what}: {refused}");
        pair.wait_progress(50, what);
        relay.assert_alive();
        assert_eq!(
            relay.running_file().1,
            original,
            "{what}: still the old file"
        );
    }
    assert_eq!(relay.count("handover_restored"), 0);

    install(&exe, Path::new(RELAY), b"\0fixed", 0o755);
    relay.signal(libc::SIGUSR2);
    relay.wait_count("handover_restored", 1);
    pair.wait_progress(50, "after the good upgrade");
    stop.store(true, Ordering::SeqCst);
    pair.finish();
    assert_eq!(relay.pid(), pid);
    assert_ne!(relay.running_file().1, original);
}

/// Push wakes run on worker threads, which end at the exec: the old image
/// lets a wake in flight finish before it (its outcome logged and
/// counted), and, when FCM does not answer within the bounded second,
/// says in `upgrade_exec` how many it abandoned.
#[test]
fn push_wakes_in_flight_finish_before_the_exec_or_are_counted() {
    let oauth = oauth_server(3600);
    let stalls = Mutex::new(vec![Stall::default(), Stall::default()]);
    let held: Arc<Mutex<Vec<Stall>>> = Arc::new(Mutex::new(Vec::new()));
    let handed = held.clone();
    // The first two wakes stall until released; later ones are sent.
    let fcm = FakeServer::start(move |_| match stalls.lock().unwrap().pop() {
        Some(stall) => {
            handed.lock().unwrap().push(stall.clone());
            Reply::Stall(stall)
        }
        None => Reply::json(200, r#"{"name":"projects/test-project/messages/1"}"#),
    });
    let key = key_json(PRIVATE_KEY, &oauth.url("/token"));
    let endpoint = fcm.url("");
    let mut relay = Upgradable::start_with_env(
        "push",
        &["--fcm-endpoint", &endpoint],
        &[("PYRYCODE_RELAY_FCM_CREDENTIALS", &key)],
    );
    let mut binary = Ws::binary(relay.addr, "push-upgrade");
    let wake = |token: &str| {
        format!(r#"{{"push_wake":{{"platform":"fcm","token":"{token}"}}}}"#).into_bytes()
    };
    let exe = relay.exe.clone();

    // FCM answers once the check has passed: the outcome comes before the exec.
    binary.send_text(&wake("devtok-answered"));
    let _in_flight = fcm.next_request();
    install(&exe, Path::new(RELAY), b"\0first", 0o755);
    relay.signal(libc::SIGUSR2);
    relay.wait_count("upgrade_check_passed", 1);
    held.lock().unwrap()[0].release();
    let exec = relay.wait_count("upgrade_exec", 1);
    assert!(exec.contains("push_wakes_abandoned=0"), "{exec}");
    relay.wait_count("handover_restored", 1);
    let log = relay.log_text();
    let outcome = log
        .find("push_wake_send_failed")
        .expect("the outcome is logged");
    assert!(outcome < log.find("upgrade_exec").unwrap(), "{log}");

    // FCM never answers: the exec goes ahead after the second, counting it.
    binary.send_text(&wake("devtok-stalled"));
    let _stalled = fcm.next_request();
    install(&exe, Path::new(RELAY), b"\0second", 0o755);
    relay.signal(libc::SIGUSR2);
    let exec = relay.wait_count("upgrade_exec", 2);
    assert!(exec.contains("push_wakes_abandoned=1"), "{exec}");
    relay.wait_count("handover_restored", 2);
    assert_eq!(
        relay.count("push_wake_send_failed"),
        1,
        "{}",
        relay.log_text()
    );

    // The binary never noticed; the new image still sends wakes.
    binary.send_text(&wake("devtok-after"));
    relay.wait_for("push_wake_sent");
    exchange_one(relay.addr, "push-upgrade-after");
}

#[test]
fn check_mode_reports_the_version_and_the_state_formats() {
    let (status, stdout, _) = run_relay(&["--handover-check", "--grace-period", "1s"]);
    assert!(status.success());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["state_formats"], serde_json::json!([1]));
    let (status, stdout, _) = run_relay(&["--handover-check", "--grace-period", "soon"]);
    assert_eq!(status.code(), Some(2), "a bad flag fails the check");
    assert!(stdout.is_empty());
}

#[test]
fn a_foreign_state_descriptor_is_refused_with_exit_1() {
    let mut command = relay_command(&PLAIN);
    command.env("PYRYCODE_RELAY_HANDOVER", "0");
    let (status, _, stderr) = run_to_exit(command);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("handover_failed"), "{stderr}");
}
