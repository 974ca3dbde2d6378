//! Pebble, Let's Encrypt's test CA (Debian package `pebble`, installed by
//! `.ci/run`), on loopback with real validation (not
//! `PEBBLE_VA_ALWAYS_VALID`): `pebble-challtestsrv` answers its DNS (every
//! name is 127.0.0.1), and its validation authority connects to the HTTP
//! and TLS ports it is given. Output goes to `<work>/<program>.log`.
//!
//! (The library tests in `tests/acme_pebble.rs` start their own Pebble,
//! with nonce rejection on.)
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::TLS13;

use crate::tls_support::{client_config, TestCa};

/// Longest wait for a process to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Pebble and its DNS server, killed on drop.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    acme_port: u16,
    management_port: u16,
    /// The CA of Pebble's own HTTPS certificate.
    https_ca: TestCa,
    /// That CA's root as a PEM file (`--acme-ca-root`).
    pub https_root: PathBuf,
}

impl Pebble {
    /// Starts the DNS server, then Pebble validating HTTP-01 on
    /// `http_port` and TLS-ALPN-01 on `tls_port` of 127.0.0.1.
    pub fn start(work: &Path, http_port: u16, tls_port: u16) -> Pebble {
        let (dns, dns_port) = start_dns(work);
        let https_ca = TestCa::new("pebble https root");
        let https = https_ca.issue(&["127.0.0.1", "localhost"]);
        let (cert, key) = (work.join("pebble.crt"), work.join("pebble.key"));
        https.write(&cert, &key);
        let https_root = work.join("pebble-https-root.pem");
        std::fs::write(&https_root, &https_ca.root_pem).unwrap();
        let (acme_port, management_port) = (free_port(false), free_port(false));
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = work.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns_address = format!("127.0.0.1:{dns_port}");
        let args = [
            "-config",
            config_path.to_str().unwrap(),
            "-dnsserver",
            &dns_address,
        ];
        // No nonce rejection: instant-acme retries a `badNonce` twice, so at
        // Pebble's default 5 % (or the 20 % of tests/acme_pebble.rs, which
        // tests that retry) an order of twenty requests fails now and then,
        // and the relay's back-off (10 min) would outlast the test.
        let env = [("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")];
        let mut pebble = spawn(work, "pebble", &args, &env);
        wait_listening(acme_port, "pebble", &mut pebble);
        wait_listening(management_port, "pebble management", &mut pebble);
        Pebble {
            pebble,
            dns,
            acme_port,
            management_port,
            https_ca,
            https_root,
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root of the certificates Pebble issues (new each run).
    pub fn root(&self) -> CertificateDer<'static> {
        let body = self.https_get("/roots/0");
        CertificateDer::from_pem_slice(body.as_bytes()).expect("Pebble's root is PEM")
    }

    /// `GET path` from the management interface; the body.
    fn https_get(&self, path: &str) -> String {
        let client = client_config(self.https_ca.roots(), &[b"http/1.1"], &[&TLS13]);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(client, name).unwrap();
        let socket = TcpStream::connect(("127.0.0.1", self.management_port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut stream = rustls::StreamOwned::new(conn, socket);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        body.to_owned()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pebble-challtestsrv` as DNS server only: every name is 127.0.0.1.
fn start_dns(work: &Path) -> (Child, u16) {
    let (dns_port, management_port) = (free_port(true), free_port(false));
    let dns_address = format!("127.0.0.1:{dns_port}");
    let management_address = format!("127.0.0.1:{management_port}");
    let args = [
        "-dns01",
        &dns_address,
        "-management",
        &management_address,
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-defaultIPv4",
        "127.0.0.1",
        "-defaultIPv6",
        "",
    ];
    let mut dns = spawn(work, "pebble-challtestsrv", &args, &[]);
    wait_listening(management_port, "pebble-challtestsrv", &mut dns);
    (dns, dns_port)
}

/// A free loopback port (TCP, or UDP for the DNS server).
pub fn free_port(udp: bool) -> u16 {
    match udp {
        true => UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        false => TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}

/// Waits until something listens on the TCP `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status} before listening on {port}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program`; its output goes to `<work>/<program>.log`.
fn spawn(work: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(work.join(format!("{program}.log"))).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command.env_remove("PEBBLE_VA_ALWAYS_VALID");
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install the Debian package pebble (.ci/run does)")
    })
}
