//! Results people can read: tables on stdout, relay/HAProxy ratios, the
//! targets of the benchmark issue (and of the TLS issue with `--tls`),
//! `--json` with every figure, and an SVG chart of latency percentiles
//! against offered load. A `--url` target has no proxy figures: its proxy
//! columns show `-`.

use std::path::Path;

use serde_json::{json, Value};

use crate::scenario::{fmt_count, Load, Measurement};
use crate::target::Kind;

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

/// A figure of the proxy's process, or `-` when it was not measured.
fn proxy_figure(m: &Measurement, text: String) -> String {
    if m.proxy_measured() {
        text
    } else {
        "-".into()
    }
}

/// Prints one measurement as soon as it is taken (one line).
pub fn progress(m: &Measurement) {
    let lat = match (m.scenario, m.latency, m.upgrade_latency) {
        ("churn", _, Some(p)) => format!(" upgrade p50 {:.0}µs p99 {:.0}µs", p.p50, p.p99),
        (_, Some(p), _) => format!(" p50 {:.0}µs p99 {:.0}µs", p.p50, p.p99),
        _ => String::new(),
    };
    let cpu = match m.scenario {
        "churn" => m
            .cpu_per_cycle()
            .map(|c| format!(" {c:.1} CPU µs/cycle"))
            .unwrap_or_default(),
        _ => m
            .cpu_per_msg()
            .map(|c| format!(" {c:.2} CPU µs/msg"))
            .unwrap_or_default(),
    };
    let mem = if m.scenario == "idle" {
        format!(" {} B/conn", opt(m.mem_per_conn(), 0))
    } else {
        String::new()
    };
    let errors = if m.errors.count > 0 {
        format!(
            " ERRORS {}: {}",
            m.errors.count,
            m.errors.samples.join("; ")
        )
    } else {
        String::new()
    };
    let rate = match m.scenario {
        "idle" => String::new(),
        "churn" => format!(" {} upgrades/s", fmt_count(m.throughput)),
        _ => format!(" {}/s", fmt_count(m.throughput)),
    };
    eprintln!(
        "  done: {} {} {}:{rate}{lat}{cpu}{mem}{errors}",
        m.scenario,
        m.target.name(),
        m.label
    );
}

