//! The relay's metrics (SPEC §10): named and labelled like the Go relay's,
//! plus what the Go relay lacks (refusals by reason, bytes by direction,
//! backpressure pauses, backlog-full closes, heartbeat timeouts, the time a
//! frame spends inside the relay) and the standard `process_*` metrics.
//!
//! Counting is plain integer arithmetic on [`Metrics`], a struct the event
//! loop owns: no atomics, no locks, no allocation per frame. Only a scrape
//! touches the Prometheus client: [`Metrics::render`] copies the integers
//! into a `prometheus-client` registry (see `exposition`) together with the
//! process figures read from `/proc/self` at that moment, and encodes the
//! Prometheus text format (version 0.0.4, the Go relay's).
//!
//! No server-id, conn_id, IP or token is ever a label: every label value
//! comes from the fixed sets below, and every combination is exposed from
//! the start at 0.

mod exposition;
mod histogram;
mod process;

pub use histogram::{LatencyHistogram, LATENCY_BOUNDS_SECONDS};
pub use process::ProcessStats;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `endpoint` label values (upgrade attempts, heartbeat timeouts).
pub const ENDPOINTS: [&str; 2] = ["server", "client"];
/// `outcome` label values of the upgrade counter (`reject_capacity`, the
/// 503 of the global cap, is ours).
pub const UPGRADE_OUTCOMES: [&str; 7] = [
    "accept",
    "reject_headers",
    "reject_409",
    "reject_404",
    "reject_429",
    "reject_rate_limit",
    "reject_capacity",
];
/// `kind` label values of the registration-failure counter.
pub const REGISTER_FAILURES: [&str; 4] =
    ["no_server", "server_in_use", "phones_at_cap", "ratelimit"];
/// `outcome` label values of the push counter.
pub const PUSH_OUTCOMES: [&str; 5] = [
    "sent",
    "unregistered",
    "send_failed",
    "token_fetch_failed",
    "dropped",
];
/// `direction` label values (frames, bytes, frame latency).
pub const DIRECTIONS: [&str; 2] = ["phone_to_binary", "binary_to_phone"];

/// Outcome of one upgrade attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeOutcome {
    Accept,
    RejectHeaders,
    Reject409,
    Reject404,
    Reject429,
    RejectRateLimit,
    RejectCapacity,
}

/// Kind of a registration failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterFailure {
    NoServer,
    ServerInUse,
    PhonesAtCap,
    RateLimit,
}

/// Outcome of one `push_wake` (the `outcome` label of
/// `pyrycode_relay_push_wakes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Sent,
    Unregistered,
    SendFailed,
    TokenFetchFailed,
    Dropped,
}

impl PushOutcome {
    /// The outcome whose label is `label` (one of [`PUSH_OUTCOMES`]).
    pub fn from_label(label: &str) -> Option<PushOutcome> {
        const ALL: [PushOutcome; 5] = [
            PushOutcome::Sent,
            PushOutcome::Unregistered,
            PushOutcome::SendFailed,
            PushOutcome::TokenFetchFailed,
            PushOutcome::Dropped,
        ];
        let index = PUSH_OUTCOMES.iter().position(|known| *known == label)?;
        Some(ALL[index])
    }
}

/// Which way a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    PhoneToBinary,
    BinaryToPhone,
}

/// Why a request was answered with an HTTP error instead of a 101 (the
/// `reason` and `status` labels of `pyrycode_relay_http_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRefusal {
    /// 503: `--max-connections` live connections already.
    MaxConnections,
    /// 429: the client IP's upgrade rate (`--rate-limit-*`).
    RateLimit,
    /// 429: the client IP's live connections (`--max-connections-per-ip`).
    PerIpConnections,
    /// 431: the request head is over `--max-header-size`.
    HeadTooLarge,
    /// 408: the request head did not arrive within `--handshake-timeout`.
    HandshakeTimeout,
    /// 400: the request head is not HTTP/1.1 that `httparse` accepts.
    MalformedHead,
    /// 400: a required pyrycode header is missing, or the server-id is bad.
    Headers,
    /// 400: not a valid WebSocket upgrade.
    BadUpgrade,
    /// 426: `Sec-WebSocket-Version` is not 13.
    BadVersion,
    /// 421: the `Host` is not the `--domain`.
    Misdirected,
}

