//! `relay-bench balanced`: what HAProxy in front of a relay costs, measured
//! beside the same relay reached directly (docs/SCALING.md, "Capacity").
//!
//! Each scenario runs twice, alternating which goes first: against a fresh
//! relay directly, and against a fresh relay behind HAProxy running
//! deploy/haproxy.cfg (one relay server, `nbthread 1`, no log; PROXY v2
//! only with `--proxy-protocol`). The generator is the benchmark's own
//! (gen.rs): binaries and phones speak the relay protocol either way. The
//! relay is pinned to CPU 0, the generator to CPU 1; HAProxy is left to
//! the scheduler unless `--haproxy-cpu`.
//!
//! Figures: echoes/s and round-trip latency; CPU µs per forwarded message
//! of the relay and of HAProxy (utime+stime over the window / messages);
//! RSS growth per connection of each with idle connections; and for churn
//! (connect, one exchange, close) the CPU of each per lifecycle.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use super::haproxy;
use super::procs::{self, Balancer, Listen};
use crate::gen::{Gen, Mode, Target};
use crate::sys::{self, ProcSample};
use crate::target::{Launch, Running};
use crate::EchoPopulation;

#[derive(Args, Debug)]
pub struct BalancedArgs {
    /// The relay executable [default: the workspace's target/release/pyrycode-relay].
    #[arg(long, value_name = "PATH")]
    relay: Option<PathBuf>,
    /// The HAProxy executable.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    #[command(flatten)]
    echo: EchoPopulation,
    /// Open-loop runs: echoes per second in total.
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    rate: Vec<f64>,
    /// Phones of the idle (memory) run; 0 skips it.
    #[arg(long, default_value_t = 4000)]
    idle_phones: usize,
    /// Phone lifecycles at once in the churn run; 0 skips it.
    #[arg(long, default_value_t = 64)]
    churn: usize,
    /// Measured window of each run.
    #[arg(long, default_value = "4s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Load before each window.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// Pin HAProxy to this CPU (default: not pinned).
    #[arg(long)]
    haproxy_cpu: Option<usize>,
    /// Pin nothing.
    #[arg(long)]
    no_pin: bool,
    /// PROXY v2 from HAProxy to the relay (the relay behind HAProxy gets
    /// --proxy-protocol); needs a relay that serves it.
    #[arg(long)]
    proxy_protocol: bool,
}

/// Direct to the relay, or through the balancer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Direct,
    Haproxy,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Haproxy => "haproxy",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Idle(usize),
    Closed(usize),
    Open(f64),
    Churn(usize),
}

impl Scenario {
    fn label(&self, a: &BalancedArgs) -> String {
        match self {
            Scenario::Idle(n) => format!("idle, {n} phones"),
            Scenario::Closed(k) => {
                format!("echo {} × {} B, {k} in flight", a.echo.phones, a.echo.size)
            }
            Scenario::Open(r) => format!("echo {} × {} B, {r:.0} /s", a.echo.phones, a.echo.size),
            Scenario::Churn(c) => format!("churn, {c} at a time"),
        }
    }
}

/// One measured run.
struct Row {
    label: String,
    via: Via,
    /// Echoes/s, or lifecycles/s for churn.
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU µs per forwarded message (per lifecycle for churn).
    relay_cpu: f64,
    lb_cpu: Option<f64>,
    relay_pct: f64,
    lb_pct: Option<f64>,
    /// RSS growth per connection, bytes (idle).
    relay_mem: Option<f64>,
    lb_mem: Option<f64>,
    errors: u64,
}

/// What every run needs.
struct Ctx {
    launch: Launch,
    proxy: bool,
    sources: Vec<Ipv4Addr>,
    fd_limit: u64,
    haproxy_cpu: Option<usize>,
}

