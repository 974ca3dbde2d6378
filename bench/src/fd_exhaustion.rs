//! `relay-bench fd-exhaustion`: what the relay costs while it is out of
//! file descriptors.
//!
//! The relay is started with a low `RLIMIT_NOFILE` (soft and hard, so its
//! start-up raise cannot lift it) and more connections than that arrive:
//! the kernel completes their handshakes, `accept` fails with EMFILE, and
//! the relay pauses accepting (`accept_paused`), retrying after a back-off
//! instead of on every listener event. The figure is the relay's CPU use
//! over a window while it is paused with connections waiting in the
//! backlog (a relay that spun on the listener would show ~100 %), with
//! its wake-ups per second; then the descriptors come back and the time
//! until a connection that waited in the backlog is served is measured.
//!
//! `tests/exhaustion.rs` checks the behaviour (paused, still serving,
//! resumed); the cost is measured here because a test must not assert
//! speed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sys::{self, ProcSample};
use crate::target::Launch;

/// How long any one step may take before the run fails.
const STEP: Duration = Duration::from_secs(10);

/// The figures of one run.
#[derive(Debug)]
pub struct FdExhaustion {
    pub fd_limit: u64,
    pub connections: usize,
    /// Connections the relay held when it paused (from `accept_paused`).
    pub held_at_pause: Option<u64>,
    pub window_s: f64,
    /// Relay CPU over the window, utime+stime (clock-tick resolution).
    pub cpu_us: u64,
    /// Relay CPU over the window from schedstat (nanosecond accounting).
    pub sched_us: f64,
    /// `sched_us` as a share of the window.
    pub cpu_percent: f64,
    /// Context switches of the relay per second of the window.
    pub wakeups_per_s: f64,
    /// From releasing descriptors to a waiting connection's response.
    pub resume_ms: f64,
    pub command: String,
}

impl FdExhaustion {
    pub fn json(&self) -> Value {
        json!({
            "scenario": "fd-exhaustion",
            "target": "relay",
            "label": self.label(),
            "params": {
                "fd_limit": self.fd_limit,
                "connections": self.connections,
                "duration_s": self.window_s,
            },
            "connections_held_at_pause": self.held_at_pause,
            "window_s": self.window_s,
            "proxy_cpu_us_utime_stime": self.cpu_us,
            "proxy_cpu_us_schedstat": self.sched_us,
            "proxy_cpu_percent": self.cpu_percent,
            "context_switches_per_s": self.wakeups_per_s,
            "resume_ms": self.resume_ms,
            "errors": 0,
            "command": self.command,
        })
    }

    /// Writes this measurement as JSON, in the shape of `--json` of the
    /// other scenarios.
    pub fn write_json(&self, path: &Path, machine: Value) -> std::io::Result<()> {
        let doc = json!({"machine": machine, "measurements": [self.json()]});
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
    }

    fn label(&self) -> String {
        format!(
            "{} connections, RLIMIT_NOFILE {}",
            self.connections, self.fd_limit
        )
    }

    /// The table on stdout.
    pub fn print(&self, header: &str) {
        println!();
        println!("{header}");
        println!();
        println!(
            "## fd-exhaustion: relay out of descriptors, accepting paused; CPU over the window \
             (schedstat), wake-ups = context switches; resume = descriptors back → waiting \
             connection served"
        );
        println!(
            "{:<38} {:>10} {:>9} {:>9} {:>11} {:>10}",
            "load", "held", "window s", "CPU %", "wake-ups/s", "resume ms"
        );
        println!(
            "{:<38} {:>10} {:>9.2} {:>9.3} {:>11.1} {:>10.1}",
            self.label(),
            self.held_at_pause
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            self.window_s,
            self.cpu_percent,
            self.wakeups_per_s,
            self.resume_ms
        );
    }
}

/// The relay with `RLIMIT_NOFILE` of `limit`, its stderr lines on a channel.
struct LimitedRelay {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    addr: SocketAddr,
    command: String,
}

