//! The one toolkit for tests that run a real executable — the relay
//! (`pyrycode-relay`), or a tool such as haproxy or Pebble: start it with
//! its flags and environment, collect its stderr line by line on a
//! thread, wait for a log line (`listening addr=…`) or a TCP port, send
//! signals, wait for its exit, kill it on drop.
//!
//! Every suite that runs a process includes this file
//! (`#[path = "support/process.rs"] mod process;`); the in-process
//! harness (`tests/common`) runs no process. Real time: every wait is a
//! bounded poll loop ([`WAIT`] unless told otherwise) that fails naming
//! what it waited for, with the log so far. Nothing here asserts how long
//! anything took.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The relay under test, as cargo built it.
pub const RELAY: &str = env!("CARGO_BIN_EXE_pyrycode-relay");

/// The longest any one step may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The environment variables the relay reads; a started relay sees none
/// of them unless the test sets it.
pub const RELAY_ENV: [&str; 4] = [
    "PYRYCODE_RELAY_PRODUCTION",
    "PYRYCODE_RELAY_SINGLE_INSTANCE",
    "FLY_APP_NAME",
    "PYRYCODE_RELAY_FCM_CREDENTIALS",
];

/// The plain flags of a relay the tests talk to: a free loopback port and
/// no `/metrics`.
pub const PLAIN: [&str; 4] = ["--insecure-listen", "127.0.0.1:0", "--metrics-listen", ""];

/// `program` (the relay, or something that execs it) with none of
/// [`RELAY_ENV`] set, no stdin, stdout discarded and stderr piped.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for name in RELAY_ENV {
        command.env_remove(name);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// `pyrycode-relay args`, as [`clean_command`] sets it up.
pub fn relay_command(args: &[&str]) -> Command {
    let mut command = clean_command(RELAY);
    command.args(args);
    command
}

/// A running process and every line it has logged to stderr so far.
pub struct RelayProcess {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line read so far, in order.
    pub log: Vec<String>,
    /// The addresses of its `listening addr=…` lines, in order.
    pub listening: Vec<SocketAddr>,
    /// The first of them (a placeholder if it has none).
    pub addr: SocketAddr,
    /// How long each wait may take.
    wait: Duration,
}

impl RelayProcess {
    /// The relay with the [`PLAIN`] flags and `extra`, once it listens.
    pub fn start(extra: &[&str]) -> RelayProcess {
        let mut command = relay_command(&PLAIN);
        command.args(extra);
        RelayProcess::spawn(command, 1)
    }

    /// [`RelayProcess::start`] with `RLIMIT_NOFILE` set to `limit`, soft and
    /// hard, so the relay's start-up raise cannot lift it.
    pub fn start_with_fd_limit(extra: &[&str], limit: u64) -> RelayProcess {
        let mut command = relay_command(&PLAIN);
        command.args(extra);
        // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
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
        RelayProcess::spawn(command, 1)
    }

    /// The relay with exactly `args`, once it has logged `listeners`
    /// `listening addr=…` lines.
    pub fn start_args(args: &[&str], listeners: usize) -> RelayProcess {
        RelayProcess::spawn(relay_command(args), listeners)
    }

    /// Runs `command` (its stderr piped) and waits for `listeners`
    /// `listening addr=…` lines, each wait bounded by [`WAIT`].
    pub fn spawn(command: Command, listeners: usize) -> RelayProcess {
        RelayProcess::spawn_within(command, listeners, WAIT)
    }