pub fn run(a: BalancedArgs) -> Result<ExitCode, String> {
    let ctx = context(&a)?;
    let mut rows = Vec::new();
    for (i, s) in scenarios(&a).iter().enumerate() {
        let mut order = [Via::Direct, Via::Haproxy];
        if i % 2 == 1 {
            order.reverse();
        }
        for via in order {
            let row = measure(&ctx, &a, *s, via)?;
            eprintln!("  {} via {}: done", row.label, via.name());
            rows.push(row);
        }
    }
    print_rows(&rows);
    println!("# load average at end {}", super::loadavg());
    let _ = std::fs::remove_dir_all(&ctx.launch.workdir);
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        eprintln!("relay-bench balanced: {errors} errors during the runs");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Limits, pinning and the work directory; prints the conditions.
fn context(a: &BalancedArgs) -> Result<Ctx, String> {
    let fd_limit = sys::raise_nofile();
    let cpus = sys::online_cpus();
    let pin = !a.no_pin && cpus >= 2 && sys::pin_current_thread(1).is_ok();
    let workdir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let relay = a.relay.clone();
    let ctx = Ctx {
        launch: Launch {
            relay: relay.unwrap_or_else(crate::target::default_relay_path),
            relay_args: Vec::new(),
            relay_log_level: "warn".into(),
            haproxy: a.haproxy.clone(),
            proxy_cpu: pin.then_some(0),
            gen_cpu: pin.then_some(1),
            workdir,
            tls: None,
        },
        sources: (2..10).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect(),
        proxy: a.proxy_protocol,
        fd_limit,
        haproxy_cpu: a.haproxy_cpu.filter(|_| pin),
    };
    let placement = if pin {
        "relay on CPU 0, generator on CPU 1"
    } else {
        "relay and generator not pinned"
    };
    let haproxy = ctx
        .haproxy_cpu
        .map_or("not pinned".into(), |c| format!("on CPU {c}"));
    println!(
        "# relay-bench balanced — {cpus} CPUs; {placement}, HAProxy {haproxy} (nbthread 1, {}, PROXY v2 {}); load average {}",
        crate::target::haproxy_version(&a.haproxy),
        if ctx.proxy { "on" } else { "off" },
        super::loadavg()
    );
    Ok(ctx)
}

fn scenarios(a: &BalancedArgs) -> Vec<Scenario> {
    let mut scenarios = Vec::new();
    if a.idle_phones > 0 {
        scenarios.push(Scenario::Idle(a.idle_phones));
    }
    scenarios.extend(a.echo.in_flight.iter().map(|&k| Scenario::Closed(k.max(1))));
    scenarios.extend(a.rate.iter().map(|&r| Scenario::Open(r.max(1.0))));
    if a.churn > 0 {
        scenarios.push(Scenario::Churn(a.churn));
    }
    scenarios
}

/// HAProxy with deploy/haproxy.cfg in front of one relay.
fn start_balancer(ctx: &Ctx, relay: SocketAddr, tag: &str) -> Result<Balancer, String> {
    let deploy = std::fs::read_to_string(haproxy::deploy_file())
        .map_err(|e| format!("{}: {e}", haproxy::DEPLOY_FILE))?;
    let addr = procs::free_addr()?;
    let stats = ctx.launch.workdir.join(format!("{tag}.sock"));
    let peers = [("lb".to_string(), procs::free_addr()?)];
    let relays = [("relay1".to_string(), relay)];
    let spec = haproxy::Spec {
        bind: addr,
        control_bind: None,
        stats_socket: &stats,
        peers: &peers,
        relays: &relays,
        proxy: ctx.proxy,
        relay_header: false,
        log: false,
        global_extra: &["nbthread 1"],
        maxconn: (ctx.fd_limit.saturating_sub(200) / 2) as usize,
    };
    let config = haproxy::render(&deploy, &spec)?;
    let listen = Listen {
        addr,
        control: None,
        stats,
    };
    let lb = Balancer::start(
        &ctx.launch.haproxy,
        "lb",
        &config,
        listen,
        &ctx.launch.workdir,
        ctx.haproxy_cpu,
    )?;
    if !(0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        lb.is_up("relay1")
    }) {
        return Err("HAProxy did not see the relay UP within 5 s".into());
    }
    Ok(lb)
}

fn sample(pid: u32) -> Result<ProcSample, String> {
    sys::sample(pid).map_err(|e| format!("/proc/{pid}: {e}"))
}

/// The relay's and (if any) HAProxy's samples.
fn samples(relay: u32, lb: Option<u32>) -> Result<(ProcSample, Option<ProcSample>), String> {
    Ok((sample(relay)?, lb.map(sample).transpose()?))
}

/// One scenario through `via`, on fresh processes.
fn measure(ctx: &Ctx, a: &BalancedArgs, s: Scenario, via: Via) -> Result<Row, String> {
    let tag = format!("{}-{}", via.name(), std::process::id());
    let mut launch = ctx.launch.clone();
    if via == Via::Haproxy && ctx.proxy {
        launch.relay_args.push("--proxy-protocol".into());
    }
    let relay = launch.relay(a.echo.phones_per_binary, &tag)?;
    let lb = match via {
        Via::Direct => None,
        Via::Haproxy => Some(start_balancer(ctx, relay.addr, &tag)?),
    };
    let addr = lb.as_ref().map_or(relay.addr, |l| l.addr);
    let (mode, phones, binaries) = match s {
        Scenario::Idle(n) => (Mode::Idle, n, n.div_ceil(a.echo.phones_per_binary)),
        Scenario::Closed(_) | Scenario::Open(_) => (
            Mode::Echo,
            a.echo.phones,
            a.echo.phones.div_ceil(a.echo.phones_per_binary),
        ),
        Scenario::Churn(_) => (Mode::Churn, 0, 4),
    };
    let target = Target {
        addr,
        host: addr.to_string(),
        relay: true,
        tls: None,
    };
    let mut gen = Gen::new(target, mode, a.echo.size, ctx.sources.clone())
        .map_err(|e| format!("generator: {e}"))?;
    let pids = (relay.pid(), lb.as_ref().and_then(Balancer::pid));
    let before = samples(pids.0, pids.1)?;
    let result = gen
        .connect_all(binaries, phones, Duration::from_secs(60))
        .and_then(|_| load(&mut gen, a, s, pids, before, binaries + phones));
    gen.abort_all();
    stop(relay, lb);
    let mut row = result?;
    row.label = s.label(a);
    row.via = via;
    Ok(row)
}