impl LimitedRelay {
    fn start(launch: &Launch, limit: u64) -> Result<LimitedRelay, String> {
        if !launch.relay.exists() {
            return Err(format!(
                "relay binary not found at {} (build it with `cargo build --release`, or pass --relay PATH)",
                launch.relay.display()
            ));
        }
        // The run follows the relay's `listening` and `accept_paused`
        // lines: info at least.
        let level = match launch.relay_log_level.as_str() {
            "debug" | "trace" => launch.relay_log_level.as_str(),
            _ => "info",
        };
        let mut args: Vec<String> = vec![
            "--insecure-listen=127.0.0.1:0".into(),
            "--metrics-listen=".into(),
            // The held connections send nothing: keep them for the run.
            "--handshake-timeout=1h".into(),
            format!("--log-level={level}"),
        ];
        args.extend(launch.relay_args.iter().cloned());
        let mut cmd = Command::new(&launch.relay);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cpu) = launch.proxy_cpu {
            sys::pin_command(&mut cmd, cpu);
        }
        // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.relay.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = LimitedRelay {
            child,
            lines,
            log: Vec::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            command: format!("{} {}", launch.relay.display(), args.join(" ")),
        };
        let listening = relay.wait_for("listening addr=")?;
        let addr = listening
            .split("listening addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("no address in {listening:?}"))?;
        relay.addr = addr;
        Ok(relay)
    }

    /// The next log line containing `what`, within [`STEP`].
    fn wait_for(&mut self, what: &str) -> Result<String, String> {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(what) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "the relay logged no {what:?} within {STEP:?}; its log:\n{}",
                        self.log.join("\n")
                    ))
                }
            }
        }
    }
}

impl Drop for LimitedRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Context switches of every thread of `pid` so far.
fn context_switches(pid: u32) -> Result<u64, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

fn sample(pid: u32) -> Result<(ProcSample, u64), String> {
    let proc = sys::sample(pid).map_err(|e| format!("/proc/{pid}: {e}"))?;
    Ok((proc, context_switches(pid)?))
}

/// Sends `/healthz` on `stream`; `Ok` once a 200 comes back.
fn healthz(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| format!("healthz request: {e}"))?;
    stream
        .set_read_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("no healthz response within {STEP:?}: {e}"))?;
    match &head[9..12] {
        b"200" => Ok(()),
        other => Err(format!(
            "healthz answered {}",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Runs the scenario: `connections` connections against a relay limited
/// to `fd_limit` descriptors, CPU sampled over `window` while paused.
pub fn measure(
    launch: &Launch,
    fd_limit: u64,
    connections: usize,
    window: Duration,
    verbose: bool,
) -> Result<FdExhaustion, String> {
    if connections as u64 <= fd_limit {
        return Err(format!(
            "--connections ({connections}) must exceed --fd-limit ({fd_limit}) for the relay to run out"
        ));
    }
    let mut relay = LimitedRelay::start(launch, fd_limit)?;
    let pid = relay.child.id();
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(
            TcpStream::connect(relay.addr).map_err(|e| format!("connect to the relay: {e}"))?,
        );
    }
    let paused = relay.wait_for("accept_paused")?;
    let held_at_pause = paused
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("connections="))
        .and_then(|n| n.parse().ok());
    if verbose {
        eprintln!(
            "  relay paused accepting with {} connections held; measuring {window:?}",
            held_at_pause.map_or_else(|| "?".into(), |n: u64| n.to_string())
        );
    }
    // The first connection was accepted: the relay still serves it.
    healthz(&mut held[0])?;
    held.remove(0);
    // One more waits in the backlog, its request already sent.
    let mut waiting =
        TcpStream::connect(relay.addr).map_err(|e| format!("connect to the relay: {e}"))?;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| format!("healthz request: {e}"))?;

    let (p0, s0) = sample(pid)?;
    std::thread::sleep(window);
    let (p1, s1) = sample(pid)?;

    // Descriptors come back: the relay must serve what waited.
    let released = Instant::now();
    held.clear();
    waiting
        .set_read_timeout(Some(STEP))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    waiting
        .read_exact(&mut head)
        .map_err(|e| format!("the waiting connection was never served: {e}"))?;
    let resume_ms = released.elapsed().as_secs_f64() * 1000.0;
    if &head[9..12] != b"200" {
        return Err(format!(
            "the waiting connection got {}",
            String::from_utf8_lossy(&head)
        ));
    }
    if !matches!(relay.child.try_wait(), Ok(None)) {
        return Err(format!(
            "the relay exited during the run:\n{}",
            relay.log.join("\n")
        ));
    }

    let secs = p1.at.duration_since(p0.at).as_secs_f64();
    let sched_us = p1.sched_ns.saturating_sub(p0.sched_ns) as f64 / 1000.0;
    Ok(FdExhaustion {
        fd_limit,
        connections,
        held_at_pause,
        window_s: secs,
        cpu_us: p1.cpu_us.saturating_sub(p0.cpu_us),
        sched_us,
        cpu_percent: 100.0 * sched_us / (secs * 1e6),
        wakeups_per_s: s1.saturating_sub(s0) as f64 / secs,
        resume_ms,
        command: relay.command.clone(),
    })
}
