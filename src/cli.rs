//! Command-line flags (SPEC §10): the Go relay's names, every default of
//! the SPEC as a flag, durations like `30s` and sizes like `256KiB`.
//! A bad flag or configuration is exit code 2 with a one-line reason.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::config::{parse_duration, parse_size, Config};

/// WebSocket relay between the pyry daemon and its phones.
#[derive(Parser, Debug)]
#[command(name = "pyrycode-relay", version, about)]
pub struct Args {
    /// Plain-WebSocket listen address (no TLS).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub insecure_listen: SocketAddr,
    /// Domain for ACME (alone) or Host enforcement (with cert files). Not built yet.
    #[arg(long)]
    pub domain: Option<String>,
    /// ACME certificate cache directory. Not built yet.
    #[arg(long)]
    pub cert_cache: Option<String>,
    /// HTTPS listen address. Not built yet.
    #[arg(long)]
    pub https_listen: Option<String>,
    /// HTTP listen address for ACME challenges. Not built yet.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// TLS certificate file. Not built yet.
    #[arg(long)]
    pub tls_cert: Option<String>,
    /// TLS key file. Not built yet.
    #[arg(long)]
    pub tls_key: Option<String>,
    /// Expect a PROXY protocol header on the HTTPS listener. Not built yet.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub https_proxy_protocol: bool,
    /// Loopback address for /metrics; empty disables it.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics_listen: String,
    /// Take the client IP from the rightmost X-Forwarded-For address.
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
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// For other projects' tests: relay time moves only when
    /// `POST /clock/advance?by=30s` on the metrics listener says so
    /// (docs/TESTING.md). Refused when PYRYCODE_RELAY_PRODUCTION is set.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub manual_clock: bool,
}

/// What `main` needs: the loop's configuration and the process settings.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: log::LevelFilter,
    /// Relay time comes from a manual clock moved through `/clock/advance`.
    pub manual_clock: bool,
}

impl Settings {
    /// `--manual-clock` is for tests: refused when the environment says
    /// this is production (`PYRYCODE_RELAY_PRODUCTION` set to anything but
    /// empty, `0` or `false`). `production` is that variable's value.
    pub fn refuse_test_features_in(&self, production: Option<&OsStr>) -> Result<(), String> {
        let production = production
            .map(|value| value.to_string_lossy().trim().to_ascii_lowercase())
            .is_some_and(|value| !matches!(value.as_str(), "" | "0" | "false"));
        if self.manual_clock && production {
            return Err(
                "--manual-clock: refused because PYRYCODE_RELAY_PRODUCTION is set (a manual clock is for tests only)"
                    .into(),
            );
        }
        Ok(())
    }
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

impl Args {
    /// TLS and ACME flags are refused rather than silently ignored.
    fn refuse_unbuilt_tls(&self) -> Result<(), String> {
        let tls_flags = [
            ("--domain", self.domain.is_some()),
            ("--cert-cache", self.cert_cache.is_some()),
            ("--https-listen", self.https_listen.is_some()),
            ("--http-listen", self.http_listen.is_some()),
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--https-proxy-protocol", self.https_proxy_protocol),
        ];
        match tls_flags.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(format!(
                "{flag}: TLS and ACME are not built into this version yet; serve plain WebSocket with --insecure-listen behind a TLS terminator"
            )),
            None => Ok(()),
        }
    }

    /// `--metrics-listen`: empty disables it; otherwise a loopback address.
    fn metrics_address(&self) -> Result<Option<SocketAddr>, String> {
        let text = self.metrics_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| format!("--metrics-listen: {text:?} is not an address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--metrics-listen: {addr} is not a loopback address"
            ));
        }
        Ok(Some(addr))
    }

    /// Checks the flags together and builds the settings.
    pub fn into_settings(self) -> Result<Settings, String> {
        self.refuse_unbuilt_tls()?;
        let metrics_listen = self.metrics_address()?;
        if self.manual_clock && metrics_listen.is_none() {
            return Err(
                "--manual-clock needs --metrics-listen: the clock moves through its /clock/advance endpoint"
                    .into(),
            );
        }
        if self.binary_low_water > self.binary_high_water {
            return Err("--binary-low-water must not exceed --binary-high-water".into());
        }
        if self.ping_interval.is_zero() || self.pong_timeout.is_zero() {
            return Err("--ping-interval and --pong-timeout must be above zero".into());
        }
        let config = Config {
            listen: self.insecure_listen,
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
        };
        Ok(Settings {
            config,
            metrics_listen,
            log_level: self.log_level,
            manual_clock: self.manual_clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let argv = normalize_args(
            std::iter::once("relay")
                .chain(args.iter().copied())
                .map(OsString::from),
        );
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .into_settings()
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let settings = settings(&[]).unwrap();
        let config = settings.config;
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.grace_period, Duration::from_secs(30));
        assert_eq!(config.max_message_size, 256 * 1024);
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(
            settings.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
    }

    #[test]
    fn go_style_flags_and_human_values() {
        let settings = settings(&[
            "-grace-period",
            "500ms",
            "--max-message-size=1MiB",
            "--trust-x-forwarded-for",
            "--metrics-listen",
            "",
        ])
        .unwrap();
        assert_eq!(settings.config.grace_period, Duration::from_millis(500));
        assert_eq!(settings.config.max_message_size, 1 << 20);
        assert!(settings.config.trust_x_forwarded_for);
        assert_eq!(settings.metrics_listen, None);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(settings(&["--grace-period", "soon"]).is_err());
        assert!(settings(&["--metrics-listen", "0.0.0.0:9090"]).is_err());
        assert!(settings(&["--tls-cert", "cert.pem"]).is_err());
        assert!(settings(&["--binary-low-water", "2MiB"]).is_err());
        assert!(settings(&["--no-such-flag"]).is_err());
        let no_control = settings(&["--manual-clock", "--metrics-listen", ""]).unwrap_err();
        assert!(no_control.contains("--metrics-listen"), "{no_control}");
    }

    #[test]
    fn a_manual_clock_is_refused_in_production() {
        let manual = settings(&["--manual-clock"]).unwrap();
        assert!(manual.manual_clock);
        assert!(!settings(&[]).unwrap().manual_clock);
        for production in ["1", "true", "yes"] {
            let refused = manual
                .refuse_test_features_in(Some(OsStr::new(production)))
                .unwrap_err();
            assert!(refused.contains("PYRYCODE_RELAY_PRODUCTION"), "{refused}");
        }
        for not_production in [None, Some(OsStr::new("")), Some(OsStr::new("0"))] {
            assert_eq!(manual.refuse_test_features_in(not_production), Ok(()));
        }
        let real = settings(&[]).unwrap();
        assert_eq!(real.refuse_test_features_in(Some(OsStr::new("1"))), Ok(()));
    }
}
