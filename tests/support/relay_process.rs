//! The real executable as a child process, and a blocking WebSocket
//! client that speaks it over TLS (and optionally a PROXY header first),
//! for the process-level TLS, PROXY and ACME tests. Real time: every wait
//! is bounded and fails saying what it waited for.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::common::{masked_frame, upgrade_head, FrameReader, Msg};

pub const RELAY: &str = env!("CARGO_BIN_EXE_pyrycode-relay");

/// A running relay, its stderr collected line by line.
pub struct RelayProcess {
    child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
    /// The addresses of its `listening addr=…` lines, in order.
    pub listening: Vec<SocketAddr>,
}

impl RelayProcess {
    /// Starts the relay with `args` and waits (up to `wait`) for
    /// `listeners` `listening addr=…` lines.
    pub fn start(args: &[&str], listeners: usize, wait: Duration) -> RelayProcess {
        let mut child = Command::new(RELAY)
            .args(args)
            .env_remove("PYRYCODE_RELAY_PRODUCTION")
            .env_remove("PYRYCODE_RELAY_SINGLE_INSTANCE")
            .env_remove("FLY_APP_NAME")
            .env_remove("PYRYCODE_RELAY_FCM_CREDENTIALS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the relay");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = RelayProcess {
            child,
            lines,
            log: Vec::new(),
            listening: Vec::new(),
        };
        while relay.listening.len() < listeners {
            let line = relay.wait_for("listening addr=", wait);
            let addr = line.split("listening addr=").nth(1).unwrap();
            let addr = addr.split_whitespace().next().unwrap();
            relay
                .listening
                .push(addr.parse().expect("listening address"));
        }
        relay
    }

    /// Waits for a log line containing `needle` (lines before it are kept
    /// in `log`); returns it.
    pub fn wait_for(&mut self, needle: &str, wait: Duration) -> String {
        self.wait_for_after(0, needle, wait)
    }

    /// Like [`RelayProcess::wait_for`], among the lines from `log[from]` on.
    pub fn wait_for_after(&mut self, from: usize, needle: &str, wait: Duration) -> String {
        let earlier = self.log.get(from..).unwrap_or_default();
        if let Some(line) = earlier.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(err) => panic!("no line with {needle:?} ({err:?}); log: {:#?}", self.log),
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

    /// Waits for the process to exit, keeping every log line.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the relay did not exit; log: {:#?}", self.log)
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

/// Runs the relay with `args` to its exit; returns the status and stderr.
pub fn run_to_exit(args: &[&str], wait: Duration) -> (ExitStatus, String) {
    let mut relay = RelayProcess::start(args, 0, wait);
    let status = relay.wait_exit(wait);
    (status, relay.log_text())
}

/// A blocking WebSocket client over TLS.
pub struct Wss {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    frames: FrameReader,
}

impl Wss {
    /// Connects to `addr`, writes `preface` (a PROXY header) in the clear,
    /// and completes a TLS handshake for `sni`.
    pub fn connect(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        sni: &str,
        preface: &[u8],
        wait: Duration,
    ) -> Result<Wss, rustls::Error> {
        let mut tcp = TcpStream::connect(addr).expect("connect to the relay");
        tcp.set_read_timeout(Some(wait)).unwrap();
        tcp.set_write_timeout(Some(wait)).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(preface).unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let conn = ClientConnection::new(config.clone(), name).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(err) = stream.conn.complete_io(&mut stream.sock) {
                return Err(match err.into_inner() {
                    Some(inner) => match inner.downcast::<rustls::Error>() {
                        Ok(tls) => *tls,
                        Err(other) => rustls::Error::General(other.to_string()),
                    },
                    None => rustls::Error::General("handshake I/O failed".into()),
                });
            }
        }
        Ok(Wss {
            stream,
            buf: Vec::new(),
            frames: FrameReader::new(),
        })
    }

    /// The leaf certificate the relay presented.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.stream.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// Sends `head` and returns the response's status and head.
    pub fn request(&mut self, head: &str) -> (u16, String) {
        self.stream.write_all(head.as_bytes()).unwrap();
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..at + 4).collect();
                let head = String::from_utf8(head).unwrap();
                return (head[9..12].parse().unwrap(), head);
            }
            self.fill("a response head");
        }
    }

    /// A WebSocket upgrade on `path` with `headers`, `Host: host`.
    pub fn upgrade(&mut self, path: &str, headers: &[(&str, String)], host: &str) -> u16 {
        let head =
            upgrade_head(path, headers).replace("Host: relay.test", &format!("Host: {host}"));
        self.request(&head).0
    }

    fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("EOF while waiting for {what}"),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("no {what}: {err}"),
        }
    }

    /// The next frame in what was read so far.
    fn take_frame(&mut self) -> Option<Msg> {
        let bytes = std::mem::take(&mut self.buf);
        self.frames
            .push(&bytes)
            .expect("the relay's frames are well-formed");
        self.frames.pop()
    }

    pub fn send_text(&mut self, payload: &[u8]) {
        self.stream
            .write_all(&masked_frame(0x1, true, payload))
            .unwrap();
    }

    /// The next frame that is not a ping or pong.
    pub fn recv_data(&mut self) -> Msg {
        loop {
            match self.take_frame() {
                Some(Msg::Ping(_) | Msg::Pong(_)) => continue,
                Some(msg) => return msg,
                None => self.fill("a frame"),
            }
        }
    }

    pub fn recv_text(&mut self) -> Vec<u8> {
        match self.recv_data() {
            Msg::Text(bytes) => bytes,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}