impl HttpRefusal {
    /// Every refusal, in exposition order.
    pub const ALL: [HttpRefusal; 10] = [
        HttpRefusal::MaxConnections,
        HttpRefusal::RateLimit,
        HttpRefusal::PerIpConnections,
        HttpRefusal::HeadTooLarge,
        HttpRefusal::HandshakeTimeout,
        HttpRefusal::MalformedHead,
        HttpRefusal::Headers,
        HttpRefusal::BadUpgrade,
        HttpRefusal::BadVersion,
        HttpRefusal::Misdirected,
    ];

    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            HttpRefusal::MaxConnections => "max_connections",
            HttpRefusal::RateLimit => "rate_limit",
            HttpRefusal::PerIpConnections => "per_ip_connections",
            HttpRefusal::HeadTooLarge => "head_too_large",
            HttpRefusal::HandshakeTimeout => "handshake_timeout",
            HttpRefusal::MalformedHead => "malformed_head",
            HttpRefusal::Headers => "headers",
            HttpRefusal::BadUpgrade => "bad_upgrade",
            HttpRefusal::BadVersion => "bad_version",
            HttpRefusal::Misdirected => "misdirected",
        }
    }

    /// The HTTP status the relay answers with (the `status` label value).
    pub fn status(self) -> u16 {
        match self {
            HttpRefusal::MaxConnections => 503,
            HttpRefusal::RateLimit | HttpRefusal::PerIpConnections => 429,
            HttpRefusal::HeadTooLarge => 431,
            HttpRefusal::HandshakeTimeout => 408,
            HttpRefusal::MalformedHead | HttpRefusal::Headers | HttpRefusal::BadUpgrade => 400,
            HttpRefusal::BadVersion => 426,
            HttpRefusal::Misdirected => 421,
        }
    }
}

/// Every counter of the relay, as plain integers the loop owns. The two
/// connection gauges are the loop's own counts, passed to
/// [`Metrics::render`].
#[derive(Default, Debug, Clone)]
pub struct Metrics {
    /// Phone messages sent on to their binary.
    pub frames_phone_to_binary: u64,
    /// Frames delivered to a phone from its binary's envelopes.
    pub frames_binary_to_phone: u64,
    /// Bytes of the phones' messages sent on to their binary (the phone's
    /// payload, without the envelope and WebSocket headers).
    pub bytes_phone_to_binary: u64,
    /// Bytes of the `frame` values delivered to phones (the text message's
    /// payload, without WebSocket headers).
    pub bytes_binary_to_phone: u64,
    /// Grace windows that ended without a reclaim.
    pub grace_expiries: u64,
    /// Binary envelopes dropped (malformed, unknown conn_id, phone full).
    pub envelopes_dropped: u64,
    /// Phone messages dropped because their binary was in grace.
    pub phone_messages_dropped: u64,
    /// Times a binary's queue passed high water and its phones stopped
    /// being read.
    pub backpressure_pauses: u64,
    /// Phones closed 1011 "phone backlog full".
    pub phone_backlog_full_closes: u64,
    upgrades: [[u64; UPGRADE_OUTCOMES.len()]; ENDPOINTS.len()],
    register_failures: [u64; REGISTER_FAILURES.len()],
    push_wakes: [u64; PUSH_OUTCOMES.len()],
    http_refusals: [u64; HttpRefusal::ALL.len()],
    heartbeat_timeouts: [u64; ENDPOINTS.len()],
    frame_latency: [LatencyHistogram; DIRECTIONS.len()],
}

impl Metrics {
    /// Counts an upgrade attempt on `/v1/server` (`server`) or `/v1/client`.
    pub fn upgrade(&mut self, server: bool, outcome: UpgradeOutcome) {
        self.upgrades[usize::from(!server)][outcome as usize] += 1;
    }

    /// Counts a registration failure.
    pub fn register_failure(&mut self, kind: RegisterFailure) {
        self.register_failures[kind as usize] += 1;
    }

    /// Counts the outcome of one `push_wake`.
    pub fn push_wake(&mut self, outcome: PushOutcome) {
        self.push_wakes[outcome as usize] += 1;
    }

    /// Counts a push wake that was dropped (no push configured).
    pub fn push_dropped(&mut self) {
        self.push_wake(PushOutcome::Dropped);
    }

    /// Counts a request answered with an HTTP error status.
    pub fn http_refusal(&mut self, refusal: HttpRefusal) {
        self.http_refusals[refusal as usize] += 1;
    }

    /// Counts a connection closed 1011 "heartbeat timeout" (no pong in
    /// time, or a holder displaced after a silent conflict probe).
    pub fn heartbeat_timeout(&mut self, server: bool) {
        self.heartbeat_timeouts[usize::from(!server)] += 1;
    }

    /// Records how long one frame spent inside the relay: from the read
    /// that completed it to the write that finished sending it.
    pub fn frame_latency(&mut self, direction: Direction, elapsed: std::time::Duration) {
        self.frame_latency[direction as usize].observe(elapsed);
    }

