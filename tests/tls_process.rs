//! TLS and the PROXY protocol with the real executable: WSS from
//! certificate files with `--domain` enforced (421); SIGHUP reloads (a live
//! connection stays, the next one gets the new certificate, a bad file
//! keeps the old one); certificate files and cache directories that cannot
//! be used (exit 1 with the reason); and HAProxy's `send-proxy-v2` in front
//! of the TLS listener and of the plain one (the client's address reaches
//! the relay's logs). Real time: every wait is bounded by [`WAIT`].

#[path = "support/blocking.rs"]
mod blocking;
mod common;
#[path = "support/process.rs"]
mod process;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use blocking::{exchange, wss_pair, Wss};
use common::{binary_headers, Msg};
use process::{free_port, run_relay, spawn_to_log, temp_dir, wait_listening, RelayProcess, WAIT};
use rustls::version::{TLS12, TLS13};
use tls_support::{client_config, Issued, TestCa};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh directory, a CA, and a relay.test certificate it issued,
/// written to `cert.pem` and `key.pem` there: `(dir, ca, issued, cert, key)`.
fn files(name: &str) -> (PathBuf, TestCa, Issued, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let ca = TestCa::new("relay test root");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let issued = ca.issue(&["relay.test"]);
    issued.write(&cert, &key);
    (dir, ca, issued, cert, key)
}

/// Serving wss from the files `cert` and `key` on a free port, no
/// `/metrics`, then `extra`.
fn tls_args<'a>(cert: &'a Path, key: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let files = ["--tls-cert", path(cert), "--tls-key", path(key)];
    let mut args = files.to_vec();
    args.extend(["--https-listen", "127.0.0.1:0", "--metrics-listen", ""]);
    args.extend(extra);
    args
}

#[test]
fn wss_from_certificate_files_reloads_on_sighup_and_keeps_live_connections() {
    let (_, ca, first, cert, key) = files("sighup");
    let args = tls_args(&cert, &key, &["--domain", "relay.test"]);
    let mut relay = RelayProcess::start_args(&args, 1);
    let addr = relay.listening[0];
    assert!(
        relay.log_text().contains("tls=files"),
        "{}",
        relay.log_text()
    );
    let config = client_config(ca.roots(), &[b"http/1.1"], &[&TLS13, &TLS12]);
    let (mut binary, mut phone) = wss_pair(addr, &config, [b"", b""], "srv-sighup");
    assert_eq!(binary.leaf(), first.leaf);

    let second = ca.issue(&["relay.test"]);
    second.write(&cert, &key);
    relay.signal(libc::SIGHUP);
    relay.wait_logged("tls_certificate_reloaded");
    let next = Wss::connect_tls(addr, &config, "relay.test", b"").unwrap();
    assert_eq!(
        next.leaf(),
        second.leaf,
        "the next connection gets the new one"
    );
    exchange(&mut binary, &mut phone, br#"{"still":"live"}"#);

    // A key that is not the certificate's: the new certificate stays.
    std::fs::write(&key, ca.issue(&["relay.test"]).key_pem).unwrap();
    relay.signal(libc::SIGHUP);
    let line = relay.wait_logged("tls_certificate_reload_failed");
    assert!(
        line.contains("does not belong to the certificate"),
        "{line}"
    );
    let next = Wss::connect_tls(addr, &config, "relay.test", b"").unwrap();
    assert_eq!(next.leaf(), second.leaf);
    exchange(&mut binary, &mut phone, br#"{"still":"live again"}"#);

    // --domain: another Host gets 421.
    let mut other = Wss::connect_tls(addr, &config, "relay.test", b"").unwrap();
    let head = "GET /healthz HTTP/1.1\r\nHost: other.test\r\n\r\n";
    assert_eq!(other.request(head).0, 421);

    relay.signal(libc::SIGTERM);
    assert_eq!(
        binary.recv_data(),
        Msg::Close(Some(1001), "shutting down".into())
    );
    drop((binary, phone, next, other));
    assert_eq!(relay.wait_exit().code(), Some(0), "{}", relay.log_text());
}

#[test]
fn certificate_files_that_cannot_be_used_stop_the_start_with_exit_1() {
    let (dir, ca, _, cert, key) = files("badfiles");
    let missing = dir.join("missing.pem");
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, ca.issue(&["relay.test"]).key_pem).unwrap();
    for (cert, key, reason) in [
        (&missing, &key, "cannot read"),
        (&cert, &other_key, "does not belong to the certificate"),
        (&key, &key, "no certificate"),
    ] {
        let (status, _, log) = run_relay(&tls_args(cert, key, &[]));
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("tls_failed reason=") && log.contains(reason),
            "{log}"
        );
        assert!(!log.contains("listening addr="), "{log}");
    }
}