/// The tables, ratios and target verdicts.
pub fn print(all: &[Measurement], header: &str) {
    println!();
    println!("{header}");
    let idle: Vec<&Measurement> = all.iter().filter(|m| m.scenario == "idle").collect();
    if !idle.is_empty() {
        println!();
        println!("## idle: resident memory grown per connection (VmRSS after connecting − before)");
        println!(
            "{:<8} {:>8} {:>9} {:>11} {:>11} {:>10} {:>12} {:>11} {:>7}",
            "target",
            "phones",
            "binaries",
            "RSS before",
            "RSS after",
            "VmHWM",
            "B/connection",
            "B/phone",
            "errors"
        );
        for m in &idle {
            println!(
                "{:<8} {:>8} {:>9} {:>10}M {:>10}M {:>9}M {:>12} {:>11} {:>7}",
                m.target.name(),
                m.phones,
                m.binaries,
                mib(m.rss_before),
                mib(m.rss_connected),
                mib(m.hwm_after),
                opt(m.mem_per_conn(), 0),
                opt(m.mem_per_phone(), 0),
                m.errors.count
            );
        }
    }
    for scenario in ["echo", "fanout"] {
        let rows: Vec<&Measurement> = all.iter().filter(|m| m.scenario == scenario).collect();
        if rows.is_empty() {
            continue;
        }
        println!();
        let unit = if scenario == "echo" {
            "echoes/s"
        } else {
            "pushes/s"
        };
        println!(
            "## {scenario}: phones × message bytes{}; latency in µs; CPU µs per forwarded message = proxy utime+stime / messages{}",
            if scenario == "fanout" { ", binary → phone" } else { ", round trip phone → binary → phone" },
            if scenario == "echo" { " (one echo = 2)" } else { "" }
        );
        println!(
            "{:<8} {:<30} {:>10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8} {:>6}",
            "target", "load", unit, "p50", "p90", "p99", "p99.9", "max", "CPU/msg", "(sched)", "proxy%", "gen%", "echo%", "RSS MiB", "errors"
        );
        for m in &rows {
            let p = m.latency;
            println!(
                "{:<8} {:<30} {:>10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6.1} {:>6} {:>8} {:>6}",
                m.target.name(),
                m.label,
                fmt_count(m.throughput),
                opt(p.map(|p| p.p50), 0),
                opt(p.map(|p| p.p90), 0),
                opt(p.map(|p| p.p99), 0),
                opt(p.map(|p| p.p999), 0),
                opt(p.map(|p| p.max), 0),
                opt(m.cpu_per_msg(), 2),
                opt(m.cpu_per_msg_sched(), 2),
                proxy_figure(m, format!("{:.1}", m.proxy_cpu_pct)),
                m.gen_cpu_pct,
                opt(m.echo_cpu_pct, 1),
                proxy_figure(m, mib(m.rss_after)),
                m.errors.count
            );
        }
    }
    let churn: Vec<&Measurement> = all.iter().filter(|m| m.scenario == "churn").collect();
    if !churn.is_empty() {
        println!();
        println!("## churn: phones connect, exchange one {} B message, close; upgrade latency = connect start → 101, µs", churn[0].size);
        println!(
            "{:<8} {:<14} {:>11} {:>7} {:>7} {:>7} {:>8} {:>8} {:>11} {:>8} {:>6} {:>6}",
            "target",
            "load",
            "upgrades/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "CPU/cycle",
            "proxy%",
            "gen%",
            "errors"
        );
        for m in &churn {
            let p = m.upgrade_latency;
            println!(
                "{:<8} {:<14} {:>11} {:>7} {:>7} {:>7} {:>8} {:>8} {:>11} {:>8} {:>6.1} {:>6}",
                m.target.name(),
                m.label,
                fmt_count(m.throughput),
                opt(p.map(|p| p.p50), 0),
                opt(p.map(|p| p.p90), 0),
                opt(p.map(|p| p.p99), 0),
                opt(p.map(|p| p.p999), 0),
                opt(p.map(|p| p.max), 0),
                opt(m.cpu_per_cycle(), 1),
                proxy_figure(m, format!("{:.1}", m.proxy_cpu_pct)),
                m.gen_cpu_pct,
                m.errors.count
            );
        }
        print_churn_memory(&churn);
    }
    let ratios = ratios(all);
    if !ratios.is_empty() {
        println!();
        println!(
            "## relay / HAProxy, same run (below 1 is better for the relay except throughput)"
        );
        println!(
            "{:<8} {:<30} {:>11} {:>9} {:>13} {:>15}",
            "scenario", "load", "throughput", "p99", "CPU/message", "memory/client"
        );
        for r in &ratios {
            let f = |k: &str| opt(r[k].as_f64(), 2);
            println!(
                "{:<8} {:<30} {:>11} {:>9} {:>13} {:>15}",
                r["scenario"].as_str().unwrap_or(""),
                r["label"].as_str().unwrap_or(""),
                f("throughput"),
                f("p99"),
                f("cpu_per_message"),
                f("memory_per_client"),
            );
        }
    }
}

/// What each churn burst left behind: RSS before it, at its peak (VmHWM)
/// and at rest afterwards.
fn print_churn_memory(churn: &[&Measurement]) {
    let Some(after) = churn
        .iter()
        .find_map(|m| m.rest.as_ref())
        .map(|r| r.after_s)
    else {
        return;
    };
    println!();
    println!(
        "## churn memory: VmRSS before the burst, its peak (VmHWM), and at rest {after:.0} s after it (relay: its binaries still connected)"
    );
    println!(
        "{:<8} {:<14} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "target", "load", "connections", "before MiB", "peak MiB", "rest MiB", "kept MiB"
    );
    for m in churn {
        let Some(rest) = &m.rest else { continue };
        println!(
            "{:<8} {:<14} {:>12} {:>10} {:>10} {:>10} {:>9}",
            m.target.name(),
            m.label,
            fmt_count(m.upgrades as f64),
            mib(m.rss_before),
            mib(m.hwm_after),
            mib(rest.rss),
            format!("{:+.1}", rest.kept(m.rss_before) as f64 / 1048576.0),
        );
    }
}

