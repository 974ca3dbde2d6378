//! What the process is asked to run, once the flags and the environment
//! have been checked: the loop's [`Config`], the listeners to open (each
//! with its address, TLS mode, PROXY protocol and role), where TLS
//! certificates come from, the `/metrics` address, push and clock options.
//! `cli` builds it; `main` (and the edge, push and fixture code) read it.
//!
//! Also here: the parsers for the address and URL forms the flags take.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::config::Config;

/// Let's Encrypt's production ACME directory, `--acme-directory`'s default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The FCM HTTP v1 API host, `--fcm-endpoint`'s default.
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// Everything `main` needs to start the relay.
#[derive(Debug)]
pub struct Settings {
    /// The loop's limits and deadlines. `config.listen` is the address of
    /// the first WebSocket listener (the only one in plain mode).
    pub config: Config,
    /// The listeners to open, WebSocket first.
    pub listeners: Vec<Listener>,
    /// Where certificates come from (none in plain mode).
    pub tls: Tls,
    /// The `Host` the WebSocket listener answers (others get 421): the
    /// `--domain`, in either TLS mode.
    pub host: Option<String>,
    /// Loopback address of `/metrics`; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// FCM push options.
    pub push: Push,
    /// `--manual-clock`: relay time comes from a clock the test fixture
    /// drives, not from the system.
    pub manual_clock: bool,
    /// `PYRYCODE_RELAY_PRODUCTION=1`.
    pub production: bool,
    pub log_level: log::LevelFilter,
}

/// One listening socket to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// An IP literal and port; `[::]` for the Go form `:PORT` (every
    /// interface; on Linux the socket takes IPv4 too unless
    /// `net.ipv6.bindv6only` is set).
    pub addr: SocketAddr,
    /// What terminates TLS on this socket.
    pub tls: ListenerTls,
    /// Every connection starts with a PROXY protocol v2 header whose source
    /// address is the client IP (connections without one are refused).
    pub proxy_protocol: bool,
    /// What it serves.
    pub role: Role,
}

/// The TLS mode of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain TCP.
    None,
    /// TLS with the certificate and key files of [`Tls::Files`].
    StaticFiles,
    /// TLS with certificates obtained and renewed by ACME ([`Tls::Acme`]).
    Acme,
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `/v1/server`, `/v1/client` and `/healthz`.
    WebSocket,
    /// ACME HTTP-01 challenges (`/.well-known/acme-challenge/…`); 404 for
    /// anything else.
    AcmeHttp01,
}

/// Where the TLS certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain mode: no TLS anywhere.
    None,
    /// `--tls-cert` and `--tls-key` (PEM files).
    Files { cert: PathBuf, key: PathBuf },
    /// `--domain` alone: ACME.
    Acme(Acme),
}

/// The ACME client's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// The one name certificates are requested for.
    pub domain: String,
    /// `--cert-cache`: account key and certificates are kept here.
    pub cache_dir: PathBuf,
    /// `--acme-directory`: the CA's directory URL.
    pub directory_url: String,
    /// `--acme-email`: the account contact, if any.
    pub email: Option<String>,
    /// `--acme-ca-root`: a PEM file of the CA that signs the ACME server's
    /// own HTTPS certificate (a test CA such as Pebble); else the system's.
    pub ca_root: Option<PathBuf>,
}

/// FCM push options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// `--fcm-project`: the Firebase project id, if given.
    pub project: Option<String>,
    /// `--fcm-endpoint`: base URL of the FCM API (no trailing slash).
    pub endpoint: String,
    /// `PYRYCODE_RELAY_FCM_CREDENTIALS`: the service-account JSON; push is
    /// off without it.
    pub credentials: Option<Secret>,
}

/// A credential: kept as given, never printed (`Debug` shows its length).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The credential itself, for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Settings {
    /// The WebSocket listeners.
    pub fn websocket_listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter().filter(|l| l.role == Role::WebSocket)
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or the Go form
/// `:PORT` for every interface. Host names are refused: a name resolves at
/// start and could resolve elsewhere later.
pub fn parse_listen_addr(flag: &str, text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{flag}: {text:?} has no valid port"))?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    text.parse().map_err(|_| {
        format!(
            "{flag}: {text:?} is not IP:PORT, [IPv6]:PORT or :PORT (host names are not accepted)"
        )
    })
}