    /// [`RelayProcess::spawn`] with every wait bounded by `wait`.
    pub fn spawn_within(mut command: Command, listeners: usize, wait: Duration) -> RelayProcess {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = RelayProcess {
            child,
            lines,
            log: Vec::new(),
            listening: Vec::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            wait,
        };
        while process.listening.len() < listeners {
            let line = process.wait_for("listening addr=");
            let addr = line.split("listening addr=").nth(1).unwrap();
            let addr = addr.split_whitespace().next().unwrap();
            process
                .listening
                .push(addr.parse().expect("listening address"));
        }
        if let Some(first) = process.listening.first() {
            process.addr = *first;
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next log line containing `needle` (one not seen before).
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_after(self.log.len(), needle)
    }

    /// A log line containing `needle`, logged at any time since the start
    /// (e.g. before the `listening` line).
    pub fn wait_logged(&mut self, needle: &str) -> String {
        self.wait_for_after(0, needle)
    }

    /// [`RelayProcess::wait_logged`], waiting up to `wait` (for steps
    /// longer than [`WAIT`], such as issuing a certificate).
    pub fn wait_logged_within(&mut self, needle: &str, wait: Duration) -> String {
        let usual = std::mem::replace(&mut self.wait, wait);
        let line = self.wait_logged(needle);
        self.wait = usual;
        line
    }

    /// The first line containing `needle` among the lines from `log[from]`
    /// on, waiting for more as needed.
    pub fn wait_for_after(&mut self, from: usize, needle: &str) -> String {
        let what = format!("a log line with {needle:?}");
        self.wait_until(&what, |log| {
            let later = log.get(from..).unwrap_or_default();
            later.iter().find(|line| line.contains(needle)).cloned()
        })
    }

    /// Waits until `count` log lines contain `needle`; returns the last.
    pub fn wait_count(&mut self, needle: &str, count: usize) -> String {
        let what = format!("{count} log line(s) with {needle:?}");
        self.wait_until(&what, |log| {
            let matching: Vec<&String> = log.iter().filter(|l| l.contains(needle)).collect();
            match matching.len() >= count.max(1) {
                true => matching.last().map(|line| line.to_string()),
                false => None,
            }
        })
    }

    /// How many log lines read so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log.iter().filter(|line| line.contains(needle)).count()
    }

    /// Reads lines until `found` finds what it looks for in the log.
    fn wait_until(
        &mut self,
        what: &str,
        mut found: impl FnMut(&[String]) -> Option<String>,
    ) -> String {
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(line) = found(&self.log) {
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(err) => panic!(
                    "no {what} within {:?} ({err:?}); log:\n{}",
                    self.wait,
                    self.log_text()
                ),
            }
        }
    }

    /// Takes the log lines printed so far without waiting.
    pub fn drain_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Fails the test if the process has exited.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the process exited; log:\n{}",
            self.log_text()
        );
    }

    /// Waits for the process to exit (its stderr closes), keeping every
    /// log line, and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the process did not exit within {:?}; log:\n{}",
                    self.wait,
                    self.log_text()
                ),
            }
        }
        self.child.wait().expect("wait for the process")
    }

    /// Stops the relay with SIGTERM and expects exit 0.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the process");
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its exit with stdout and stderr captured; returns
/// the status, stdout and stderr. Fails (and kills it) if it is still
/// running after [`WAIT`].
pub fn run_to_exit(mut command: Command) -> (ExitStatus, String, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let pipes = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ];
    for (index, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((index, text));
        });
    }
    let mut outputs = [String::new(), String::new()];
    for _ in 0..2 {
        match rx.recv_timeout(WAIT) {
            Ok((index, text)) => outputs[index] = text,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} did not exit within {WAIT:?}");
            }
        }
    }
    let status = child.wait().expect("wait for the process");
    let [stdout, stderr] = outputs;
    (status, stdout, stderr)
}

/// Runs `command` (a tool the tests use, such as haproxy or Pebble) with
/// its stdout and stderr going to the file `log`; `missing` says which
/// package provides it, for the panic if it cannot run.
pub fn spawn_to_log(mut command: Command, log: &Path, missing: &str) -> Child {
    let file = std::fs::File::create(log).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}): {missing}"))
}

/// Runs the relay with exactly `args` to its exit ([`run_to_exit`]).
pub fn run_relay(args: &[&str]) -> (ExitStatus, String, String) {
    run_to_exit(relay_command(args))
}

/// Waits until something accepts TCP connections on `addr`; fails if
/// `child` (the process that should) exits first.
pub fn wait_listening(addr: SocketAddr, what: &str, mut child: Option<&mut Child>) {
    let deadline = Instant::now() + 2 * WAIT;
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr} within {:?}",
            2 * WAIT
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port (TCP, or UDP for a DNS server).
pub fn free_port(udp: bool) -> u16 {
    let addr = match udp {
        true => UdpSocket::bind("127.0.0.1:0").unwrap().local_addr(),
        false => TcpListener::bind("127.0.0.1:0").unwrap().local_addr(),
    };
    addr.unwrap().port()
}

/// A loopback TCP address no socket is bound to right now (for flags
/// that refuse port 0, such as a production `--metrics-listen`).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port(false)))
}

/// A fresh, empty directory `relay-<name>-<pid>` under the system's
/// temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory of its own that any uid may enter, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `relay-<tag>-<pid>-<n>` under the system's temporary directory.
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = temp_dir(&format!("{tag}-{n}"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the relay into `dir` as `pyrycode-relay`, executable by anyone
/// (the build directory may not be reachable by another uid).
pub fn copy_relay(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("pyrycode-relay");
    std::fs::copy(RELAY, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}
