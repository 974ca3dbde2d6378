//! Runtime configuration: every limit and deadline of SPEC §6, §7 and §10,
//! with the defaults the SPEC gives, plus the parsers for the human forms
//! the flags take (`30s`, `500ms`, `256KiB`).

use std::net::SocketAddr;
use std::time::Duration;

/// Size of the relay's one shared read buffer: every read of a socket
/// lands there first, so one read takes at most this many bytes.
pub const READ_CHUNK: usize = 64 * 1024;

/// Everything the relay loop needs to know that is not a socket.
#[derive(Clone, Debug)]
pub struct Config {
    /// Plain-WebSocket listener (`--insecure-listen`).
    pub listen: SocketAddr,
    /// Version string reported by `/healthz`.
    pub version: String,
    /// How long a disconnected binary's slot stays reserved.
    pub grace_period: Duration,
    /// Interval between the relay's pings on every WebSocket.
    pub ping_interval: Duration,
    /// How long a ping may wait for its pong before the peer is closed 1011.
    pub pong_timeout: Duration,
    /// How long the holder of a server-id may take to answer a conflict probe.
    pub conflict_probe_timeout: Duration,
    /// How long a request head may take to arrive complete.
    pub handshake_timeout: Duration,
    /// How long one started WebSocket message may take to arrive complete.
    pub message_timeout: Duration,
    /// How long pending output may make no progress; also the close-handshake wait.
    pub write_timeout: Duration,
    /// How long shutdown waits for close handshakes.
    pub drain_timeout: Duration,
    /// Largest inbound WebSocket message (payload bytes).
    pub max_message_size: usize,
    /// Largest HTTP request head.
    pub max_header_size: usize,
    /// Phones per server-id.
    pub max_phones_per_server: usize,
    /// Live WebSocket connections, relay-wide.
    pub max_connections: usize,
    /// Live WebSocket connections per client IP.
    pub max_connections_per_ip: usize,
    /// Upgrade attempts a client IP may make at once before the rate applies.
    pub rate_limit_burst: u32,
    /// One more upgrade attempt per client IP is allowed every this long.
    pub rate_limit_interval: Duration,
    /// Queued output a phone may have before it is closed 1011.
    pub phone_backlog: usize,
    /// Queued output to a binary above which its phones are no longer read.
    pub binary_high_water: usize,
    /// Queued output to a binary below which its phones are read again.
    pub binary_low_water: usize,
    /// Use the rightmost `X-Forwarded-For` address as the client IP.
    pub trust_x_forwarded_for: bool,
    /// `--domain`: every request on a WebSocket listener must name this
    /// `Host` (port stripped, case ignored), or it gets 421.
    pub host: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            version: env!("CARGO_PKG_VERSION").to_string(),
            grace_period: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            conflict_probe_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_message_size: 256 * 1024,
            max_header_size: 8 * 1024,
            max_phones_per_server: 16,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            rate_limit_burst: 20,
            rate_limit_interval: Duration::from_secs(6),
            phone_backlog: 1024 * 1024,
            binary_high_water: 1024 * 1024,
            binary_low_water: 256 * 1024,
            trust_x_forwarded_for: false,
            host: None,
        }
    }
}

impl Config {
    /// The longest output queue a connection may have and still be read:
    /// `max(phone_backlog, binary_high_water) + max_message_size + READ_CHUNK`
    /// (`L` in docs/SECURITY.md, "Worst-case memory").
    ///
    /// Ordinary traffic stays below it: a phone's queue is refused past
    /// `phone_backlog`, and a binary's stops at most one message past
    /// `binary_high_water` (its phones are no longer read). Only what a
    /// peer's own input makes the relay owe it (pongs) can go further, by
    /// what one read of [`READ_CHUNK`] bytes asks for. Past the limit the
    /// relay stops reading that connection until its queue drains: a peer
    /// that pings without reading its pongs holds a bounded queue, and the
    /// output-stall deadline (`write_timeout`) ends it.
    pub fn output_read_limit(&self) -> usize {
        self.phone_backlog.max(self.binary_high_water) + self.max_message_size + READ_CHUNK
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1m30s`, `1.5s`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 30s, 500ms, 2m)");
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parses `256KiB`, `1MiB`, `8KB`, `4096`, `1GiB` into bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("invalid size {text:?} (expected e.g. 256KiB, 1MiB, 4096)");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: usize = text[..split].parse().map_err(|_| bad())?;
    let multiplier: usize = match text[split..].trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_flag_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn the_output_read_limit_follows_the_queue_limits() {
        let config = Config::default();
        assert_eq!(
            config.output_read_limit(),
            (1 << 20) + 256 * 1024 + READ_CHUNK
        );
        let binary_heavy = Config {
            binary_high_water: 4 << 20,
            max_message_size: 1024,
            ..Config::default()
        };
        assert_eq!(
            binary_heavy.output_read_limit(),
            (4 << 20) + 1024 + READ_CHUNK
        );
    }

    #[test]
    fn sizes_in_the_flag_forms() {
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("8KiB"), Ok(8192));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("12XiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
