//! Command-line flags (SPEC §10): the Go relay's names, every default of
//! the SPEC as a flag, durations like `30s` and sizes like `256KiB`, and
//! the rules that tie them together. [`Args::into_settings`] turns them,
//! with the [`Environment`], into [`Settings`]; a bad combination is one
//! line of reason (SPEC §9: exit code 2).
//!
//! The listener rules, as in the Go relay:
//!
//! - plain mode (no `--domain`, `--tls-cert` or `--tls-key`): one plain
//!   WebSocket listener on `--insecure-listen` (default `127.0.0.1:8080`);
//! - `--tls-cert` with `--tls-key`: TLS from those files on
//!   `--https-listen` (default `:443`); a `--domain` given too is only
//!   enforced as the `Host` (421);
//! - `--domain` alone: ACME; TLS on `--https-listen` and the HTTP-01
//!   challenge listener on `--http-listen` (default `:80`);
//! - an explicit `--insecure-listen` with a TLS flag, a flag that has no
//!   effect in the chosen mode, or two listeners on one port: refused.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::boot::{Environment, FCM_CREDENTIALS, PRODUCTION};
use crate::config::{parse_duration, parse_size, Config};
use crate::settings::{
    self, Acme, Listener, ListenerTls, Push, Role, Secret, Settings, Tls, FCM_ENDPOINT,
    LETS_ENCRYPT_DIRECTORY,
};

/// WebSocket relay between the pyry daemon and its phones.
#[derive(Parser, Debug)]
// A flag given twice takes its last value, as Go's flag package does.
#[command(name = "pyrycode-relay", version, about, args_override_self = true)]
pub struct Args {
    /// Plain-WebSocket listen address, IP:PORT or :PORT (behind a TLS
    /// terminator) [default: 127.0.0.1:8080 when no TLS flag is given].
    #[arg(long, value_name = "ADDR")]
    pub insecure_listen: Option<String>,
    /// Serve TLS for this domain: alone, certificates come from ACME; with
    /// --tls-cert/--tls-key only the Host header is enforced (421).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// ACME account and certificate cache [default: $HOME/.pyrycode-relay/certs].
    #[arg(long, value_name = "DIR")]
    pub cert_cache: Option<PathBuf>,
    /// TLS WebSocket listen address [default: :443].
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// ACME HTTP-01 challenge listen address [default: :80].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require a PROXY protocol v2 header before TLS on --https-listen.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub https_proxy_protocol: Option<bool>,
    /// Require a PROXY protocol v2 header on the plain listener.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub proxy_protocol: bool,
    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// ACME account contact e-mail.
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// PEM file of the CA of the ACME server's own HTTPS (a test CA).
    #[arg(long, value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,
    /// Loopback IP:PORT for /metrics; empty disables it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_listen: String,
    /// Take the client IP from the right-most X-Forwarded-For address.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub trust_x_forwarded_for: bool,
    /// Live WebSocket connections, relay-wide (HTTP 503 beyond).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Live WebSocket connections per client IP (HTTP 429 beyond).
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Phones per server-id (close 4429 beyond).
    #[arg(long, default_value_t = 16)]
    pub max_phones_per_server: usize,
    /// Upgrade attempts a client IP may make at once.
    #[arg(long, default_value_t = 20)]
    pub rate_limit_burst: u32,
    /// One more upgrade attempt per client IP every this long.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub rate_limit_interval: Duration,
    /// How long a disconnected binary's server-id stays reserved.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Interval of the relay's pings.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// How long a ping may wait for its pong (close 1011 after).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub pong_timeout: Duration,
    /// How long the holder of a server-id may take to answer a conflict probe.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub conflict_probe_timeout: Duration,
    /// How long a request head may take to arrive.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// How long a started message may take to arrive.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub message_timeout: Duration,
    /// How long pending output may make no progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How long shutdown waits for close handshakes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Largest inbound message (close 1009 beyond).
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub max_message_size: usize,
    /// Largest request head (HTTP 431 beyond).
    #[arg(long, default_value = "8KiB", value_parser = parse_size)]
    pub max_header_size: usize,
    /// Output a phone may have queued (close 1011 beyond).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub phone_backlog: usize,
    /// Output queued to a binary above which its phones are not read.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub binary_high_water: usize,
    /// Output queued to a binary below which its phones are read again.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub binary_low_water: usize,
    /// Firebase project id for push wakes.
    #[arg(long, value_name = "ID")]
    pub fcm_project: Option<String>,
    /// FCM API base URL; http:// only to a loopback IP [default: https://fcm.googleapis.com].
    #[arg(long, value_name = "URL")]
    pub fcm_endpoint: Option<String>,
    /// Relay time advances only when a test fixture says so. Never in production.
    #[arg(long)]
    pub manual_clock: bool,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// Accepts Go-style single-dash long flags (`-grace-period 5s`) too.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| match arg.to_str() {
            Some(text)
                if i > 0 && text.len() > 2 && text.starts_with('-') && !text.starts_with("--") =>
            {
                OsString::from(format!("-{text}"))
            }
            _ => arg,
        })
        .collect()
}

