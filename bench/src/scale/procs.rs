//! The processes of the scale test: relays and HAProxy balancers, each
//! started by the test, stopped by it, and killed by its `Drop` guard if
//! the test fails or panics on the way. Children also get
//! `PR_SET_PDEATHSIG`, so a test process killed outright takes them along.
//!
//! Also here: the two things the test asks a running process — a relay's
//! `/metrics` (frames forwarded) and a balancer's stats socket (server
//! states, stick-table entries).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loopback port nobody uses right now, below the ephemeral range: a
/// relay restarts on its port, and a port from the ephemeral range could
/// meanwhile be taken by an outgoing connection (HAProxy's, a peer's).
/// Never the same port twice in one run.
pub fn free_port() -> Result<u16, String> {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    if ephemeral_start > low + 1000 {
        // Start from a spot that differs between runs.
        let span = ephemeral_start - low;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut port = low + ((nanos ^ std::process::id()) % span as u32) as u16;
        for _ in 0..span {
            port = if port + 1 >= ephemeral_start {
                low
            } else {
                port + 1
            };
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.push(port);
                return Ok(port);
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub fn free_addr() -> Result<SocketAddr, String> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// The child dies with the test process.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signalling our own, not yet reaped, child by its pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits up to `patience` for `child` to exit.
fn wait_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How the relays are started.
#[derive(Clone)]
pub struct RelayFlags {
    pub exe: PathBuf,
    /// `--proxy-protocol`.
    pub proxy: bool,
    /// Raised per-IP limits (every client comes from the balancer's
    /// address while the PROXY protocol is off).
    pub raised_ip_limits: bool,
}

/// One relay process, restartable on the same address.
pub struct Relay {
    pub name: String,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    flags: RelayFlags,
    child: Option<Child>,
    log: PathBuf,
    /// How many times it was started.
    pub starts: u32,
}

impl Relay {
    pub fn new(name: &str, flags: RelayFlags, workdir: &Path) -> Result<Relay, String> {
        Ok(Relay {
            name: name.to_string(),
            addr: free_addr()?,
            metrics: free_addr()?,
            flags,
            child: None,
            log: workdir.join(format!("{name}.log")),
            starts: 0,
        })
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--insecure-listen={}", self.addr),
            format!("--metrics-listen={}", self.metrics),
            "--log-level=info".to_string(),
        ];
        if self.flags.proxy {
            args.push("--proxy-protocol".into());
        }
        if self.flags.raised_ip_limits {
            args.push("--rate-limit-burst=1000000".into());
            args.push("--max-connections-per-ip=1000000".into());
        }
        args
    }

    /// The command line, for the report.
    pub fn command(&self) -> String {
        format!("{} {}", self.flags.exe.display(), self.args().join(" "))
    }

    /// Starts it and waits until it listens.
    pub fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&self.flags.exe);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.flags.exe.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if !self.running() {
                return Err(format!(
                    "{} exited at start-up:\n{}",
                    self.name,
                    tail(&self.log, 5)
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "{} did not listen on {} in 10 s",
            self.name, self.addr
        ))
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            signal(child, sig);
        }
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits up to `patience` for the exit (then SIGKILL and an error).
    pub fn wait_exit(&mut self, patience: Duration) -> Result<ExitStatus, String> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        match wait_exit(&mut child, patience) {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{} did not exit within {patience:?}", self.name))
            }
        }
    }

    /// SIGTERM and the exit.
    pub fn terminate(&mut self, patience: Duration) -> Result<ExitStatus, String> {
        self.sigterm();
        self.wait_exit(patience)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 8)
    }

    /// `frames_forwarded_total` (phone→binary, binary→phone) from /metrics.
    pub fn forwarded(&self) -> Result<(u64, u64), String> {
        let text = http_get(self.metrics, "/metrics")?;
        let find = |direction: &str| {
            text.lines()
                .filter(|l| l.starts_with("pyrycode_relay_frames_forwarded_total"))
                .find(|l| l.contains(&format!("direction=\"{direction}\"")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64)
                .ok_or_else(|| format!("{}: no {direction} counter in /metrics", self.name))
        };
        Ok((find("phone_to_binary")?, find("binary_to_phone")?))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.0 GET; the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// What starting a relay with `--proxy-protocol` tells: whether this relay
/// build serves the PROXY protocol on its plain listener.
pub fn relay_serves_proxy(exe: &Path, workdir: &Path) -> Result<Result<(), String>, String> {
    let flags = RelayFlags {
        exe: exe.to_path_buf(),
        proxy: true,
        raised_ip_limits: false,
    };
    let mut relay = Relay::new("proxy-check", flags, workdir)?;
    if let Err(e) = relay.start() {
        // Exit 2 at start-up: an unknown flag, or "not built yet".
        let reason = e.lines().last().unwrap_or_default().trim().to_string();
        return Ok(Err(reason));
    }
    // Started: it must also answer behind a PROXY v2 LOCAL header (what
    // HAProxy's health checks send).
    let mut s = TcpStream::connect(relay.addr).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = PROXY_V2_LOCAL.to_vec();
    request.extend_from_slice(b"GET /healthz HTTP/1.0\r\n\r\n");
    s.write_all(&request).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    relay.kill();
    if answer.starts_with("HTTP/1.1 200") {
        Ok(Ok(()))
    } else {
        Err(format!(
            "the relay takes --proxy-protocol but does not answer /healthz behind a PROXY v2 LOCAL header (HAProxy's health check): {:?}",
            answer.lines().next().unwrap_or("no answer")
        ))
    }
}

/// A PROXY v2 header with the LOCAL command and no addresses, byte for
/// byte what HAProxy 2.6 sends ahead of a health check.
const PROXY_V2_LOCAL: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00";

/// Where a balancer listens.
pub struct Listen {
    pub addr: SocketAddr,
    /// The test's control frontend.
    pub control: Option<SocketAddr>,
    /// Its stats socket.
    pub stats: PathBuf,
}

/// One HAProxy process.
pub struct Balancer {
    pub name: String,
    pub addr: SocketAddr,
    pub control: Option<SocketAddr>,
    pub stats: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Balancer {
    /// Starts `haproxy -db -L name -f config` (pinned to `cpu` if given)
    /// and waits for its stats socket and its frontend.
    pub fn start(
        haproxy: &str,
        name: &str,
        config: &str,
        listen: Listen,
        workdir: &Path,
        cpu: Option<usize>,
    ) -> Result<Balancer, String> {
        let Listen {
            addr,
            control,
            stats,
        } = listen;
        let cfg = workdir.join(format!("{name}.cfg"));
        std::fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let log = workdir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(haproxy);
        cmd.args(["-db", "-L", name, "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        if let Some(cpu) = cpu {
            crate::sys::pin_command(&mut cmd, cpu);
        }
        let child = cmd.spawn().map_err(|e| {
            format!("cannot start {haproxy}: {e} (Debian: apt-get install -y haproxy)")
        })?;
        let mut balancer = Balancer {
            name: name.to_string(),
            addr,
            control,
            stats,
            child: Some(child),
            log,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if !balancer.running() {
                return Err(format!(
                    "{name} exited at start-up:\n{}",
                    tail(&balancer.log, 10)
                ));
            }
            if balancer.ask("show info").is_ok()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(balancer);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{name} did not come up in 10 s"))
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One command on the stats socket; its answer.
    pub fn ask(&self, command: &str) -> Result<String, String> {
        let mut s = UnixStream::connect(&self.stats).map_err(|e| e.to_string())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// `status` of every server, by (backend, server), from `show stat`.
    pub fn server_states(&self) -> Result<HashMap<(String, String), String>, String> {
        let csv = self.ask("show stat")?;
        let mut lines = csv.lines();
        let head: Vec<&str> = lines
            .next()
            .ok_or("empty show stat")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| head.iter().position(|h| *h == name);
        let (px, sv, st) = (
            col("pxname").ok_or("no pxname")?,
            col("svname").ok_or("no svname")?,
            col("status").ok_or("no status")?,
        );
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| ((f[px].to_string(), f[sv].to_string()), f[st].to_string()))
            .collect())
    }

    /// Whether `server` is UP in every backend that has it.
    pub fn is_up(&self, server: &str) -> bool {
        self.server_states().is_ok_and(|states| {
            let mine: Vec<&String> = states
                .iter()
                .filter(|((_, s), _)| s == server)
                .map(|(_, st)| st)
                .collect();
            !mine.is_empty() && mine.iter().all(|st| *st == "UP")
        })
    }

    /// The stick table: server name by server-id.
    pub fn stick_entries(&self, table: &str) -> Result<HashMap<String, String>, String> {
        let text = self.ask(&format!("show table {table}"))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let key = l.split(" key=").nth(1)?.split_whitespace().next()?;
                let field = |name: &str| {
                    l.split(&format!(" {name}="))
                        .nth(1)?
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                };
                // HAProxy 2.6 shows the server's id; newer ones its name too.
                let server = field("server_key")
                    .or_else(|| field("server_id").map(|id| format!("relay{id}")))?;
                Some((key.to_string(), server))
            })
            .collect())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 10)
    }

    /// SIGTERM (HAProxy stops at once), SIGKILL after a short grace.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_exit(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The response head (status line and headers) to a raw HTTP request.
pub fn response_head(addr: SocketAddr, request: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string())
}