/// Relay/HAProxy ratios for every pair measured with the same settings.
pub fn ratios(all: &[Measurement]) -> Vec<Value> {
    let mut out = Vec::new();
    for relay in all.iter().filter(|m| m.target == Kind::Relay) {
        let Some(ha) = all.iter().find(|m| {
            m.target == Kind::Haproxy && m.scenario == relay.scenario && m.label == relay.label
        }) else {
            continue;
        };
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let p99 = |m: &Measurement| {
            if m.scenario == "churn" {
                m.upgrade_latency.map(|p| p.p99)
            } else {
                m.latency.map(|p| p.p99)
            }
        };
        let cpu = |m: &Measurement| {
            if m.scenario == "churn" {
                m.cpu_per_cycle()
            } else {
                m.cpu_per_msg()
            }
        };
        let mem = |m: &Measurement| {
            if m.scenario == "churn" {
                Some(m.hwm_after as f64)
            } else {
                m.mem_per_phone()
            }
        };
        let throughput = if relay.scenario == "idle" {
            None
        } else {
            div(Some(relay.throughput), Some(ha.throughput))
        };
        out.push(json!({
            "scenario": relay.scenario,
            "label": relay.label,
            "throughput": throughput,
            "p99": div(p99(relay), p99(ha)),
            "cpu_per_message": div(cpu(relay), cpu(ha)),
            "memory_per_client": div(mem(relay), mem(ha)),
            "notes": if relay.scenario == "churn" {
                "churn: p99 of upgrade latency, CPU per connect-echo-close cycle, memory = VmHWM"
            } else { "memory per client = RSS growth / phones (relay counts its binaries' memory too)" },
        }));
    }
    out
}

/// The idle run of `kind` with the most phones, from 5,000 up: the one a
/// memory-per-connection target is judged on.
fn largest_idle(all: &[Measurement], kind: Kind) -> Option<&Measurement> {
    all.iter()
        .filter(|m| m.scenario == "idle" && m.target == kind && m.phones >= 5000)
        .max_by_key(|m| m.phones)
}

/// The echo run of `kind` with 256-byte messages and `in_flight` echoes
/// outstanding per phone (closed loop): the one a CPU target is judged on.
fn closed_echo_256(all: &[Measurement], kind: Kind, in_flight: usize) -> Option<&Measurement> {
    all.iter().find(|m| {
        m.scenario == "echo"
            && m.target == kind
            && m.size == 256
            && matches!(m.load, Some(Load::Closed(n)) if n == in_flight)
    })
}

/// The targets, judged on what was measured.
pub fn targets(all: &[Measurement]) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(m) = largest_idle(all, Kind::Relay) {
        let v = m.mem_per_conn().unwrap_or(f64::MAX);
        out.push(json!({
            "target": format!("idle memory per connection at {} phones ≤ 1,024 B", fmt_count(m.phones as f64)),
            "measured": v, "unit": "B", "met": v <= 1024.0,
        }));
    }
    for k in [1usize, 8] {
        let find = |kind: Kind| closed_echo_256(all, kind, k);
        if let (Some(r), Some(h)) = (find(Kind::Relay), find(Kind::Haproxy)) {
            if let (Some(rc), Some(hc)) = (r.cpu_per_msg(), h.cpu_per_msg()) {
                out.push(json!({
                    "target": format!("CPU µs per forwarded message, {} phones, {} B, {k} in flight ≤ HAProxy's", r.phones, r.size),
                    "measured": rc, "haproxy": hc, "unit": "µs", "met": rc <= hc,
                    "by": rc / hc,
                }));
            }
        }
        if k == 8 {
            if let Some(r) = find(Kind::Relay) {
                let ha = find(Kind::Haproxy);
                out.push(json!({
                    "target": "echoes/s at 8 in flight: generator-bound (generator core saturated, relay core not)",
                    "measured": r.throughput, "unit": "echoes/s",
                    "generator_cpu_percent": r.gen_cpu_pct,
                    "relay_cpu_percent": r.proxy_cpu_pct,
                    "haproxy_throughput": ha.map(|h| h.throughput),
                    "haproxy_cpu_percent": ha.map(|h| h.proxy_cpu_pct),
                    "met": r.gen_cpu_pct >= 90.0 && r.proxy_cpu_pct < 90.0,
                }));
            }
        }
    }
    out
}