/// Where the WebSocket listener's certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Files,
    Acme,
}

impl Args {
    /// Checks the flags and the environment together and builds the
    /// settings. The order is the Go relay's: flags, then the environment
    /// switches, then what production mode forbids.
    pub fn into_settings(self, env: &Environment) -> Result<Settings, String> {
        let metrics_listen = self.metrics_address()?;
        self.check_limits()?;
        let mode = self.mode()?;
        let (listeners, tls, host) = self.listeners(mode, env)?;
        check_overlaps(&listeners, metrics_listen)?;
        let push = self.push(env)?;
        let production = env.check()?;
        self.check_production(production, &listeners)?;
        if self.manual_clock && metrics_listen.is_none() {
            return Err(
                "--manual-clock needs --metrics-listen: relay time is moved by POST /clock/advance on it"
                    .into(),
            );
        }
        let config = Config {
            listen: listeners[0].addr,
            host: host.clone(),
            ..self.config()
        };
        Ok(Settings {
            config,
            listeners,
            tls,
            host,
            metrics_listen,
            push,
            manual_clock: self.manual_clock,
            production,
            log_level: self.log_level,
        })
    }

    /// `--metrics-listen`: empty disables it.
    fn metrics_address(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_listen.as_str() {
            "" => Ok(None),
            // With a manual clock the listener is a test's control endpoint:
            // port 0 takes a free port, and the start-up line names it.
            text if self.manual_clock => settings::parse_loopback_addr(text).map(Some),
            text => settings::parse_metrics_addr(text).map(Some),
        }
    }

    /// Every limit and deadline is positive (SPEC §7); low water is below
    /// high water.
    fn check_limits(&self) -> Result<(), String> {
        let counts = [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            ("--max-phones-per-server", self.max_phones_per_server),
            ("--rate-limit-burst", self.rate_limit_burst as usize),
            ("--max-message-size", self.max_message_size),
            ("--max-header-size", self.max_header_size),
            ("--phone-backlog", self.phone_backlog),
            ("--binary-high-water", self.binary_high_water),
            ("--binary-low-water", self.binary_low_water),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{flag} must be positive: 0 is not a limit"));
        }
        let durations = [
            ("--rate-limit-interval", self.rate_limit_interval),
            ("--grace-period", self.grace_period),
            ("--ping-interval", self.ping_interval),
            ("--pong-timeout", self.pong_timeout),
            ("--conflict-probe-timeout", self.conflict_probe_timeout),
            ("--handshake-timeout", self.handshake_timeout),
            ("--message-timeout", self.message_timeout),
            ("--write-timeout", self.write_timeout),
            ("--drain-timeout", self.drain_timeout),
        ];
        if let Some((flag, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{flag} must be above zero"));
        }
        if self.binary_low_water >= self.binary_high_water {
            return Err(format!(
                "--binary-low-water ({}) must be below --binary-high-water ({})",
                self.binary_low_water, self.binary_high_water
            ));
        }
        Ok(())
    }

    /// The TLS mode the flags ask for, once no flag contradicts it.
    fn mode(&self) -> Result<Mode, String> {
        self.refuse_insecure_with_tls()?;
        let mode = match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Mode::Files,
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
            (None, None) if self.domain.is_some() => Mode::Acme,
            (None, None) => Mode::Plain,
        };
        self.refuse_flags_without_effect(mode)?;
        Ok(mode)
    }