    /// Every counter as plain numbers in a fixed order (histogram buckets
    /// and sums included), for the hand-over state (`src/handover`).
    pub fn export(&self) -> Vec<u64> {
        let mut values = vec![
            self.frames_phone_to_binary,
            self.frames_binary_to_phone,
            self.bytes_phone_to_binary,
            self.bytes_binary_to_phone,
            self.grace_expiries,
            self.envelopes_dropped,
            self.phone_messages_dropped,
            self.backpressure_pauses,
            self.phone_backlog_full_closes,
        ];
        values.extend(self.upgrades.iter().flatten());
        values.extend(self.register_failures);
        values.extend(self.push_wakes);
        values.extend(self.http_refusals);
        values.extend(self.heartbeat_timeouts);
        for histogram in &self.frame_latency {
            values.extend(histogram.export());
        }
        values
    }

    /// The counters [`Metrics::export`] gave; `None` if `values` is not
    /// exactly that many numbers.
    pub fn import(values: &[u64]) -> Option<Metrics> {
        let mut metrics = Metrics::default();
        if values.len() != metrics.export().len() {
            return None;
        }
        let mut next = values.iter().copied();
        let mut take = || next.next().unwrap_or_default();
        for field in [
            &mut metrics.frames_phone_to_binary,
            &mut metrics.frames_binary_to_phone,
            &mut metrics.bytes_phone_to_binary,
            &mut metrics.bytes_binary_to_phone,
            &mut metrics.grace_expiries,
            &mut metrics.envelopes_dropped,
            &mut metrics.phone_messages_dropped,
            &mut metrics.backpressure_pauses,
            &mut metrics.phone_backlog_full_closes,
        ] {
            *field = take();
        }
        let arrays = metrics.upgrades.iter_mut().flatten();
        let arrays = arrays
            .chain(metrics.register_failures.iter_mut())
            .chain(metrics.push_wakes.iter_mut())
            .chain(metrics.http_refusals.iter_mut())
            .chain(metrics.heartbeat_timeouts.iter_mut());
        for value in arrays {
            *value = take();
        }
        for histogram in &mut metrics.frame_latency {
            histogram.import(&mut take);
        }
        Some(metrics)
    }

