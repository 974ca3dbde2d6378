//! deploy/haproxy.cfg made runnable on loopback: the same file with its
//! addresses, its TLS `bind`, its log target and its peers replaced, and
//! nothing else changed, so that the scale test and the balanced benchmark
//! exercise the configuration operators deploy. The test adds two things
//! the deployed file must not have: a response header naming the relay a
//! connection went to (`X-Pyrycode-Relay`, to observe placement), and a
//! control frontend whose backend is the same minus the stick table (to
//! show what the stick table prevents).
//!
//! Each rewrite must find what it rewrites: a deploy file that no longer
//! has a `bind` line or a `server` line fails here with its name, instead
//! of the test silently running another configuration.

use std::net::SocketAddr;
use std::path::Path;

/// The deployed file, relative to the workspace.
pub const DEPLOY_FILE: &str = "deploy/haproxy.cfg";
/// The frontend and backend names the deploy file uses.
const FRONTEND: &str = "frontend relay";
const BACKEND: &str = "backend relays";
/// The control backend of the test (no stick table).
pub const CONTROL_BACKEND: &str = "relays_nostick";
/// The main backend's name, as `show stat` prints it.
pub const MAIN_BACKEND: &str = "relays";

/// What to put in place of the deployed addresses.
pub struct Spec<'a> {
    pub bind: SocketAddr,
    /// The control frontend (the test only).
    pub control_bind: Option<SocketAddr>,
    pub stats_socket: &'a Path,
    /// (name, address) of every balancer sharing the stick table.
    pub peers: &'a [(String, SocketAddr)],
    /// (name, address) of the relays; their ids are 1, 2, 3 … in order.
    pub relays: &'a [(String, SocketAddr)],
    /// PROXY v2 towards the relays (off: `send-proxy-v2` removed).
    pub proxy: bool,
    /// Add the `X-Pyrycode-Relay` response header.
    pub relay_header: bool,
    /// Log to stdout (else no log).
    pub log: bool,
    /// Extra `global` lines (e.g. `nbthread 1` for the benchmark).
    pub global_extra: &'a [&'a str],
    /// In place of the deployed global `maxconn` (HAProxy refuses to start
    /// when the open-file limit cannot hold two descriptors per connection).
    pub maxconn: usize,
}

/// The workspace's deploy/haproxy.cfg.
pub fn deploy_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEPLOY_FILE)
}

fn is_header(line: &str) -> bool {
    !line.is_empty() && !line.starts_with(char::is_whitespace) && !line.starts_with('#')
}

/// Drops the PROXY protocol words of a server line when it is off.
fn proxy_words(line: &str, proxy: bool) -> String {
    if proxy {
        return line.to_string();
    }
    let indent = &line[..line.len() - line.trim_start().len()];
    let words: Vec<&str> = line
        .split_whitespace()
        .filter(|w| !matches!(*w, "send-proxy-v2" | "send-proxy" | "check-send-proxy"))
        .collect();
    format!("{indent}{}", words.join(" "))
}

/// `server NAME ADDR … id N …` for each test relay, from the first
/// deployed server line.
fn server_lines(template: &str, relays: &[(String, SocketAddr)]) -> Result<Vec<String>, String> {
    let indent = &template[..template.len() - template.trim_start().len()];
    let words: Vec<&str> = template.split_whitespace().collect();
    let id_at = words
        .iter()
        .position(|w| *w == "id")
        .ok_or_else(|| format!("{DEPLOY_FILE}: the server line has no fixed `id`: {template}"))?;
    if words.len() < 3 || id_at + 1 >= words.len() {
        return Err(format!(
            "{DEPLOY_FILE}: cannot read the server line {template:?}"
        ));
    }
    Ok(relays
        .iter()
        .enumerate()
        .map(|(i, (name, addr))| {
            let mut w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
            w[1] = name.clone();
            w[2] = addr.to_string();
            w[id_at + 1] = (i + 1).to_string();
            format!("{indent}{}", w.join(" "))
        })
        .collect())
}

/// The deploy file rewritten for `spec`.
pub fn render(deploy: &str, spec: &Spec) -> Result<String, String> {
    let mut r = Renderer {
        spec,
        out: Vec::new(),
        backend: Vec::new(),
        section: String::new(),
        found: Found::default(),
    };
    for line in deploy.lines() {
        if is_header(line) {
            r.enter(line);
        } else {
            r.directive(line)?;
        }
    }
    r.finish()
}

/// The rewrites that must each have happened once.
#[derive(Default)]
struct Found {
    bind: bool,
    servers: bool,
    peers: bool,
    stats: bool,
}

/// The rewrite in progress, line by line.
struct Renderer<'a> {
    spec: &'a Spec<'a>,
    out: Vec<String>,
    /// The main backend's lines as written, for the control copy.
    backend: Vec<String>,
    section: String,
    found: Found,
}