/// ACME flags that start the relay without reaching any CA: nothing
/// listens on port 9 of loopback, so the first order fails and backs off.
fn acme_args(cache: &str) -> Vec<&str> {
    vec![
        "--domain",
        "relay.test",
        "--cert-cache",
        cache,
        "--http-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
        "--acme-directory",
        "https://127.0.0.1:9/dir",
        "--metrics-listen",
        "",
    ]
}

#[test]
fn the_cert_cache_is_created_private_tightened_if_ours_and_refused_if_not() {
    let dir = temp_dir("cache");
    // Missing: created 0700.
    let created = dir.join("new/certs");
    let mut relay = RelayProcess::start_args(&acme_args(path(&created)), 2);
    relay.wait_logged("acme_cache_dir");
    assert_eq!(std::fs::metadata(&created).unwrap().mode() & 0o777, 0o700);
    relay.stop();

    // Ours and open to others: tightened.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut relay = RelayProcess::start_args(&acme_args(path(&open)), 2);
    let line = relay.wait_logged("acme_cache_dir");
    assert!(line.contains("tightened_from=0755"), "{line}");
    assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
    relay.stop();

    // Someone else's and open: refused (the tests run as root, as CI does).
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (status, _, log) = run_relay(&acme_args(path(&theirs)));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("is owned by uid 65534 (not us) and has mode 0755"),
        "{log}"
    );

    // Not a directory: refused.
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let (status, _, log) = run_relay(&acme_args(path(&file)));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("is not a directory"), "{log}");
}

/// HAProxy in TCP mode, sending a PROXY v2 header to `backend`.
struct Haproxy {
    child: Child,
    front: SocketAddr,
}