    /// The Prometheus text exposition (format 0.0.4): every counter, the
    /// two connection gauges given here, and the process metrics read from
    /// `/proc/self` now (left out if `/proc` cannot be read).
    pub fn render(&self, binaries: usize, phones: usize) -> String {
        exposition::render(self, binaries, phones, ProcessStats::read().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_string()
    }

    #[test]
    fn every_counter_survives_export_and_import() {
        let mut metrics = Metrics {
            bytes_binary_to_phone: 5,
            ..Metrics::default()
        };
        metrics.upgrade(false, UpgradeOutcome::Reject429);
        metrics.http_refusal(HttpRefusal::HandshakeTimeout);
        metrics.frame_latency(Direction::BinaryToPhone, Duration::from_millis(3));
        let values = metrics.export();
        let back = Metrics::import(&values).expect("same length");
        assert_eq!(back.export(), values);
        // The process metrics are read at each scrape and move on their own.
        let relay_only = |text: String| -> Vec<String> {
            text.lines()
                .filter(|line| !line.contains("process_"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            relay_only(back.render(0, 0)),
            relay_only(metrics.render(0, 0))
        );
        assert!(Metrics::import(&values[1..]).is_none());
    }

    #[test]
    fn every_label_combination_is_exposed_from_the_start() {
        let text = Metrics::default().render(0, 0);
        for endpoint in ENDPOINTS {
            for outcome in UPGRADE_OUTCOMES {
                let series = format!("pyrycode_relay_ws_upgrade_attempts_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}");
                assert_eq!(value(&text, &series), "0");
            }
            let series =
                format!("pyrycode_relay_heartbeat_timeouts_total{{endpoint=\"{endpoint}\"}}");
            assert_eq!(value(&text, &series), "0");
        }
        for kind in REGISTER_FAILURES {
            let series = format!("pyrycode_relay_register_failures_total{{kind=\"{kind}\"}}");
            assert_eq!(value(&text, &series), "0");
        }
        for outcome in PUSH_OUTCOMES {
            let series = format!("pyrycode_relay_push_wakes_total{{outcome=\"{outcome}\"}}");
            assert_eq!(value(&text, &series), "0");
        }
        for direction in DIRECTIONS {
            for name in ["frames_forwarded_total", "bytes_forwarded_total"] {
                let series = format!("pyrycode_relay_{name}{{direction=\"{direction}\"}}");
                assert_eq!(value(&text, &series), "0");
            }
            let series =
                format!("pyrycode_relay_frame_latency_seconds_count{{direction=\"{direction}\"}}");
            assert_eq!(value(&text, &series), "0");
        }
        for refusal in HttpRefusal::ALL {
            let series = format!(
                "pyrycode_relay_http_refusals_total{{reason=\"{}\",status=\"{}\"}}",
                refusal.reason(),
                refusal.status()
            );
            assert_eq!(value(&text, &series), "0");
        }
    }

    #[test]
    fn counters_land_on_their_labels() {
        let mut metrics = Metrics::default();
        metrics.upgrade(false, UpgradeOutcome::Reject429);
        metrics.register_failure(RegisterFailure::PhonesAtCap);
        metrics.push_wake(PushOutcome::Unregistered);
        metrics.push_dropped();
        metrics.http_refusal(HttpRefusal::HeadTooLarge);
        metrics.heartbeat_timeout(true);
        metrics.backpressure_pauses = 3;
        metrics.phone_backlog_full_closes = 4;
        metrics.bytes_binary_to_phone = 1234;
        let text = metrics.render(1, 2);
        for (series, expected) in [
            ("pyrycode_relay_connected_binaries", "1"),
            ("pyrycode_relay_connected_phones", "2"),
            (
                "pyrycode_relay_ws_upgrade_attempts_total{endpoint=\"client\",outcome=\"reject_429\"}",
                "1",
            ),
            (
                "pyrycode_relay_ws_upgrade_attempts_total{endpoint=\"server\",outcome=\"reject_429\"}",
                "0",
            ),
            (
                "pyrycode_relay_register_failures_total{kind=\"phones_at_cap\"}",
                "1",
            ),
            (
                "pyrycode_relay_push_wakes_total{outcome=\"unregistered\"}",
                "1",
            ),
            ("pyrycode_relay_push_wakes_total{outcome=\"dropped\"}", "1"),
            (
                "pyrycode_relay_http_refusals_total{reason=\"head_too_large\",status=\"431\"}",
                "1",
            ),
            (
                "pyrycode_relay_heartbeat_timeouts_total{endpoint=\"server\"}",
                "1",
            ),
            ("pyrycode_relay_backpressure_pauses_total", "3"),
            ("pyrycode_relay_phone_backlog_full_closes_total", "4"),
            (
                "pyrycode_relay_bytes_forwarded_total{direction=\"binary_to_phone\"}",
                "1234",
            ),
        ] {
            assert_eq!(value(&text, series), expected, "{series}");
        }
    }

    #[test]
    fn frame_latency_is_a_cumulative_histogram_in_seconds() {
        let mut metrics = Metrics::default();
        metrics.frame_latency(Direction::PhoneToBinary, Duration::from_micros(30));
        metrics.frame_latency(Direction::PhoneToBinary, Duration::from_micros(100));
        metrics.frame_latency(Direction::PhoneToBinary, Duration::from_millis(3));
        metrics.frame_latency(Direction::PhoneToBinary, Duration::from_secs(60));
        let text = metrics.render(0, 0);
        let p2b = |suffix: &str, le: Option<&str>| {
            let labels = match le {
                Some(le) => format!("{{direction=\"phone_to_binary\",le=\"{le}\"}}"),
                None => "{direction=\"phone_to_binary\"}".to_string(),
            };
            value(
                &text,
                &format!("pyrycode_relay_frame_latency_seconds{suffix}{labels}"),
            )
        };
        assert_eq!(p2b("_bucket", Some("5e-05")), "1");
        assert_eq!(p2b("_bucket", Some("0.0001")), "2", "a bound is inclusive");
        assert_eq!(p2b("_bucket", Some("0.0025")), "2");
        assert_eq!(p2b("_bucket", Some("0.005")), "3");
        assert_eq!(p2b("_bucket", Some("10")), "3");
        assert_eq!(p2b("_bucket", Some("+Inf")), "4");
        assert_eq!(p2b("_count", None), "4");
        assert_eq!(p2b("_sum", None), "60.00313");
        assert_eq!(
            value(
                &text,
                "pyrycode_relay_frame_latency_seconds_count{direction=\"binary_to_phone\"}"
            ),
            "0"
        );
    }

    #[test]
    fn counters_and_gauges_are_typed_in_the_text_format() {
        let text = Metrics::default().render(0, 0);
        assert!(text.contains("# TYPE pyrycode_relay_connected_phones gauge\n"));
        assert!(text.contains("# TYPE pyrycode_relay_frames_forwarded_total counter\n"));
        assert!(text.contains("# TYPE pyrycode_relay_frame_latency_seconds histogram\n"));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 format has no EOF marker"
        );
    }
}
