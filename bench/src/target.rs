//! What the benchmark measures, started by the benchmark itself: the relay,
//! or HAProxy in front of the bench's own echo server. Each phase gets a
//! fresh process, so memory figures start from a clean heap. With `--tls`
//! both serve the run's certificate; with `--url` nothing is started.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::{self, ProcSample};
use crate::tls::CertFiles;
use crate::url::Remote;

/// Which proxy a measurement is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Relay,
    Haproxy,
    /// A relay already running at `--url`: client-side figures only.
    Url,
}

impl Kind {
    /// A relay (started, or at `--url`): binaries, envelopes, fanout.
    pub fn is_relay(self) -> bool {
        matches!(self, Kind::Relay | Kind::Url)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::Haproxy => "haproxy",
            Kind::Url => "url",
        }
    }
}

/// How to start things, and where.
#[derive(Clone, Debug)]
pub struct Launch {
    pub relay: PathBuf,
    pub relay_args: Vec<String>,
    pub relay_log_level: String,
    pub haproxy: String,
    /// CPU of the measured proxy (`None`: not pinned).
    pub proxy_cpu: Option<usize>,
    /// CPU of the generator and the echo server.
    pub gen_cpu: Option<usize>,
    pub workdir: PathBuf,
    /// `--tls`: the certificate both targets serve.
    pub tls: Option<CertFiles>,
}

/// A running proxy (and, for HAProxy, its echo server); for `--url`, no
/// process at all.
pub struct Running {
    pub kind: Kind,
    pub addr: SocketAddr,
    proxy: Option<Child>,
    echo: Option<Child>,
    log: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The relay binary to use when no `--relay` is given: the workspace's
/// release build.
pub fn default_relay_path() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target_dir.join("release/pyrycode-relay")
}

/// Whether an HAProxy executable can be run.
pub fn haproxy_available(haproxy: &str) -> bool {
    Command::new(haproxy)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first line of `haproxy -v`.
pub fn haproxy_version(haproxy: &str) -> String {
    Command::new(haproxy)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Launch {
    /// Starts the relay with the flags a benchmark needs: limits raised so
    /// that one generator on a few source addresses is never refused.
    pub fn relay(&self, phones_per_server: usize, tag: &str) -> Result<Running, String> {
        if !self.relay.exists() {
            return Err(format!(
                "relay binary not found at {} (build it with `cargo build --release`, or pass --relay PATH)",
                self.relay.display()
            ));
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .expect("literal address");
        let mut args: Vec<String> = match &self.tls {
            None => vec![format!("--insecure-listen={addr}")],
            Some(files) => vec![
                format!("--https-listen={addr}"),
                format!("--tls-cert={}", files.cert.display()),
                format!("--tls-key={}", files.key.display()),
            ],
        };
        args.extend([
            "--metrics-listen=".into(),
            "--rate-limit-burst=100000000".into(),
            "--max-connections=1000000".into(),
            "--max-connections-per-ip=1000000".into(),
            format!("--max-phones-per-server={}", phones_per_server.max(16)),
            format!("--log-level={}", self.relay_log_level),
        ]);
        args.extend(self.relay_args.iter().cloned());
        let log = self.workdir.join(format!("relay-{tag}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&self.relay);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(cpu) = self.proxy_cpu {
            sys::pin_command(&mut cmd, cpu);
        }
        let command = format!("{} {}", self.relay.display(), args.join(" "));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.relay.display()))?;
        let mut running = Running {
            kind: Kind::Relay,
            addr,
            proxy: Some(child),
            echo: None,
            log,
            command,
        };
        running.wait_listening()?;
        Ok(running)
    }

    /// Starts the echo server (pinned with the generator) and HAProxy
    /// (`nbthread 1`, `mode http`, `timeout tunnel`) in front of it.
    pub fn haproxy(&self, max_clients: usize, tag: &str) -> Result<Running, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["echo-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(cpu) = self.gen_cpu {
            sys::pin_command(&mut cmd, cpu);
        }
        let mut echo = cmd
            .spawn()
            .map_err(|e| format!("cannot start echo server: {e}"))?;
        let mut line = String::new();
        let stdout = echo.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("echo server: {e}"))?;
        let echo_port: u16 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = echo.kill();
                let _ = echo.wait();
                return Err(format!("echo server did not report its port: {line:?}"));
            }
        };
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .expect("literal address");
        let maxconn = max_clients + 64;
        // TLS as the relay serves it: 1.2 and 1.3, ALPN http/1.1 only.
        let tls = match &self.tls {
            None => String::new(),
            Some(files) => format!(
                " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.2",
                files.haproxy_pem.display()
            ),
        };
        let config = format!(
            "global\n\
             \tnbthread 1\n\
             \tmaxconn {maxconn}\n\
             \tno log\n\
             defaults\n\
             \tmode http\n\
             \ttimeout connect 5s\n\
             \ttimeout client 60s\n\
             \ttimeout server 60s\n\
             \ttimeout tunnel 1h\n\
             \tmaxconn {maxconn}\n\
             frontend bench\n\
             \tbind 127.0.0.1:{port}{tls}\n\
             \tdefault_backend echo\n\
             backend echo\n\
             \tserver echo1 127.0.0.1:{echo_port}\n"
        );
        let cfg_path = self.workdir.join(format!("haproxy-{tag}.cfg"));
        std::fs::write(&cfg_path, config).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let log = self.workdir.join(format!("haproxy-{tag}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&self.haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(cpu) = self.proxy_cpu {
            sys::pin_command(&mut cmd, cpu);
        }
        let command = format!("{} -db -f {}", self.haproxy, cfg_path.display());
        let proxy = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = echo.kill();
                let _ = echo.wait();
                return Err(format!("cannot start {}: {e}", self.haproxy));
            }
        };
        let mut running = Running {
            kind: Kind::Haproxy,
            addr,
            proxy: Some(proxy),
            echo: Some(echo),
            log,
            command,
        };
        running.wait_listening()?;
        Ok(running)
    }
}

