//! Pebble, Let's Encrypt's test CA (Debian package `pebble`, installed by
//! `.ci/run`), on loopback with real validation (not
//! `PEBBLE_VA_ALWAYS_VALID`): `pebble-challtestsrv` answers its DNS (every
//! name is 127.0.0.1), and its validation authority connects to the HTTP
//! and TLS ports it is given. Output goes to `<work>/<program>.log`.
//!
//! The relay's tests (`tests/acme_relay.rs`) start it rejecting no nonce;
//! the ACME client's tests (`tests/acme_pebble.rs`) with nonce rejection
//! on, and restart it to make it forget their account.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::TLS13;

use crate::process::{free_port, spawn_to_log, wait_listening};
use crate::tls_support::{client_config, TestCa};

/// Percent of nonces a [`Pebble::start_rejecting`] with nonce rejection
/// rejects in `tests/acme_pebble.rs`, so that instant-acme's retry
/// (RFC 8555 §6.5) is exercised.
pub const NONCE_REJECT_PERCENT: u8 = 20;

/// Pebble and its DNS server, killed on drop.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    work: PathBuf,
    config_path: PathBuf,
    dns_port: u16,
    acme_port: u16,
    management_port: u16,
    /// Percent of nonces rejected as `badNonce`.
    nonce_reject: u8,
    /// The CA of Pebble's own HTTPS certificate.
    https_ca: TestCa,
    /// That CA's root as a PEM file (`--acme-ca-root`).
    pub https_root: PathBuf,
}

impl Pebble {
    /// Starts the DNS server, then Pebble validating HTTP-01 on
    /// `http_port` and TLS-ALPN-01 on `tls_port` of 127.0.0.1, rejecting
    /// no nonce.
    ///
    /// (instant-acme retries a `badNonce` twice, so at Pebble's default
    /// 5 % an order of twenty requests fails now and then, and the relay's
    /// back-off (10 min) would outlast the test.)
    pub fn start(work: &Path, http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_rejecting(work, http_port, tls_port, 0)
    }

    /// [`Pebble::start`], rejecting `nonce_reject` % of nonces.
    pub fn start_rejecting(work: &Path, http_port: u16, tls_port: u16, nonce_reject: u8) -> Pebble {
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
        let ports = [acme_port, management_port];
        let pebble = spawn_pebble(work, &config_path, dns_port, ports, nonce_reject);
        Pebble {
            pebble,
            dns,
            work: work.to_owned(),
            config_path,
            dns_port,
            acme_port,
            management_port,
            nonce_reject,
            https_ca,
            https_root,
        }
    }

    /// Stops Pebble and starts it again on the same ports: same directory
    /// URL, but every account, order and root forgotten.
    pub fn restart(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let ports = [self.acme_port, self.management_port];
        self.pebble = spawn_pebble(
            &self.work,
            &self.config_path,
            self.dns_port,
            ports,
            self.nonce_reject,
        );
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
        let socket = TcpStream::connect(loopback(self.management_port)).unwrap();
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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Pebble with real validation, fast, rejecting `nonce_reject` % of
/// nonces, once it listens on `ports` (ACME, management).
fn spawn_pebble(
    work: &Path,
    config: &Path,
    dns_port: u16,
    ports: [u16; 2],
    nonce_reject: u8,
) -> Child {
    let dns = format!("127.0.0.1:{dns_port}");
    let args = ["-config", config.to_str().unwrap(), "-dnsserver", &dns];
    let reject = nonce_reject.to_string();
    let env = [
        ("PEBBLE_VA_NOSLEEP", "1"),
        ("PEBBLE_WFE_NONCEREJECT", reject.as_str()),
    ];
    let mut pebble = spawn(work, "pebble", &args, &env);
    wait_listening(loopback(ports[0]), "pebble", Some(&mut pebble));
    wait_listening(loopback(ports[1]), "pebble management", Some(&mut pebble));
    pebble
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
    let management = loopback(management_port);
    wait_listening(management, "pebble-challtestsrv", Some(&mut dns));
    (dns, dns_port)
}

/// Runs `program`; its output goes to `<work>/<program>.log`.
fn spawn(work: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(program);
    command.args(args).env_remove("PEBBLE_VA_ALWAYS_VALID");
    command.envs(env.iter().copied());
    let log = work.join(format!("{program}.log"));
    let missing = "install the Debian package pebble (.ci/run does)";
    spawn_to_log(command, &log, missing)
}