/// The targets of the TLS issue, judged on a `--tls` run: relay against
/// HAProxy terminating TLS with the same certificate, same run.
pub fn tls_targets(all: &[Measurement]) -> Vec<Value> {
    let mut out = Vec::new();
    if let (Some(r), Some(h)) = (
        largest_idle(all, Kind::Relay),
        largest_idle(all, Kind::Haproxy),
    ) {
        if let (Some(rm), Some(hm)) = (r.mem_per_conn(), h.mem_per_conn()) {
            out.push(json!({
                "target": format!(
                    "memory per idle TLS connection at {} phones ≤ 1/4 of HAProxy's (at {})",
                    fmt_count(r.phones as f64), fmt_count(h.phones as f64)
                ),
                "measured": rm, "haproxy": hm, "unit": "B", "met": rm <= hm / 4.0, "by": rm / hm,
            }));
        }
    }
    for k in [1usize, 8] {
        let find = |kind: Kind| closed_echo_256(all, kind, k);
        if let (Some(r), Some(h)) = (find(Kind::Relay), find(Kind::Haproxy)) {
            if let (Some(rc), Some(hc)) = (r.cpu_per_msg(), h.cpu_per_msg()) {
                out.push(json!({
                    "target": format!(
                        "CPU µs per forwarded message over TLS, {} phones, {} B, {k} in flight ≤ HAProxy's",
                        r.phones, r.size
                    ),
                    "measured": rc, "haproxy": hc, "unit": "µs", "met": rc <= hc, "by": rc / hc,
                    "note": format!(
                        "generator CPU {:.0}% (relay run), {:.0}% (HAProxy run); proxy CPU {:.0}% and {:.0}%",
                        r.gen_cpu_pct, h.gen_cpu_pct, r.proxy_cpu_pct, h.proxy_cpu_pct
                    ),
                }));
            }
        }
    }
    let churn = |kind: Kind| {
        all.iter()
            .find(|m| m.scenario == "churn" && m.target == kind)
    };
    if let (Some(r), Some(h)) = (churn(Kind::Relay), churn(Kind::Haproxy)) {
        if let (Some(rc), Some(hc)) = (r.cpu_per_cycle(), h.cpu_per_cycle()) {
            out.push(json!({
                "target": format!(
                    "CPU µs per connect–full TLS handshake–echo–close cycle, {} ≤ HAProxy's",
                    r.label
                ),
                "measured": rc, "haproxy": hc, "unit": "µs", "met": rc <= hc, "by": rc / hc,
                "note": format!(
                    "generator CPU {:.0}% (relay run), {:.0}% (HAProxy run); proxy CPU {:.0}% and {:.0}%",
                    r.gen_cpu_pct, h.gen_cpu_pct, r.proxy_cpu_pct, h.proxy_cpu_pct
                ),
            }));
        }
    }
    out
}