impl Renderer<'_> {
    /// A section header: closes the previous section, opens this one.
    fn enter(&mut self, line: &str) {
        self.leave();
        self.section = line.trim().to_string();
        self.out.push(line.to_string());
        if self.section == "global" {
            for extra in self.spec.global_extra {
                self.out.push(format!("    {extra}"));
            }
        } else if self.section.starts_with("peers ") {
            self.found.peers = true;
            for (name, addr) in self.spec.peers {
                self.out.push(format!("    peer {name} {addr}"));
            }
        }
    }

    /// The end of a section: the main backend gets the test's header.
    fn leave(&mut self) {
        if self.section == BACKEND && self.spec.relay_header {
            self.out.push(relay_header_line());
        }
    }

    /// One line inside a section, rewritten or kept.
    fn directive(&mut self, line: &str) -> Result<(), String> {
        let word = line.split_whitespace().next().unwrap_or("");
        let text = self
            .rewrite(word, line)?
            .unwrap_or_else(|| line.to_string());
        if self.section == BACKEND && word != "server" && !text.trim().is_empty() {
            self.backend.push(text.clone());
        }
        if !text.is_empty() {
            self.out.push(text);
        }
        Ok(())
    }

    /// The replacement of a line (empty: dropped), or None to keep it.
    fn rewrite(&mut self, word: &str, line: &str) -> Result<Option<String>, String> {
        let spec = self.spec;
        Ok(Some(match (self.section.as_str(), word) {
            ("global", "log") if spec.log => "    log stdout format raw local0".to_string(),
            ("global" | "defaults", "log") if !spec.log => String::new(),
            ("global", "stats") => {
                self.found.stats = true;
                let path = spec.stats_socket.display();
                format!("    stats socket {path} mode 600 level admin")
            }
            ("global", "maxconn") => format!("    maxconn {}", spec.maxconn),
            ("global", "user" | "group" | "chroot" | "daemon") => String::new(),
            (s, "peer") if s.starts_with("peers ") => String::new(),
            (FRONTEND, "bind") => {
                self.found.bind = true;
                format!("    bind {}", spec.bind)
            }
            (BACKEND, "server") if self.found.servers => String::new(),
            (BACKEND, "server") => {
                self.found.servers = true;
                let lines = server_lines(&proxy_words(line, spec.proxy), spec.relays)?;
                self.backend.extend(lines.iter().cloned());
                lines.join("\n")
            }
            (BACKEND, "default-server") => proxy_words(line, spec.proxy),
            _ => return Ok(None),
        }))
    }

    /// Checks every rewrite happened; appends the control frontend.
    fn finish(mut self) -> Result<String, String> {
        self.leave();
        for (found, what) in [
            (self.found.bind, "a `bind` line in `frontend relay`"),
            (self.found.servers, "a `server` line in `backend relays`"),
            (self.found.peers, "a `peers` section"),
            (self.found.stats, "a `stats socket` line in `global`"),
        ] {
            if !found {
                return Err(format!("{DEPLOY_FILE}: expected {what}"));
            }
        }
        if let Some(control) = self.spec.control_bind {
            self.out.push(format!(
                "\n# Test only: the same backend without its stick table.\nfrontend control\n    bind {control}\n    default_backend {CONTROL_BACKEND}\nbackend {CONTROL_BACKEND}"
            ));
            for line in &self.backend {
                let trimmed = line.trim_start();
                if !trimmed.starts_with("stick") && !trimmed.starts_with('#') {
                    self.out.push(line.clone());
                }
            }
            if self.spec.relay_header {
                self.out.push(relay_header_line());
            }
        }
        self.out.push(String::new());
        Ok(self.out.join("\n"))
    }
}

fn relay_header_line() -> String {
    format!(
        "    # Test only: which relay took the connection.\n    http-response set-header {} %[srv_name]",
        super::client::RELAY_HEADER
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        peers: &'a [(String, SocketAddr)],
        relays: &'a [(String, SocketAddr)],
        proxy: bool,
    ) -> Spec<'a> {
        Spec {
            bind: "127.0.0.1:1000".parse().unwrap(),
            control_bind: Some("127.0.0.1:1001".parse().unwrap()),
            stats_socket: Path::new("/tmp/x.sock"),
            peers,
            relays,
            proxy,
            relay_header: true,
            log: true,
            global_extra: &[],
            maxconn: 1000,
        }
    }

    #[test]
    fn the_deploy_file_becomes_a_loopback_one() {
        let deploy = std::fs::read_to_string(deploy_file()).unwrap();
        let peers = [("lbA".to_string(), "127.0.0.1:2000".parse().unwrap())];
        let relays: Vec<(String, SocketAddr)> = (1..=3)
            .map(|i| {
                (
                    format!("relay{i}"),
                    format!("127.0.0.1:300{i}").parse().unwrap(),
                )
            })
            .collect();
        let cfg = render(&deploy, &spec(&peers, &relays, true)).unwrap();
        assert!(cfg.contains("    bind 127.0.0.1:1000\n"));
        assert!(!cfg.contains("ssl crt"));
        assert!(cfg.contains("    peer lbA 127.0.0.1:2000\n"));
        let directives = |cfg: &str, word: &str| {
            cfg.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains(word))
        };
        assert!(!directives(&cfg, "10.0.0."));
        assert!(cfg.contains("    server relay2 127.0.0.1:3002 id 2"));
        // The control backend: the same servers, no stick table.
        let control = cfg.split("\nbackend relays_nostick").nth(1).unwrap();
        assert!(control.contains("balance hdr(x-pyrycode-server)"));
        assert!(control.contains("server relay3 127.0.0.1:3003 id 3"));
        assert!(!control.contains("stick"));
        let off = render(&deploy, &spec(&peers, &relays, false)).unwrap();
        assert!(directives(&cfg, "send-proxy-v2"));
        assert!(!directives(&off, "send-proxy"));
    }

    #[test]
    fn a_deploy_file_without_a_bind_line_is_refused() {
        let err = render(
            "global\n    stats socket /x\npeers p\nbackend relays\n    server a 1.2.3.4:1 id 1\n",
            &spec(&[], &[], true),
        )
        .unwrap_err();
        assert!(err.contains("bind"), "{err}");
    }
}