fn stop(relay: Running, lb: Option<Balancer>) {
    if let Some(mut lb) = lb {
        lb.stop();
    }
    relay.stop();
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Loads the population and measures the window.
fn load(
    gen: &mut Gen,
    a: &BalancedArgs,
    s: Scenario,
    pids: (u32, Option<u32>),
    before: (ProcSample, Option<ProcSample>),
    conns: usize,
) -> Result<Row, String> {
    if let Scenario::Idle(_) = s {
        gen.run_until(Instant::now() + Duration::from_secs(1), |_| false);
        let (relay, lb) = samples(pids.0, pids.1)?;
        let per =
            |b: &ProcSample, n: &ProcSample| n.rss.saturating_sub(b.rss) as f64 / conns as f64;
        return Ok(Row {
            relay_mem: Some(per(&before.0, &relay)),
            lb_mem: before.1.zip(lb).map(|(b, n)| per(&b, &n)),
            errors: gen.errors.count,
            ..Row::empty()
        });
    }
    match s {
        Scenario::Closed(k) => gen.start_closed_loop(k),
        Scenario::Open(r) => gen.start_open_loop(r),
        Scenario::Churn(c) => gen.start_churn(c),
        Scenario::Idle(_) => unreachable!("handled above"),
    }
    gen.run_until(Instant::now() + a.warmup, |_| false);
    gen.reset_stats();
    let w0 = samples(pids.0, pids.1)?;
    gen.run_until(Instant::now() + a.duration, |g| g.errors.count > 100);
    let w1 = samples(pids.0, pids.1)?;
    gen.stop_sending();
    let secs = w1.0.at.duration_since(w0.0.at).as_secs_f64();
    let stats = &gen.stats;
    // An echo or a churn cycle forwards two messages; churn is per cycle.
    let units = match s {
        Scenario::Churn(_) => stats.completed,
        _ => stats.completed * 2,
    }
    .max(1) as f64;
    let cpu = |a: &ProcSample, b: &ProcSample| b.cpu_us.saturating_sub(a.cpu_us) as f64;
    let latency = match s {
        Scenario::Churn(_) => &stats.upgrade,
        _ => &stats.latency,
    };
    Ok(Row {
        rate: stats.completed as f64 / secs,
        p50_us: pct(latency, 0.5),
        p99_us: pct(latency, 0.99),
        relay_cpu: cpu(&w0.0, &w1.0) / units,
        lb_cpu: w0.1.zip(w1.1).map(|(x, y)| cpu(&x, &y) / units),
        relay_pct: cpu(&w0.0, &w1.0) / secs / 1e4,
        lb_pct: w0.1.zip(w1.1).map(|(x, y)| cpu(&x, &y) / secs / 1e4),
        errors: gen.errors.count,
        ..Row::empty()
    })
}

impl Row {
    fn empty() -> Row {
        Row {
            label: String::new(),
            via: Via::Direct,
            rate: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            relay_cpu: 0.0,
            lb_cpu: None,
            relay_pct: 0.0,
            lb_pct: None,
            relay_mem: None,
            lb_mem: None,
            errors: 0,
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_rows(rows: &[Row]) {
    let head = [
        "rate/s",
        "p50 µs",
        "p99 µs",
        "relay µs",
        "haproxy µs",
        "relay%",
        "hapx%",
        "relay B",
        "haproxy B",
        "errors",
    ];
    println!(
        "\n{:<34} {:<8} {}",
        "scenario",
        "via",
        columns(&head.map(String::from))
    );
    for r in rows {
        // Idle runs have memory only; traffic runs everything else.
        let busy = |v: String| {
            if r.relay_mem.is_some() {
                "-".to_string()
            } else {
                v
            }
        };
        let cells = [
            busy(format!("{:.0}", r.rate)),
            busy(format!("{:.0}", r.p50_us)),
            busy(format!("{:.0}", r.p99_us)),
            busy(format!("{:.2}", r.relay_cpu)),
            busy(opt(r.lb_cpu, 2)),
            busy(format!("{:.0}", r.relay_pct)),
            busy(opt(r.lb_pct, 0)),
            opt(r.relay_mem, 0),
            opt(r.lb_mem, 0),
            r.errors.to_string(),
        ];
        println!("{:<34} {:<8} {}", r.label, r.via.name(), columns(&cells));
    }
    println!(
        "\n(relay µs, haproxy µs: CPU per forwarded message, per lifecycle for churn (p50/p99 there: connect → 101); relay B, haproxy B: RSS growth per connection, binaries and phones)"
    );
}

/// Right-aligned cells, 10 wide.
fn columns(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| format!("{c:>10}"))
        .collect::<Vec<_>>()
        .join(" ")
}