pub fn print_targets(targets: &[Value]) {
    if targets.is_empty() {
        return;
    }
    println!();
    println!("## targets (of the issues)");
    for t in targets {
        let met = if t["met"].as_bool() == Some(true) {
            "MET "
        } else {
            "MISS"
        };
        let measured = t["measured"].as_f64().unwrap_or(f64::NAN);
        let mut extra = match t["haproxy"].as_f64() {
            Some(h) if h > 100.0 => {
                format!(" (HAProxy {}, ratio {:.2})", fmt_count(h), measured / h)
            }
            Some(h) => format!(" (HAProxy {h:.2}, ratio {:.2})", measured / h),
            None => match t["generator_cpu_percent"].as_f64() {
                Some(g) => {
                    let mut text = format!(
                        " (generator CPU {g:.0}%, relay CPU {:.0}%",
                        t["relay_cpu_percent"].as_f64().unwrap_or(0.0)
                    );
                    if let Some(h) = t["haproxy_throughput"].as_f64() {
                        text.push_str(&format!(
                            "; HAProxy {} echoes/s at {:.0}% CPU, relay/HAProxy {:.2}",
                            fmt_count(h),
                            t["haproxy_cpu_percent"].as_f64().unwrap_or(0.0),
                            measured / h
                        ));
                    }
                    text.push(')');
                    text
                }
                None => String::new(),
            },
        };
        if let Some(note) = t["note"].as_str() {
            extra.push_str(&format!("; {note}"));
        }
        println!(
            "  [{met}] {}: {} {}{extra}",
            t["target"].as_str().unwrap_or(""),
            if measured > 100.0 {
                fmt_count(measured)
            } else {
                format!("{measured:.2}")
            },
            t["unit"].as_str().unwrap_or("")
        );
    }
}

/// Writes every figure as JSON.
pub fn write_json(path: &Path, machine: Value, all: &[Measurement]) -> std::io::Result<()> {
    let targets = if machine["transport"] == "tls" {
        tls_targets(all)
    } else {
        targets(all)
    };
    let doc = json!({
        "machine": machine,
        "measurements": all.iter().map(Measurement::json).collect::<Vec<_>>(),
        "ratios_relay_over_haproxy": ratios(all),
        "targets": targets,
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
}

/// The chart: p50, p99 and p99.9 against offered load (open-loop echo),
/// relay solid, HAProxy dashed, latency on a log scale.
pub fn write_svg(path: &Path, all: &[Measurement], title: &str) -> Result<bool, String> {
    use plotters::prelude::*;
    let open: Vec<&Measurement> = all
        .iter()
        .filter(|m| m.scenario == "echo" && m.offered().is_some() && m.latency.is_some())
        .collect();
    if open.is_empty() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let xmax = open.iter().filter_map(|m| m.offered()).fold(0.0, f64::max) * 1.05;
    let lat = |m: &Measurement, q: usize| {
        let p = m.latency.expect("filtered");
        [p.p50, p.p99, p.p999][q].max(1.0)
    };
    let ymax = open.iter().map(|m| lat(m, 2)).fold(10.0, f64::max) * 1.5;
    let ymin = open
        .iter()
        .map(|m| lat(m, 0))
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load, echoes/s (open loop)")
        .y_desc("round-trip latency, µs (log)")
        .x_label_formatter(&|x| fmt_count(*x))
        .y_label_formatter(&|y| fmt_count(*y))
        .draw()
        .map_err(err)?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    let names = ["p50", "p99", "p99.9"];
    for kind in [Kind::Relay, Kind::Url, Kind::Haproxy] {
        let mut pts: Vec<&Measurement> =
            open.iter().copied().filter(|m| m.target == kind).collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.offered().partial_cmp(&b.offered()).expect("finite"));
        for q in 0..3 {
            let color = colors[q];
            let data: Vec<(f64, f64)> = pts
                .iter()
                .map(|m| (m.offered().expect("filtered"), lat(m, q)))
                .collect();
            let label = format!("{} {}", kind.name(), names[q]);
            let style = color.stroke_width(2);
            match kind {
                Kind::Relay | Kind::Url => chart
                    .draw_series(LineSeries::new(data.clone(), style).point_size(3))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    }),
                Kind::Haproxy => chart
                    .draw_series(DashedLineSeries::new(data.clone(), 6, 4, style))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(2))
                    }),
            };
            if kind == Kind::Haproxy {
                chart
                    .draw_series(data.iter().map(|&(x, y)| Cross::new((x, y), 3, color)))
                    .map_err(err)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
