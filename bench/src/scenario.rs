//! The scenarios: each phase starts a fresh proxy, builds its population
//! of simulated peers, loads it, samples `/proc` around the measured window
//! and tears everything down. Over TLS (`--tls`) and against a relay that
//! is already running (`--url`) the scenarios are the same; only the
//! target and the peers' transport change.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::gen::{Errors, Gen, Mode, Target};
use crate::sys::{self, ProcSample};
use crate::target::{Kind, Launch, Running};
use crate::tls;
use crate::url::Remote;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Pct {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Pct {
    fn of(h: &Histogram<u64>) -> Option<Pct> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Pct {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count, "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99,
            "p99_9_us": self.p999, "max_us": self.max, "mean_us": self.mean,
        })
    }
}

/// The load of an echo or fanout phase.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Each phone keeps this many messages in flight.
    Closed(usize),
    /// Phones send this many messages per second in total.
    Open(f64),
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed(k) => format!("{k} in flight"),
            Load::Open(r) => format!("{} /s offered", fmt_count(*r)),
        }
    }
}

/// One measured phase.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub scenario: &'static str,
    pub target: Kind,
    pub label: String,
    pub load: Option<Load>,
    pub params: Value,
    pub phones: usize,
    pub binaries: usize,
    pub size: usize,
    pub window_s: f64,
    /// Round trips (echo), deliveries (fanout), cycles (churn).
    pub completed: u64,
    /// Messages the proxy forwarded (one echo = 2).
    pub forwarded: u64,
    pub throughput: f64,
    pub latency: Option<Pct>,
    pub upgrade_latency: Option<Pct>,
    pub upgrades: u64,
    /// Close notices the binaries got (relay, SPEC §5.4).
    pub close_notices: u64,
    pub proxy_cpu_us: u64,
    pub proxy_sched_us: f64,
    pub proxy_cpu_pct: f64,
    pub gen_cpu_pct: f64,
    pub echo_cpu_pct: Option<f64>,
    pub rss_before: u64,
    pub rss_connected: u64,
    pub rss_after: u64,
    pub hwm_after: u64,
    /// The proxy at rest after the load (churn): RSS sampled while only
    /// the binaries stay connected.
    pub rest: Option<Rest>,
    pub errors: Errors,
    pub command: String,
}

impl Measurement {
    /// Whether the proxy's process was measured (not for `--url`).
    pub fn proxy_measured(&self) -> bool {
        self.target != Kind::Url
    }

    /// Relay: phones and binaries; HAProxy: proxied clients.
    pub fn connections(&self) -> usize {
        self.phones + self.binaries
    }

    /// Resident memory grown per connection once all were connected.
    pub fn mem_per_conn(&self) -> Option<f64> {
        let n = self.connections();
        (n > 0 && self.proxy_measured())
            .then(|| self.rss_connected.saturating_sub(self.rss_before) as f64 / n as f64)
    }

    /// Resident memory grown per phone (per proxied client for HAProxy).
    pub fn mem_per_phone(&self) -> Option<f64> {
        (self.phones > 0 && self.proxy_measured())
            .then(|| self.rss_connected.saturating_sub(self.rss_before) as f64 / self.phones as f64)
    }

    /// Proxy CPU (utime+stime) per forwarded message, microseconds.
    pub fn cpu_per_msg(&self) -> Option<f64> {
        (self.forwarded > 0 && self.proxy_measured())
            .then(|| self.proxy_cpu_us as f64 / self.forwarded as f64)
    }

    /// Same from schedstat (nanosecond accounting).
    pub fn cpu_per_msg_sched(&self) -> Option<f64> {
        (self.forwarded > 0 && self.proxy_measured())
            .then(|| self.proxy_sched_us / self.forwarded as f64)
    }

    /// Proxy CPU per completed cycle (churn), microseconds.
    pub fn cpu_per_cycle(&self) -> Option<f64> {
        (self.completed > 0 && self.proxy_measured())
            .then(|| self.proxy_cpu_us as f64 / self.completed as f64)
    }

    pub fn offered(&self) -> Option<f64> {
        match self.load {
            Some(Load::Open(r)) => Some(r),
            _ => None,
        }
    }