impl Haproxy {
    fn start(dir: &Path, backend: SocketAddr) -> Haproxy {
        let front = SocketAddr::from(([127, 0, 0, 1], free_port(false)));
        let config = format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend front\n  bind {front}\n  default_backend relay\n\
             backend relay\n  server relay {backend} send-proxy-v2\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new("haproxy");
        command.args(["-db", "-f", path.to_str().unwrap()]);
        let log = dir.join("haproxy.log");
        let missing = "install the Debian package haproxy (.ci/run does)";
        let mut child = spawn_to_log(command, &log, missing);
        wait_listening(front, "haproxy", Some(&mut child));
        Haproxy { child, front }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_send_proxy_v2_in_front_of_the_tls_listener_carries_the_client_address() {
    let (dir, ca, _, cert, key) = files("haproxy-tls");
    let args = tls_args(&cert, &key, &["--https-proxy-protocol"]);
    let mut relay = RelayProcess::start_args(&args, 1);
    assert!(relay.log_text().contains("proxy_protocol=true"));
    let haproxy = Haproxy::start(&dir, relay.listening[0]);
    let config = client_config(ca.roots(), &[b"http/1.1"], &[&TLS13]);
    let (binary, phone) = wss_pair(haproxy.front, &config, [b"", b""], "srv-haproxy");
    // The phone's own address (not HAProxy's) is the one the relay logs.
    let phone_addr = phone.stream.sock.local_addr().unwrap();
    relay.wait_logged(&format!("remote={phone_addr}"));
    let binary_addr = binary.stream.sock.local_addr().unwrap();
    relay.wait_logged(&format!(
        "server_claimed server_id=srv-haproxy remote={binary_addr}"
    ));

    // Straight to the relay, without HAProxy: refused without a byte.
    let refused = Wss::connect_tls(relay.listening[0], &config, "relay.test", b"");
    assert!(refused.is_err(), "a handshake without a PROXY header");
    drop((binary, phone));
    relay.stop();
}

#[test]
fn haproxy_send_proxy_v2_in_front_of_the_plain_listener() {
    use std::io::{Read, Write};
    let dir = temp_dir("haproxy-plain");
    let mut relay = RelayProcess::start(&["--proxy-protocol"]);
    let haproxy = Haproxy::start(&dir, relay.listening[0]);
    let mut client = std::net::TcpStream::connect(haproxy.front).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let head = common::upgrade_head("/v1/server", &binary_headers("srv-plain-haproxy"));
    client.write_all(head.as_bytes()).unwrap();
    let mut response = [0u8; 12];
    client.read_exact(&mut response).unwrap();
    assert_eq!(&response, b"HTTP/1.1 101");
    let addr = client.local_addr().unwrap();
    relay.wait_logged(&format!(
        "server_claimed server_id=srv-plain-haproxy remote={addr}"
    ));
    drop(client);
    relay.stop();
}

/// A PROXY v2 header for a client at 203.0.113.7:`port`.
fn proxy_header(port: u16, to: SocketAddr) -> Vec<u8> {
    pyrycode_relay::proxy_protocol::encode(SocketAddr::from(([203, 0, 113, 7], port)), to, &[])
}

#[test]
fn an_upgrade_closes_tls_connections_1001_and_serves_tls_on_the_same_listener_after() {
    let (_, ca, issued, cert, key) = files("upgrade-tls");
    let args = tls_args(&cert, &key, &["--https-proxy-protocol"]);
    let mut relay = RelayProcess::start_args(&args, 1);
    let addr = relay.listening[0];
    let config = client_config(ca.roots(), &[b"http/1.1"], &[&TLS13]);
    let (mut binary, _first_phone) =
        wss_pair(addr, &config, [&proxy_header(40001, addr)[..]; 2], "srv-up");
    relay.signal(libc::SIGUSR2);
    // rustls state cannot move: the TLS connections are closed first.
    assert_eq!(
        binary.recv_data(),
        Msg::Close(Some(1001), "shutting down".into())
    );
    relay.wait_logged("handover_restored");
    // The new image took the listener over with its own TLS and PROXY layers.
    let (next, phone) = wss_pair(
        addr,
        &config,
        [&proxy_header(40002, addr)[..]; 2],
        "srv-up2",
    );
    assert_eq!(next.leaf(), issued.leaf);
    drop((binary, next, phone));
    relay.stop();
}

#[test]
fn an_upgrade_moves_a_plain_connection_that_came_behind_a_proxy_header_with_its_source() {
    use std::io::{Read, Write};
    let mut relay = RelayProcess::start(&["--proxy-protocol"]);
    let addr = relay.listening[0];
    let mut binary = std::net::TcpStream::connect(addr).unwrap();
    binary.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = proxy_header(40003, addr);
    bytes.extend_from_slice(
        common::upgrade_head("/v1/server", &binary_headers("srv-moved")).as_bytes(),
    );
    binary.write_all(&bytes).unwrap();
    let mut response = [0u8; 129];
    let n = binary.read(&mut response).unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 101"));
    relay.signal(libc::SIGUSR2);
    relay.wait_logged("handover_restored connections=1");
    // Still the same WebSocket, in the new image: a ping is answered.
    binary
        .write_all(&common::masked_frame(0x9, true, b"still"))
        .unwrap();
    let mut pong = [0u8; 7];
    binary.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0x8A, 5, b's', b't', b'i', b'l', b'l']);
    drop(binary);
    // Its address is still the header's.
    relay.wait_logged("binary_disconnected server_id=srv-moved remote=203.0.113.7:40003");
    relay.stop();
}
