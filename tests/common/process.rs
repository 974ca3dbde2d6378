//! The real executable, for the tests that must run it as a process
//! (flags, signals, exit codes, the descriptor limit): started on a free
//! loopback port, its stderr collected line by line on a thread. Real
//! time: every wait is bounded by [`WAIT`] and fails naming what it waited
//! for, with the log so far.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const RELAY: &str = env!("CARGO_BIN_EXE_pyrycode-relay");
/// The longest any one step may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running relay and every line it has logged so far.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

impl RelayProcess {
    /// Starts the relay with `extra` flags and waits for its
    /// `listening addr=…` line.
    pub fn start(extra: &[&str]) -> RelayProcess {
        RelayProcess::spawn(RelayProcess::command(extra))
    }

    /// [`RelayProcess::start`] with `RLIMIT_NOFILE` set to `limit`, soft and
    /// hard, so the relay's start-up raise cannot lift it.
    pub fn start_with_fd_limit(extra: &[&str], limit: u64) -> RelayProcess {
        let mut command = RelayProcess::command(extra);
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
        RelayProcess::spawn(command)
    }

    fn command(extra: &[&str]) -> Command {
        let mut command = Command::new(RELAY);
        command
            .args(["--insecure-listen", "127.0.0.1:0", "--metrics-listen", ""])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn spawn(mut command: Command) -> RelayProcess {
        let mut child = command.spawn().expect("start the relay");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = RelayProcess {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            log: Vec::new(),
        };
        let listening = relay.wait_for("listening addr=");
        let addr = listening.split("listening addr=").nth(1).unwrap();
        let addr = addr.split_whitespace().next().unwrap();
        relay.addr = addr.parse().expect("listening address");
        relay
    }

    /// The next log line containing `what`, within [`WAIT`]; every line is
    /// kept in [`RelayProcess::log`].
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(err) => panic!(
                    "no log line with {what:?} within {WAIT:?} ({err:?}); log: {:#?}",
                    self.log
                ),
            }
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (its stderr closes), keeping every
    /// log line, and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "the relay did not exit within {WAIT:?}; log: {:#?}",
                        self.log
                    )
                }
            }
        }
        self.child.wait().expect("wait for the relay")
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