    pub fn json(&self) -> Value {
        let mut doc = self.json_all();
        if !self.proxy_measured() {
            for key in [
                "proxy_cpu_us_utime_stime",
                "proxy_cpu_us_schedstat",
                "proxy_cpu_percent",
                "rss_before_bytes",
                "rss_connected_bytes",
                "rss_after_bytes",
                "hwm_after_bytes",
            ] {
                doc[key] = Value::Null;
            }
        }
        doc
    }

    fn json_all(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "target": self.target.name(),
            "label": self.label,
            "params": self.params,
            "phones": self.phones,
            "binaries": self.binaries,
            "message_bytes": self.size,
            "window_s": self.window_s,
            "completed": self.completed,
            "forwarded_messages": self.forwarded,
            "throughput_per_s": self.throughput,
            "offered_per_s": self.offered(),
            "latency": self.latency.map(|p| p.json()),
            "upgrade_latency": self.upgrade_latency.map(|p| p.json()),
            "upgrades": self.upgrades,
            "close_notices_received": self.close_notices,
            "proxy_cpu_us_utime_stime": self.proxy_cpu_us,
            "proxy_cpu_us_schedstat": self.proxy_sched_us,
            "proxy_cpu_percent": self.proxy_cpu_pct,
            "cpu_us_per_forwarded_message": self.cpu_per_msg(),
            "cpu_us_per_forwarded_message_schedstat": self.cpu_per_msg_sched(),
            "cpu_us_per_cycle": if self.scenario == "churn" { self.cpu_per_cycle() } else { None },
            "generator_cpu_percent": self.gen_cpu_pct,
            "echo_server_cpu_percent": self.echo_cpu_pct,
            "rss_before_bytes": self.rss_before,
            "rss_connected_bytes": self.rss_connected,
            "rss_after_bytes": self.rss_after,
            "hwm_after_bytes": self.hwm_after,
            "rest": self.rest.as_ref().map(Rest::json),
            "rss_growth_per_connection_bytes": self.mem_per_conn(),
            "rss_growth_per_phone_bytes": self.mem_per_phone(),
            "errors": self.errors.count,
            "error_samples": self.errors.samples,
            "command": self.command,
        })
    }
}

/// Resident memory once the load is gone: what a burst leaves behind.
#[derive(Clone, Debug)]
pub struct Rest {
    /// Seconds from the end of the load to the last sample.
    pub after_s: f64,
    /// VmRSS at the last sample.
    pub rss: u64,
    /// (seconds after the load, VmRSS) once a second.
    pub samples: Vec<(f64, u64)>,
}

impl Rest {
    /// What the load left behind: RSS at rest minus RSS before it.
    pub fn kept(&self, before: u64) -> i64 {
        self.rss as i64 - before as i64
    }

    fn json(&self) -> Value {
        json!({
            "after_s": self.after_s,
            "rss_bytes": self.rss,
            "samples": self.samples.iter().map(|(t, rss)| json!({"t_s": t, "rss_bytes": rss})).collect::<Vec<_>>(),
        })
    }
}

/// What every phase needs.
pub struct Env {
    pub launch: Launch,
    pub sources: Vec<Ipv4Addr>,
    pub fd_limit: u64,
    pub setup_timeout: Duration,
    pub verbose: bool,
    /// `--tls`: every peer dials with this client.
    pub tls: Option<tls::Client>,
    /// `--url`: the relay already running, in place of the ones started.
    pub remote: Option<Remote>,
    phase: usize,
}

/// Descriptors kept aside for listeners, pipes, logs and /proc reads.
const FD_RESERVE: u64 = 64;