    /// An explicit `--insecure-listen` means plain mode: a flag of the
    /// relay's own TLS beside it is a contradiction, not a choice.
    fn refuse_insecure_with_tls(&self) -> Result<(), String> {
        if self.insecure_listen.is_none() {
            return Ok(());
        }
        let tls_flags = [
            ("--domain", self.domain.is_some()),
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--https-listen", self.https_listen.is_some()),
            ("--http-listen", self.http_listen.is_some()),
            (
                "--https-proxy-protocol",
                self.https_proxy_protocol.is_some(),
            ),
        ];
        match tls_flags.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(format!(
                "--insecure-listen cannot be combined with {flag}: --insecure-listen serves plain WebSocket behind a TLS terminator, {flag} configures the relay's own TLS"
            )),
            None => Ok(()),
        }
    }

    /// Flags that would be silently ignored in `mode` are refused.
    fn refuse_flags_without_effect(&self, mode: Mode) -> Result<(), String> {
        let acme_flags = [
            ("--cert-cache", self.cert_cache.is_some()),
            ("--acme-directory", self.acme_directory.is_some()),
            ("--acme-email", self.acme_email.is_some()),
            ("--acme-ca-root", self.acme_ca_root.is_some()),
        ];
        let acme_flag = acme_flags.iter().find(|(_, given)| *given).map(|f| f.0);
        match mode {
            Mode::Plain => {
                let tls_flags = [
                    ("--https-listen", self.https_listen.is_some()),
                    ("--http-listen", self.http_listen.is_some()),
                    (
                        "--https-proxy-protocol",
                        self.https_proxy_protocol.is_some(),
                    ),
                ];
                if let Some((flag, _)) = tls_flags.iter().find(|(_, given)| *given) {
                    return Err(format!(
                        "{flag} needs TLS: give --domain (ACME) or --tls-cert and --tls-key"
                    ));
                }
                if let Some(flag) = acme_flag {
                    return Err(format!("{flag} configures ACME, which needs --domain"));
                }
            }
            Mode::Files => {
                if self.http_listen.is_some() {
                    return Err("--http-listen serves ACME HTTP-01 challenges; with --tls-cert there is no ACME".into());
                }
                if let Some(flag) = acme_flag {
                    return Err(format!(
                        "{flag} configures ACME, which --tls-cert turns off"
                    ));
                }
            }
            Mode::Acme => {}
        }
        if mode != Mode::Plain && self.proxy_protocol {
            return Err(
                "--proxy-protocol is for the plain listener; with TLS use --https-proxy-protocol"
                    .into(),
            );
        }
        Ok(())
    }

    /// The listeners of `mode`, where certificates come from, and the
    /// enforced `Host`.
    fn listeners(
        &self,
        mode: Mode,
        env: &Environment,
    ) -> Result<(Vec<Listener>, Tls, Option<String>), String> {
        let host = self
            .domain
            .as_deref()
            .map(settings::parse_domain)
            .transpose()?;
        let plain = |addr| Listener {
            addr,
            tls: ListenerTls::None,
            proxy_protocol: false,
            role: Role::WebSocket,
        };
        let https = |tls| -> Result<Listener, String> {
            let text = self.https_listen.as_deref().unwrap_or(":443");
            Ok(Listener {
                addr: settings::parse_listen_addr("--https-listen", text)?,
                tls,
                proxy_protocol: self.https_proxy_protocol == Some(true),
                role: Role::WebSocket,
            })
        };
        Ok(match mode {
            Mode::Plain => {
                let text = self.insecure_listen.as_deref().unwrap_or("127.0.0.1:8080");
                let addr = settings::parse_listen_addr("--insecure-listen", text)?;
                let listener = Listener {
                    proxy_protocol: self.proxy_protocol,
                    ..plain(addr)
                };
                (vec![listener], Tls::None, None)
            }
            Mode::Files => {
                let (cert, key) = (self.tls_cert.clone(), self.tls_key.clone());
                let tls = Tls::Files {
                    cert: cert.expect("files mode has a cert"),
                    key: key.expect("files mode has a key"),
                };
                (vec![https(ListenerTls::StaticFiles)?], tls, host)
            }
            Mode::Acme => {
                let text = self.http_listen.as_deref().unwrap_or(":80");
                let challenges = Listener {
                    role: Role::AcmeHttp01,
                    ..plain(settings::parse_listen_addr("--http-listen", text)?)
                };
                let domain = host.clone().expect("ACME mode has a domain");
                let tls = Tls::Acme(self.acme(domain, env)?);
                (vec![https(ListenerTls::Acme)?, challenges], tls, host)
            }
        })
    }

    fn acme(&self, domain: String, env: &Environment) -> Result<Acme, String> {
        let directory = self
            .acme_directory
            .as_deref()
            .unwrap_or(LETS_ENCRYPT_DIRECTORY);
        if self.acme_email.as_deref().is_some_and(|e| !e.contains('@')) {
            return Err("--acme-email: not an e-mail address".into());
        }
        Ok(Acme {
            domain,
            cache_dir: self.cert_cache.clone().unwrap_or_else(|| {
                let home = env.home.clone().map(PathBuf::from).unwrap_or_default();
                home.join(".pyrycode-relay/certs")
            }),
            directory_url: settings::parse_service_url("--acme-directory", directory)?,
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
        })
    }

    /// `--fcm-*` and the credentials in the environment.
    fn push(&self, env: &Environment) -> Result<Push, String> {
        if self
            .fcm_project
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err("--fcm-project is empty".into());
        }
        let endpoint = self.fcm_endpoint.as_deref().unwrap_or(FCM_ENDPOINT);
        let credentials = match &env.fcm_credentials {
            None => None,
            Some(value) => match value.to_str() {
                Some(text) if !text.trim().is_empty() => Some(Secret::new(text.to_string())),
                Some(_) => return Err(format!("{FCM_CREDENTIALS} is set but empty")),
                None => return Err(format!("{FCM_CREDENTIALS} is not UTF-8")),
            },
        };
        Ok(Push {
            project: self.fcm_project.clone(),
            endpoint: settings::parse_service_url("--fcm-endpoint", endpoint)?,
            credentials,
        })
    }

    /// Production mode serves TLS only and runs on the system clock.
    fn check_production(&self, production: bool, listeners: &[Listener]) -> Result<(), String> {
        if !production {
            return Ok(());
        }
        let plain = listeners
            .iter()
            .find(|l| l.role == Role::WebSocket && l.tls == ListenerTls::None);
        if let Some(listener) = plain {
            let origin = match self.insecure_listen {
                Some(_) => "--insecure-listen",
                None => "plain mode, no --domain or --tls-cert",
            };
            return Err(format!(
                "{PRODUCTION}=1 refuses plain WebSocket on {} ({origin}): serve TLS with --domain or --tls-cert/--tls-key, or unset {PRODUCTION}",
                listener.addr
            ));
        }
        if self.manual_clock {
            return Err(format!(
                "--manual-clock is for tests; {PRODUCTION}=1 refuses it"
            ));
        }
        Ok(())
    }

    /// The loop's limits and deadlines (its listen address is set apart).
    fn config(&self) -> Config {
        Config {
            grace_period: self.grace_period,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            conflict_probe_timeout: self.conflict_probe_timeout,
            handshake_timeout: self.handshake_timeout,
            message_timeout: self.message_timeout,
            write_timeout: self.write_timeout,
            drain_timeout: self.drain_timeout,
            max_message_size: self.max_message_size,
            max_header_size: self.max_header_size,
            max_phones_per_server: self.max_phones_per_server,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            rate_limit_burst: self.rate_limit_burst,
            rate_limit_interval: self.rate_limit_interval,
            phone_backlog: self.phone_backlog,
            binary_high_water: self.binary_high_water,
            binary_low_water: self.binary_low_water,
            trust_x_forwarded_for: self.trust_x_forwarded_for,
            ..Config::default()
        }
    }
}

/// Two sockets on one port, where one of them takes every address or both
/// take the same one, cannot both be bound. Port 0 (any free port) never
/// clashes.
fn check_overlaps(listeners: &[Listener], metrics: Option<SocketAddr>) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).chain(metrics).collect();
    for (i, a) in addrs.iter().enumerate() {
        for b in &addrs[i + 1..] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() != 0 && a.port() == b.port() && overlap {
                return Err(format!("two listeners on one port: {a} and {b}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