impl Running {
    /// A relay that runs elsewhere (`--url`): nothing to start or stop.
    pub fn remote(remote: &Remote) -> Running {
        Running {
            kind: Kind::Url,
            addr: remote.addr,
            proxy: None,
            echo: None,
            log: PathBuf::new(),
            command: format!("(already running at {})", remote.url),
        }
    }

    /// The measured process (scenarios that watch or signal it by pid
    /// never run against a `--url` target, which has none).
    pub fn pid(&self) -> u32 {
        self.proxy
            .as_ref()
            .map(Child::id)
            .expect("a --url target has no process")
    }

    /// The measured process's memory and CPU time now. For `--url` there
    /// is no process: a sample with only the time in it, which the report
    /// never shows (see `Measurement::proxy_measured`).
    pub fn sample(&self) -> Result<ProcSample, String> {
        match &self.proxy {
            Some(child) => {
                let pid = child.id();
                sys::sample(pid).map_err(|e| format!("/proc/{pid}: {e}"))
            }
            None => Ok(ProcSample::unmeasured()),
        }
    }

    /// The echo server's process, if any.
    pub fn echo_pid(&self) -> Option<u32> {
        self.echo.as_ref().map(Child::id)
    }

    /// Whether the proxy is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.proxy {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return Err(format!(
                    "{} exited at start-up:\n{}",
                    self.kind.name(),
                    self.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "{} did not listen on {} within 10 s",
            self.kind.name(),
            self.addr
        ))
    }

    /// Where the proxy's log goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines the proxy logged.
    pub fn log_tail(&self) -> String {
        if self.proxy.is_none() {
            return String::new();
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops the proxy and the echo server (SIGTERM, then SIGKILL after a
    /// short grace), and reaps them.
    pub fn stop(mut self) {
        for child in self.proxy.iter_mut().chain(self.echo.as_mut()) {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in self.proxy.iter_mut().chain(self.echo.as_mut()) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
