//! The balancer configurations of docs/SCALING.md, checked by the tools
//! that run them: `haproxy -c` for deploy/haproxy.cfg and `nginx -t` for
//! deploy/nginx.conf (Debian: `apt-get install -y haproxy nginx-light`;
//! `.ci/run` installs both). A missing tool fails the test: these files
//! are only worth shipping if they load.
//!
//! Both files name a certificate the test machine does not have; the copy
//! checked here points those paths at `tests/fixtures/balancer-test.pem`
//! (a throwaway self-signed certificate) and changes nothing else. The
//! end-to-end behaviour of the HAProxy file is `make test-scale`.

use std::path::{Path, PathBuf};
use std::process::Command;

const HAPROXY_CFG: &str = "deploy/haproxy.cfg";
const NGINX_CONF: &str = "deploy/nginx.conf";
const HAPROXY_CERT: &str = "/etc/haproxy/certs/relay.pem";
const NGINX_CERT: &str = "/etc/letsencrypt/live/relay.example.com/fullchain.pem";
const NGINX_KEY: &str = "/etc/letsencrypt/live/relay.example.com/privkey.pem";
/// The relay's default --ping-interval (SPEC §6), in seconds.
const RELAY_PING_INTERVAL_S: u64 = 30;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fixture_cert() -> String {
    repo("tests/fixtures/balancer-test.pem")
        .display()
        .to_string()
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pyrycode-balancer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in the configuration"
    );
    text.replacen(from, to, 1)
}

/// Runs a tool, failing the test with install advice when it is missing.
fn run(tool: &str, package: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}): install it with `apt-get install -y {package}`")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Seconds of an HAProxy time value (`90s`, `2m`, `1h`, `24d`, bare ms).
fn haproxy_seconds(value: &str) -> u64 {
    let (digits, unit): (String, String) = value.chars().partition(char::is_ascii_digit);
    let n: u64 = digits.parse().expect("a number");
    match unit.as_str() {
        "" | "ms" => n / 1000,
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => panic!("unknown HAProxy time unit {other:?}"),
    }
}

/// The directive lines of one section (`backend relays`), trimmed.
fn section<'a>(cfg: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = cfg.lines().skip_while(|l| l.trim_end() != header);
    assert!(lines.next().is_some(), "no section {header:?}");
    lines
        .take_while(|l| l.is_empty() || l.starts_with(char::is_whitespace))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn haproxy_config_loads_without_a_warning() {
    let dir = scratch("haproxy");
    let cfg = std::fs::read_to_string(repo(HAPROXY_CFG)).expect("deploy/haproxy.cfg");
    let copy = dir.join("haproxy.cfg");
    std::fs::write(&copy, replace_once(&cfg, HAPROXY_CERT, &fixture_cert())).unwrap();
    // -L names the local peer of the `peers` section, as each balancer is
    // started in production; without it HAProxy drops the section.
    let (ok, out) = run(
        "haproxy",
        "haproxy",
        &["-c", "-L", "lb1", "-f", copy.to_str().unwrap()],
    );
    assert!(ok, "haproxy -c refused deploy/haproxy.cfg:\n{out}");
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ALERT]"),
        "haproxy -c warned about deploy/haproxy.cfg:\n{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn haproxy_config_shards_by_server_id() {
    let cfg = std::fs::read_to_string(repo(HAPROXY_CFG)).expect("deploy/haproxy.cfg");
    let backend = section(&cfg, "backend relays");
    for needed in [
        "balance hdr(x-pyrycode-server)",
        "hash-type consistent",
        "stick on req.hdr(x-pyrycode-server)",
        "option httpchk GET /healthz",
    ] {
        assert!(backend.contains(&needed), "backend relays lacks {needed:?}");
    }
    let table = backend
        .iter()
        .find(|l| l.starts_with("stick-table "))
        .expect("a stick table");
    assert!(
        table.contains("type string len 128") && table.ends_with("peers balancers"),
        "the stick table holds whole server-ids and is shared: {table}"
    );
    let defaults = backend
        .iter()
        .find(|l| l.starts_with("default-server "))
        .expect("default-server");
    assert!(
        defaults.split_whitespace().any(|w| w == "send-proxy-v2"),
        "PROXY v2 towards the relays: {defaults}"
    );
    // Fixed, distinct ids: every balancer places the relays alike.
    let mut ids: Vec<&str> = backend
        .iter()
        .filter(|l| l.starts_with("server "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "id").expect("server id");
            words[at + 1]
        })
        .collect();
    let servers = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert!(servers >= 2 && ids.len() == servers, "fixed distinct ids");
    let frontend = section(&cfg, "frontend relay");
    assert!(
        frontend
            .iter()
            .any(|l| l.starts_with("http-request deny") && l.contains("x-pyrycode-server")),
        "requests without the header are refused at the balancer"
    );
}

#[test]
fn haproxy_tunnel_outlives_the_relays_ping_interval() {
    let cfg = std::fs::read_to_string(repo(HAPROXY_CFG)).expect("deploy/haproxy.cfg");
    let tunnel = section(&cfg, "defaults")
        .into_iter()
        .find_map(|l| l.strip_prefix("timeout tunnel "))
        .expect("timeout tunnel");
    // At least two ping intervals: one lost ping must not cut the tunnel.
    assert!(haproxy_seconds(tunnel.trim()) >= 2 * RELAY_PING_INTERVAL_S);
}

#[test]
fn haproxy_seconds_reads_the_units() {
    assert_eq!(haproxy_seconds("2m"), 120);
    assert_eq!(haproxy_seconds("24d"), 24 * 86_400);
    assert_eq!(haproxy_seconds("5000"), 5);
}

#[test]
fn nginx_config_loads() {
    let dir = scratch("nginx");
    let site = std::fs::read_to_string(repo(NGINX_CONF)).expect("deploy/nginx.conf");
    let cert = fixture_cert();
    let site = replace_once(&replace_once(&site, NGINX_CERT, &cert), NGINX_KEY, &cert);
    std::fs::write(dir.join("site.conf"), site).unwrap();
    // The file belongs in the http block (conf.d/); this main file holds
    // it, with every path nginx writes to inside the scratch directory.
    let d = dir.display();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ }}\nhttp {{\n\
         access_log off;\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         include {d}/site.conf;\n}}\n"
    );
    let main_path = dir.join("nginx.conf");
    std::fs::write(&main_path, main).unwrap();
    let (ok, out) = run(
        "nginx",
        "nginx-light",
        &[
            "-t",
            "-p",
            dir.to_str().unwrap(),
            "-c",
            main_path.to_str().unwrap(),
        ],
    );
    assert!(ok, "nginx -t refused deploy/nginx.conf:\n{out}");
    assert!(!out.contains("[warn]"), "nginx -t warned:\n{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nginx_config_hashes_on_the_server_id() {
    let site = std::fs::read_to_string(repo(NGINX_CONF)).expect("deploy/nginx.conf");
    assert!(site.contains("hash $http_x_pyrycode_server consistent;"));
    assert!(site.contains("proxy_set_header X-Forwarded-For $remote_addr;"));
}