/// Parses `--metrics-listen`: a loopback IP literal with a non-zero port.
/// `localhost` is refused like every host name: what it resolves to at
/// start is not necessarily what it resolves to later.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_loopback_addr(text)?;
    if addr.port() == 0 {
        return Err(format!(
            "--metrics-listen: {text:?} has port 0; Prometheus needs a fixed port"
        ));
    }
    Ok(addr)
}

/// `--metrics-listen` as a loopback IP literal with a port, port 0
/// included (a test's control endpoint under `--manual-clock`).
pub fn parse_loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let bad = |why: &str| format!("--metrics-listen: {text:?} {why}");
    let addr: SocketAddr = text.parse().map_err(|_| {
        bad("is not a loopback IP literal with a port (e.g. 127.0.0.1:9090 or [::1]:9090; host names such as localhost are refused)")
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad("is not a loopback address"));
    }
    Ok(addr)
}

/// A checked `https://` URL, or `http://` to a loopback IP literal (a test
/// server on this machine). Returns it without a trailing slash.
pub fn parse_service_url(flag: &str, text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{flag}: {text:?} {why}");
    let (secure, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("is not an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(bad("has no valid host"));
    }
    if !secure && !is_loopback_authority(authority) {
        return Err(bad(
            "is plain http:// to a host that is not a loopback IP literal; use https://",
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// `127.0.0.1`, `127.0.0.1:4000`, `[::1]`, `[::1]:4000`.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A DNS name for `--domain`: 1–253 bytes of dot-separated labels of
/// letters, digits and inner hyphens, each 1–63 bytes. Returned lowercase.
pub fn parse_domain(text: &str) -> Result<String, String> {
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "--domain: {text:?} is not a domain name (no scheme, port or path)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_the_go_forms() {
        let parse = |text| parse_listen_addr("--https-listen", text);
        assert_eq!(parse(":443"), Ok("[::]:443".parse().unwrap()));
        assert_eq!(parse("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
        assert_eq!(parse("[::1]:8443"), Ok("[::1]:8443".parse().unwrap()));
        assert_eq!(parse("127.0.0.1:0"), Ok("127.0.0.1:0".parse().unwrap()));
        for bad in [
            "",
            ":",
            ":https",
            "localhost:80",
            "example.com:443",
            "443",
            ":70000",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with("--https-listen: "), "{err}");
        }
    }

    #[test]
    fn metrics_addresses_are_loopback_literals_with_a_port() {
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9090"),
            Ok("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9090"),
            Ok("[::1]:9090".parse().unwrap())
        );
        assert!(parse_metrics_addr("127.3.2.1:9090").is_ok());
        for bad in [
            "localhost:9090",
            "0.0.0.0:9090",
            ":9090",
            "10.0.0.1:9090",
            "127.0.0.1",
            "127.0.0.1:0",
        ] {
            assert!(parse_metrics_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_urls_are_https_or_loopback_http() {
        let parse = |text| parse_service_url("--fcm-endpoint", text);
        assert_eq!(
            parse("https://fcm.googleapis.com/"),
            Ok("https://fcm.googleapis.com".into())
        );
        assert!(parse("http://127.0.0.1:4000").is_ok());
        assert!(parse("http://[::1]:4000/v1").is_ok());
        assert!(parse("https://10.0.0.1:14000/dir").is_ok());
        for bad in [
            "http://fcm.googleapis.com",
            "http://localhost:4000",
            "http://10.0.0.1",
            "ftp://x",
            "https://",
            "https:///path",
            "fcm.googleapis.com",
            "http://user@127.0.0.1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_dns_names() {
        assert_eq!(
            parse_domain("Relay.Example.COM"),
            Ok("relay.example.com".into())
        );
        assert_eq!(
            parse_domain("relay.example.com."),
            Ok("relay.example.com".into())
        );
        assert!(parse_domain("localhost").is_ok());
        for bad in [
            "",
            "https://relay.example.com",
            "relay.example.com:443",
            "relay..example.com",
            "-relay.example.com",
            "*.example.com",
            "relay example.com",
        ] {
            assert!(parse_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_is_never_printed() {
        let secret = Secret::new("{\"private_key\":\"xyz\"}".into());
        assert_eq!(format!("{secret:?}"), "Secret(21 bytes)");
        assert_eq!(secret.expose(), "{\"private_key\":\"xyz\"}");
    }
}