pub fn fmt_count(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Env {
    pub fn new(launch: Launch, sources: Vec<Ipv4Addr>, fd_limit: u64, verbose: bool) -> Env {
        Env {
            launch,
            sources,
            fd_limit,
            setup_timeout: Duration::from_secs(60),
            verbose,
            tls: None,
            remote: None,
            phase: 0,
        }
    }

    /// The most phones one phase through `kind` can hold on this machine.
    pub fn max_phones(&self, kind: Kind, phones_per_binary: usize) -> usize {
        let budget = self.fd_limit.saturating_sub(FD_RESERVE) as usize;
        let ports = (sys::ephemeral_ports().saturating_sub(1000)) * self.sources.len();
        match kind {
            // Generator and relay each hold phones + binaries sockets.
            Kind::Relay | Kind::Url => {
                let per = |p: usize| p + p.div_ceil(phones_per_binary.max(1));
                let mut n = budget.min(ports);
                while n > 0 && per(n) > budget.min(ports) {
                    n -= 1;
                }
                n
            }
            // HAProxy holds two sockets per proxied client, and dials the
            // echo server from one address.
            Kind::Haproxy => (budget / 2)
                .min(sys::ephemeral_ports().saturating_sub(1000))
                .min(ports),
        }
    }

    /// Says why `phones` cannot fit, if they cannot.
    pub fn check_fit(&self, kind: Kind, phones: usize, binaries: usize) -> Result<(), String> {
        let budget = self.fd_limit.saturating_sub(FD_RESERVE) as usize;
        let limit = self.fd_limit;
        let gen_fds = phones + binaries;
        if gen_fds > budget {
            let fit = self.max_phones(kind, phones.div_ceil(binaries.max(1)));
            return Err(format!(
                "{} sockets ({phones} phones + {binaries} binaries) do not fit in one process: \
                 the open-file limit is {limit} (`ulimit -Hn`), minus {FD_RESERVE} kept aside; \
                 at most {} phones fit with these phones per binary",
                fmt_count(gen_fds as f64),
                fmt_count(fit as f64)
            ));
        }
        if kind == Kind::Haproxy && 2 * phones > budget {
            return Err(format!(
                "{} phones through HAProxy need {} sockets in the HAProxy process (2 per proxied \
                 client), over the open-file limit of {limit} (`ulimit -Hn`) minus {FD_RESERVE}; \
                 at most {} fit",
                fmt_count(phones as f64),
                fmt_count(2.0 * phones as f64),
                fmt_count((budget / 2) as f64)
            ));
        }
        let ports = sys::ephemeral_ports().saturating_sub(1000);
        let per_source = gen_fds.div_ceil(self.sources.len());
        if per_source > ports {
            return Err(format!(
                "{per_source} connections per source address exceed the ~{ports} ephemeral ports \
                 of one address; raise --sources"
            ));
        }
        if kind == Kind::Haproxy && phones > ports {
            return Err(format!(
                "HAProxy dials the echo server from one address: {phones} connections exceed its \
                 ~{ports} ephemeral ports"
            ));
        }
        Ok(())
    }

    pub(crate) fn start(
        &mut self,
        kind: Kind,
        phones_per_server: usize,
        max_clients: usize,
    ) -> Result<Running, String> {
        self.phase += 1;
        let tag = format!("{}-{}", self.phase, kind.name());
        match (kind, &self.remote) {
            (Kind::Url, Some(remote)) => Ok(Running::remote(remote)),
            (Kind::Url, None) => Err("no --url given".into()),
            (Kind::Relay, _) => self.launch.relay(phones_per_server, &tag),
            (Kind::Haproxy, _) => self.launch.haproxy(max_clients, &tag),
        }
    }

    pub(crate) fn generator(
        &self,
        running: &Running,
        mode: Mode,
        size: usize,
    ) -> Result<Gen, String> {
        let host = match (&self.remote, running.kind) {
            (Some(remote), Kind::Url) => remote.authority.clone(),
            _ => running.addr.to_string(),
        };
        let target = Target {
            addr: running.addr,
            host,
            relay: running.kind != Kind::Haproxy,
            tls: self.tls.as_ref().map(|c| c.for_target(running.kind.name())),
        };
        Gen::new(target, mode, size, self.sources.clone()).map_err(|e| format!("generator: {e}"))
    }

    pub(crate) fn log(&self, text: &str) {
        if self.verbose {
            eprintln!("  {text}");
        }
    }

    /// Connects `binaries` binaries and then `phones` phones; fails if any
    /// of them did not open.
    pub(crate) fn populate(
        &self,
        gen: &mut Gen,
        running: &mut Running,
        binaries: usize,
        phones: usize,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.setup_timeout;
        if binaries > 0 {
            gen.add_binaries(binaries);
            gen.run_until(deadline, |g| !g.connecting() || g.errors.count > 0);
            if gen.open_binaries != binaries {
                return Err(setup_error(
                    gen,
                    running,
                    "binaries",
                    gen.open_binaries,
                    binaries,
                ));
            }
        }
        gen.add_phones(phones);
        gen.run_until(deadline, |g| !g.connecting() || g.errors.count > 0);
        if gen.open_phones != phones {
            return Err(setup_error(gen, running, "phones", gen.open_phones, phones));
        }
        Ok(())
    }

    /// `idle`: hold `phones` phones over binaries of `phones_per_binary`.
    pub fn idle(
        &mut self,
        kind: Kind,
        phones: usize,
        phones_per_binary: usize,
        hold: Duration,
    ) -> Result<Measurement, String> {
        let binaries = if kind.is_relay() {
            phones.div_ceil(phones_per_binary)
        } else {
            0
        };
        self.check_fit(kind, phones, binaries)?;
        let mut running = self.start(kind, phones_per_binary, phones)?;
        let mut gen = self.generator(&running, Mode::Idle, 64)?;
        let before = running.sample()?;
        self.log(&format!(
            "{}: connecting {binaries} binaries, {phones} phones",
            kind.name()
        ));
        let result = self.populate(&mut gen, &mut running, binaries, phones);
        if let Err(e) = result {
            gen.abort_all();
            running.stop();
            return Err(e);
        }
        let end = Instant::now() + hold;
        gen.run_until(end, |_| false);
        let connected = running.sample()?;
        let errors = gen.errors.clone();
        gen.abort_all();
        let command = running.command.clone();
        running.stop();
        Ok(Measurement {
            scenario: "idle",
            target: kind,
            label: format!("{} phones", fmt_count(phones as f64)),
            load: None,
            params: json!({"phones": phones, "phones_per_binary": phones_per_binary, "hold_s": hold.as_secs_f64()}),
            phones,
            binaries,
            size: 0,
            window_s: hold.as_secs_f64(),
            completed: 0,
            forwarded: 0,
            throughput: 0.0,
            latency: None,
            upgrade_latency: None,
            upgrades: 0,
            close_notices: 0,
            proxy_cpu_us: 0,
            proxy_sched_us: 0.0,
            proxy_cpu_pct: 0.0,
            gen_cpu_pct: 0.0,
            echo_cpu_pct: None,
            rss_before: before.rss,
            rss_connected: connected.rss,
            rss_after: connected.rss,
            hwm_after: connected.hwm,
            rest: None,
            errors,
            command,
        })
    }

    /// `echo` (and `fanout` when `fanout` is set): `phones` phones over
    /// binaries of `phones_per_binary`, under `load`.
    #[allow(clippy::too_many_arguments)]
    pub fn traffic(
        &mut self,
        kind: Kind,
        fanout: bool,
        phones: usize,
        phones_per_binary: usize,
        size: usize,
        load: Load,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Measurement, String> {
        if fanout && !kind.is_relay() {
            return Err("fanout runs against the relay only".into());
        }
        let binaries = if kind.is_relay() {
            phones.div_ceil(phones_per_binary)
        } else {
            0
        };
        self.check_fit(kind, phones, binaries)?;
        let mut running = self.start(kind, phones_per_binary, phones)?;
        let mode = if fanout { Mode::Fanout } else { Mode::Echo };
        let mut gen = self.generator(&running, mode, size)?;
        let before = running.sample()?;
        self.log(&format!(
            "{}: connecting {binaries} binaries, {phones} phones",
            kind.name()
        ));
        if let Err(e) = self.populate(&mut gen, &mut running, binaries, phones) {
            gen.abort_all();
            running.stop();
            return Err(e);
        }
        if fanout {
            gen.send_hellos();
            let deadline = Instant::now() + self.setup_timeout;
            gen.run_until(deadline, |g| g.known_phones == phones || g.errors.count > 0);
            if gen.known_phones != phones {
                let e = setup_error(&gen, &mut running, "phone hellos", gen.known_phones, phones);
                gen.abort_all();
                running.stop();
                return Err(e);
            }
        }
        let connected = running.sample()?;
        match load {
            Load::Closed(k) => gen.start_closed_loop(k),
            Load::Open(rate) => {
                if fanout {
                    return Err("fanout is closed-loop only".into());
                }
                gen.start_open_loop(rate)
            }
        }
        self.log(&format!(
            "{}: {} warm-up {:?}, window {:?}",
            kind.name(),
            load.label(),
            warmup,
            duration
        ));
        gen.run_until(Instant::now() + warmup, |_| false);
        gen.reset_stats();
        let w0 = Window::open(&running)?;
        gen.run_until(Instant::now() + duration, |g| g.errors.count > 100);
        let w1 = Window::open(&running)?;
        gen.stop_sending();
        let stats = std::mem::replace(&mut gen.stats, crate::gen::Stats::new());
        let (errors, command) = finish_run(&mut gen, running)
            .map_err(|tail| format!("{} died during the run:\n{tail}", kind.name()))?;
        let secs = w1.proxy.at.duration_since(w0.proxy.at).as_secs_f64();
        let completed = stats.completed;
        let forwarded = if fanout { completed } else { completed * 2 };
        let (proxy_cpu_us, proxy_sched_us, proxy_cpu_pct) = cpu(&w0.proxy, &w1.proxy);
        let gen_cpu_pct = cpu(&w0.gen, &w1.gen).2;
        let echo_cpu_pct = match (&w0.echo, &w1.echo) {
            (Some(a), Some(b)) => Some(cpu(a, b).2),
            _ => None,
        };
        let load_json = match load {
            Load::Closed(k) => json!({"closed_loop_in_flight": k}),
            Load::Open(r) => json!({"open_loop_rate": r}),
        };
        Ok(Measurement {
            scenario: if fanout { "fanout" } else { "echo" },
            target: kind,
            label: format!("{phones} × {} B, {}", gen.payload_len(), load.label()),
            load: Some(load),
            params: json!({
                "phones": phones, "phones_per_binary": phones_per_binary, "message_bytes": gen.payload_len(),
                "load": load_json, "warmup_s": warmup.as_secs_f64(), "duration_s": duration.as_secs_f64(),
            }),
            phones,
            binaries,
            size: gen.payload_len(),
            window_s: secs,
            completed,
            forwarded,
            throughput: completed as f64 / secs,
            latency: Pct::of(&stats.latency),
            upgrade_latency: None,
            upgrades: 0,
            close_notices: stats.close_notices,
            proxy_cpu_us,
            proxy_sched_us,
            proxy_cpu_pct,
            gen_cpu_pct,
            echo_cpu_pct,
            rss_before: before.rss,
            rss_connected: connected.rss,
            rss_after: w1.proxy.rss,
            hwm_after: w1.proxy.hwm,
            rest: None,
            errors,
            command,
        })
    }

    /// `churn`: `concurrency` phones at a time connect, exchange one
    /// message, close; the relay's binaries stay up. Then, for `rest`,
    /// nothing but the binaries: what the burst left behind in RSS.
    #[allow(clippy::too_many_arguments)]
    pub fn churn(
        &mut self,
        kind: Kind,
        concurrency: usize,
        binaries: usize,
        size: usize,
        warmup: Duration,
        duration: Duration,
        rest: Duration,
    ) -> Result<Measurement, String> {
        let binaries = if kind.is_relay() { binaries.max(1) } else { 0 };
        self.check_fit(kind, concurrency, binaries)?;
        let mut running = self.start(kind, concurrency, concurrency)?;
        let mut gen = self.generator(&running, Mode::Churn, size)?;
        if let Err(e) = self.populate(&mut gen, &mut running, binaries, 0) {
            gen.abort_all();
            running.stop();
            return Err(e);
        }
        let before = running.sample()?;
        gen.start_churn(concurrency);
        self.log(&format!("{}: churn {concurrency} at a time", kind.name()));
        gen.run_until(Instant::now() + warmup, |_| false);
        gen.reset_stats();
        let w0 = Window::open(&running)?;
        gen.run_until(Instant::now() + duration, |g| g.errors.count > 100);
        let w1 = Window::open(&running)?;
        gen.stop_sending();
        let stats = std::mem::replace(&mut gen.stats, crate::gen::Stats::new());
        // A `--url` relay has no process to watch at rest.
        let rest = match running.kind {
            Kind::Url => Ok(None),
            _ => self.rest(&mut gen, running.pid(), rest).map(Some),
        };
        let (errors, command) = finish_run(&mut gen, running)
            .map_err(|tail| format!("{} died during the run:\n{tail}", kind.name()))?;
        let rest = rest?;
        let secs = w1.proxy.at.duration_since(w0.proxy.at).as_secs_f64();
        let (proxy_cpu_us, proxy_sched_us, proxy_cpu_pct) = cpu(&w0.proxy, &w1.proxy);
        Ok(Measurement {
            scenario: "churn",
            target: kind,
            label: format!("{concurrency} at a time"),
            load: None,
            params: json!({
                "concurrency": concurrency, "binaries": binaries, "message_bytes": size,
                "warmup_s": warmup.as_secs_f64(), "duration_s": duration.as_secs_f64(),
                "rest_s": rest.as_ref().map(|r| r.after_s),
            }),
            phones: 0,
            binaries,
            size,
            window_s: secs,
            completed: stats.completed,
            forwarded: stats.completed * 2,
            throughput: stats.upgrades as f64 / secs,
            latency: Pct::of(&stats.latency),
            upgrade_latency: Pct::of(&stats.upgrade),
            upgrades: stats.upgrades,
            close_notices: stats.close_notices,
            proxy_cpu_us,
            proxy_sched_us,
            proxy_cpu_pct,
            gen_cpu_pct: cpu(&w0.gen, &w1.gen).2,
            echo_cpu_pct: match (&w0.echo, &w1.echo) {
                (Some(a), Some(b)) => Some(cpu(a, b).2),
                _ => None,
            },
            rss_before: before.rss,
            rss_connected: w1.proxy.rss,
            rss_after: w1.proxy.rss,
            hwm_after: w1.proxy.hwm,
            rest,
            errors,
            command,
        })
    }
}

impl Env {
    /// Lets the phone lifecycles in progress finish, then keeps only the
    /// connections that stay (binaries, idle phones; pings answered) for
    /// `rest`, sampling the proxy's RSS once a second. Call after
    /// `stop_sending`.
    pub(crate) fn rest(&self, gen: &mut Gen, pid: u32, rest: Duration) -> Result<Rest, String> {
        gen.run_until(Instant::now() + Duration::from_secs(5), |g| {
            g.churning() == 0
        });
        let start = Instant::now();
        let end = start + rest;
        self.log(&format!("at rest for {rest:?}"));
        let mut samples = Vec::new();
        loop {
            let s = sample(pid)?;
            samples.push((s.at.duration_since(start).as_secs_f64(), s.rss));
            let now = Instant::now();
            if now >= end {
                break;
            }
            gen.run_until(end.min(now + Duration::from_secs(1)), |_| false);
        }
        let &(after_s, rss) = samples.last().expect("one sample at least");
        Ok(Rest {
            after_s,
            rss,
            samples,
        })
    }
}

pub(crate) fn sample(pid: u32) -> Result<ProcSample, String> {
    sys::sample(pid).map_err(|e| format!("/proc/{pid}: {e}"))
}

/// `/proc` samples of the proxy, the generator and the echo server.
struct Window {
    proxy: ProcSample,
    gen: ProcSample,
    echo: Option<ProcSample>,
}

impl Window {
    fn open(running: &Running) -> Result<Window, String> {
        Ok(Window {
            proxy: running.sample()?,
            gen: sample(std::process::id())?,
            echo: running.echo_pid().and_then(|p| sys::sample(p).ok()),
        })
    }
}

/// (utime+stime µs, schedstat µs, CPU percent by utime+stime).
pub(crate) fn cpu(a: &ProcSample, b: &ProcSample) -> (u64, f64, f64) {
    let us = b.cpu_us.saturating_sub(a.cpu_us);
    let sched = b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1000.0;
    let wall = b.at.duration_since(a.at).as_secs_f64() * 1e6;
    (
        us,
        sched,
        if wall > 0.0 {
            100.0 * us as f64 / wall
        } else {
            0.0
        },
    )
}

/// Ends a measured run: keeps the generator's errors, drops its
/// connections and stops the target. Returns the errors and the target's
/// command line; or, when the target had died before the end, the tail of
/// its log, for the caller to report.
pub(crate) fn finish_run(gen: &mut Gen, mut running: Running) -> Result<(Errors, String), String> {
    let errors = gen.errors.clone();
    gen.abort_all();
    let alive = running.alive();
    let command = running.command.clone();
    let tail = running.log_tail();
    running.stop();
    if alive {
        Ok((errors, command))
    } else {
        Err(tail)
    }
}

fn setup_error(gen: &Gen, running: &mut Running, what: &str, open: usize, wanted: usize) -> String {
    let mut msg = format!(
        "{}: only {open} of {wanted} {what} connected",
        running.kind.name()
    );
    if gen.errors.count > 0 {
        msg.push_str(&format!(
            " ({} errors, e.g. {})",
            gen.errors.count,
            gen.errors.samples.join("; ")
        ));
    }
    if !running.alive() {
        msg.push_str(&format!(
            "\n{} exited:\n{}",
            running.kind.name(),
            running.log_tail()
        ));
    }
    msg
}
