//! The scrape: a copy of the loop's integers becomes a `prometheus-client`
//! [`Collector`], registered in a fresh [`Registry`] and encoded by the
//! client's Prometheus text encoder (format 0.0.4, like the Go relay's
//! `promhttp` handler). The client names and types every family, appends
//! `_total` to counters and renders histograms cumulatively with `+Inf`.
//!
//! Why a collector rather than the client's `Counter` and `Family` types:
//! those are atomics meant to be shared between threads; the relay counts
//! in one thread, so it keeps plain integers and hands their values over
//! once per scrape. The registry lives only for that scrape.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{
    HttpRefusal, Metrics, ProcessStats, DIRECTIONS, ENDPOINTS, PUSH_OUTCOMES, REGISTER_FAILURES,
    UPGRADE_OUTCOMES,
};

/// Encodes `metrics`, the two gauges and `process` in the text format.
pub(super) fn render(
    metrics: &Metrics,
    binaries: usize,
    phones: usize,
    process: Option<&ProcessStats>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        metrics: metrics.clone(),
        binaries: binaries as u64,
        phones: phones as u64,
        process: process.cloned(),
    }));
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Everything one scrape exposes, copied out of the loop.
#[derive(Debug)]
struct Scrape {
    metrics: Metrics,
    binaries: u64,
    phones: u64,
    process: Option<ProcessStats>,
}

impl Collector for Scrape {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        self.encode_connections(&mut out)?;
        self.encode_forwarding(&mut out)?;
        self.encode_registrations(&mut out)?;
        self.encode_refusals(&mut out)?;
        self.encode_liveness(&mut out)?;
        if let Some(process) = &self.process {
            encode_process(&mut out, process)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_connections(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            out,
            "pyrycode_relay_connected_binaries",
            "Binaries connected and holding a server-id (a slot in grace is not counted).",
            self.binaries,
        )?;
        gauge(
            out,
            "pyrycode_relay_connected_phones",
            "Phones connected to a server-id.",
            self.phones,
        )
    }

    fn encode_forwarding(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        let m = &self.metrics;
        let frames = [m.frames_phone_to_binary, m.frames_binary_to_phone];
        let bytes = [m.bytes_phone_to_binary, m.bytes_binary_to_phone];
        let by_direction = |values: [u64; 2]| {
            DIRECTIONS
                .iter()
                .zip(values)
                .map(|(&direction, value)| (vec![("direction", direction)], value))
        };
        counter_family(
            out,
            "pyrycode_relay_frames_forwarded",
            "Frames forwarded, by direction.",
            by_direction(frames),
        )?;
        counter_family(
            out,
            "pyrycode_relay_bytes_forwarded",
            "Payload bytes of the forwarded frames (without envelope and WebSocket headers), by direction.",
            by_direction(bytes),
        )?;
        let mut latency = out.encode_descriptor(
            "pyrycode_relay_frame_latency_seconds",
            "Time a frame spends inside the relay, from the read that completed it to the write that finished sending it.",
            None,
            MetricType::Histogram,
        )?;
        for (direction, histogram) in DIRECTIONS.iter().zip(&m.frame_latency) {
            let labels = [("direction", *direction)];
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    histogram.sum_seconds(),
                    histogram.count(),
                    &histogram.buckets(),
                    None,
                )?;
        }
        counter(
            out,
            "pyrycode_relay_envelopes_dropped",
            "Binary envelopes dropped: malformed, unknown conn_id, or a phone that cannot take the frame.",
            m.envelopes_dropped,
        )?;
        counter(
            out,
            "pyrycode_relay_phone_messages_dropped",
            "Phone messages dropped because their binary was in its grace period.",
            m.phone_messages_dropped,
        )?;
        counter(
            out,
            "pyrycode_relay_backpressure_pauses",
            "Times a binary's output queue passed high water and its phones stopped being read.",
            m.backpressure_pauses,
        )?;
        counter(
            out,
            "pyrycode_relay_phone_backlog_full_closes",
            "Phones closed 1011 \"phone backlog full\".",
            m.phone_backlog_full_closes,
        )
    }

    fn encode_registrations(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        let m = &self.metrics;
        let upgrades = ENDPOINTS.iter().enumerate().flat_map(|(e, &endpoint)| {
            UPGRADE_OUTCOMES
                .iter()
                .enumerate()
                .map(move |(o, &outcome)| {
                    (
                        vec![("endpoint", endpoint), ("outcome", outcome)],
                        m.upgrades[e][o],
                    )
                })
        });
        counter_family(
            out,
            "pyrycode_relay_ws_upgrade_attempts",
            "WebSocket upgrade attempts, by endpoint and outcome.",
            upgrades,
        )?;
        counter_family(
            out,
            "pyrycode_relay_register_failures",
            "Registrations refused, by kind.",
            labelled("kind", &REGISTER_FAILURES, &m.register_failures),
        )?;
        counter_family(
            out,
            "pyrycode_relay_push_wakes",
            "push_wake requests, by outcome.",
            labelled("outcome", &PUSH_OUTCOMES, &m.push_wakes),
        )?;
        counter(
            out,
            "pyrycode_relay_grace_expiries",
            "Grace periods that ended without the binary coming back.",
            m.grace_expiries,
        )
    }

    fn encode_refusals(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        let statuses: Vec<String> = HttpRefusal::ALL
            .iter()
            .map(|refusal| refusal.status().to_string())
            .collect();
        let refusals = HttpRefusal::ALL
            .iter()
            .zip(&statuses)
            .map(|(refusal, status)| {
                (
                    vec![("reason", refusal.reason()), ("status", status.as_str())],
                    self.metrics.http_refusals[*refusal as usize],
                )
            });
        counter_family(
            out,
            "pyrycode_relay_http_refusals",
            "Requests answered with an HTTP error instead of a 101, by reason and status.",
            refusals,
        )
    }

    fn encode_liveness(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        counter_family(
            out,
            "pyrycode_relay_heartbeat_timeouts",
            "Connections closed 1011 \"heartbeat timeout\", by endpoint.",
            labelled("endpoint", &ENDPOINTS, &self.metrics.heartbeat_timeouts),
        )
    }
}

fn encode_process(out: &mut DescriptorEncoder, process: &ProcessStats) -> fmt::Result {
    let cpu = ConstCounter::new(process.cpu_seconds);
    cpu.encode(out.encode_descriptor(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        None,
        cpu.metric_type(),
    )?)?;
    gauge(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        process.resident_bytes,
    )?;
    gauge(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        process.virtual_bytes,
    )?;
    gauge(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        process.start_time_seconds,
    )?;
    if let Some(open) = process.open_fds {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            open,
        )?;
    }
    if let Some(max) = process.max_fds {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max,
        )?;
    }
    Ok(())
}

/// `(labels, value)` rows of a one-label family.
fn labelled<'a>(
    key: &'a str,
    names: &'a [&'a str],
    values: &'a [u64],
) -> impl Iterator<Item = (Vec<(&'a str, &'a str)>, u64)> + 'a {
    names
        .iter()
        .zip(values)
        .map(move |(&name, &value)| (vec![(key, name)], value))
}

/// A counter without labels; the encoder appends `_total` to `name`.
fn counter(out: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family: one series per `(labels, value)` row.
fn counter_family<'a>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> fmt::Result {
    let mut family = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge<N>(out: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)
}
