//! `relay-bench`: the load benchmark of pyrycode-relay.
//!
//! It starts what it measures (the relay, or HAProxy in front of the
//! bench's own echo server), pins the proxy to one CPU and its simulated
//! peers to another, loads it through real WebSockets on loopback, and
//! reports throughput, latency percentiles, proxy CPU time per forwarded
//! message and memory per connection. `relay-bench` with no subcommand
//! runs the default suite (`make bench`). `--tls` runs every scenario over
//! TLS against both targets (`make bench-tls`); `--url` loads a relay that
//! is already running and reports what its clients see.

mod echo_server;
mod fd_exhaustion;
mod gen;
mod report;
mod scale;
mod scenario;
mod soak;
mod sys;
mod target;
mod tls;
mod transport;
mod upgrade;
mod url;
mod wsproto;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use scenario::{fmt_count, Env, Load, Measurement};
use target::{Kind, Launch};

#[derive(Parser, Debug)]
#[command(
    name = "relay-bench",
    version,
    about = "Load benchmark of pyrycode-relay, side by side with HAProxy. \
             Without a subcommand it runs the default suite."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The default suite: idle memory, echo (closed and open loop), churn,
    /// fanout; each against the relay and HAProxy, alternating.
    Suite(SuiteArgs),
    /// Open N phones over B binaries and hold them: relay RSS growth per
    /// connection.
    Idle(IdleArgs),
    /// Phones send, binaries answer: messages/s, round-trip latency, proxy
    /// CPU per forwarded message, proxy RSS.
    Echo(EchoArgs),
    /// Binaries push to their phones (relay only).
    Fanout(FanoutArgs),
    /// Phones connect, exchange one message, disconnect, continuously:
    /// upgrades/s and upgrade latency; RSS before, at peak and at rest.
    Churn(ChurnArgs),
    /// The relay out of file descriptors (low RLIMIT_NOFILE, more
    /// connections than that): its CPU use and wake-ups while accepting is
    /// paused, and how fast it serves once descriptors come back.
    FdExhaustion(FdExhaustionArgs),
    /// SIGUSR2 in the middle of an echo load: the pause of an in-place
    /// upgrade, frames lost and connections closed (relay only).
    Upgrade(UpgradeArgs),
    /// Idle phones, echo and churn together for a long time (relay only):
    /// RSS sampled throughout, an upward trend over the last half flagged.
    Soak(SoakArgs),
    /// Three relays behind two peered HAProxy balancers (deploy/haproxy.cfg):
    /// routing, a relay killed and restarted, a rolling restart
    /// (`make test-scale`).
    ScaleTest(scale::ScaleArgs),
    /// What HAProxy in front of a relay costs (deploy/haproxy.cfg), beside
    /// the same relay reached directly: CPU per message and per
    /// connection, memory per connection, latency.
    Balanced(scale::capacity::BalancedArgs),
    /// The plain WebSocket echo server behind HAProxy (started by the bench).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Baseline {
    /// The relay only.
    None,
    /// The relay and HAProxy (fails if HAProxy is missing).
    Haproxy,
    /// HAProxy too when it is installed.
    Auto,
    /// HAProxy alone, no relay (its own figures).
    Only,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The relay executable [default: the workspace's target/release/pyrycode-relay].
    #[arg(long, value_name = "PATH")]
    relay: Option<PathBuf>,
    /// An extra flag for the relay (repeat for more), e.g. --relay-arg=--ping-interval=1s.
    #[arg(long = "relay-arg", value_name = "FLAG", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// The relay's --log-level during runs.
    #[arg(long, default_value = "warn")]
    relay_log_level: String,
    /// The HAProxy executable.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    /// Loopback source addresses the simulated peers dial from
    /// (127.0.0.2 and up), to stay clear of ephemeral-port limits.
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// CPU the proxy (relay or HAProxy) is pinned to.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// CPU the generator and the echo server are pinned to.
    #[arg(long, default_value_t = 1)]
    gen_cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Write every figure to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Less progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Every scenario over TLS: one ECDSA P-256 certificate made for the
    /// run, served by the relay (--https-listen, --tls-cert) and by HAProxy
    /// (bind … ssl crt); the peers check it and never resume a session.
    #[arg(long, conflicts_with = "url")]
    tls: bool,
    /// Load a relay that is already running at ws://host:port or
    /// wss://host:port: nothing is started or pinned on its side, and only
    /// client-side figures are reported (throughput, latency, errors).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Let --url point outside 127.0.0.0/8.
    #[arg(long, requires = "url")]
    allow_remote: bool,
    /// With --url wss://: trust the certificates in this PEM file instead
    /// of Mozilla's roots.
    #[arg(long, value_name = "FILE", requires = "url")]
    tls_ca: Option<PathBuf>,
}

/// The echo runs' phones and their closed loops, the same flags in
/// `suite` and `balanced`.
#[derive(Args, Debug)]
pub(crate) struct EchoPopulation {
    /// Phones of the echo runs (and of the suite's fanout run).
    #[arg(long, default_value_t = 1000)]
    pub phones: usize,
    /// Phones per binary (the relay's per-server-id population).
    #[arg(long, default_value_t = 16)]
    pub phones_per_binary: usize,
    /// Phone message size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Closed-loop runs: messages each phone keeps in flight (one run each).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub in_flight: Vec<usize>,
}

#[derive(Args, Debug)]
struct SuiteArgs {
    #[command(flatten)]
    common: Common,
    /// Compare with HAProxy.
    #[arg(long, value_enum, default_value = "auto")]
    baseline: Baseline,
    /// Write the latency chart (SVG) here.
    #[arg(long, value_name = "FILE", default_value = "target/bench/latency.svg")]
    svg: PathBuf,
    #[command(flatten)]
    echo: EchoPopulation,
    /// Open-loop total rates (echoes/s) of the latency chart.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,30000")]
    rates: Vec<f64>,
    /// Phone counts of the idle runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle_phones: Vec<usize>,
    /// Concurrent phone lifecycles of the churn runs.
    #[arg(long, default_value_t = 64)]
    churn_concurrency: usize,
    /// How long the relay rests after each churn run before its RSS at
    /// rest is read.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    churn_rest: Duration,
    /// Measured window of each closed-loop and churn run.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    duration: Duration,
    /// Measured window of each open-loop run.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    open_duration: Duration,
    /// Load before each measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long idle connections are held before memory is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    hold: Duration,
    /// Skip the fanout run.
    #[arg(long)]
    no_fanout: bool,
    /// Message size of the extra large-message echo run (0: skip it).
    #[arg(long, default_value_t = 16384)]
    large_size: usize,
    /// Phones of the large-message echo run.
    #[arg(long, default_value_t = 100)]
    large_phones: usize,
    /// Messages in flight per phone in the large-message echo run.
    #[arg(long, default_value_t = 4)]
    large_in_flight: usize,
}

#[derive(Args, Debug)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Measure HAProxy too, alternating with the relay.
    #[arg(long, value_enum, default_value = "none")]
    baseline: Baseline,
    /// Phone counts, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    phones: Vec<usize>,
    /// Phones per simulated binary (server-id).
    #[arg(long, default_value_t = 16)]
    phones_per_binary: usize,
    /// How long connections are held before memory is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    hold: Duration,
}

#[derive(Args, Debug)]
struct UpgradeArgs {
    #[command(flatten)]
    common: Common,
    /// Connection counts (binaries and phones together), one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    connections: Vec<usize>,
    /// Phones that echo through their binaries during the run.
    #[arg(long, default_value_t = 1000)]
    echo_phones: usize,
    /// Echoes per second, all echoing phones together.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Phone message size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Load before the signal.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    before: Duration,
    /// Load after the signal.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    after: Duration,
}

#[derive(Args, Debug)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Measure HAProxy too, alternating with the relay.
    #[arg(long, value_enum, default_value = "none")]
    baseline: Baseline,
    /// Simulated phones.
    #[arg(long, default_value_t = 1000)]
    phones: usize,
    /// Phones per simulated binary (server-id).
    #[arg(long, default_value_t = 16)]
    phones_per_binary: usize,
    /// Phone message size in bytes (a padded noise_msg JSON frame).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Closed loop: messages each phone keeps in flight (one run each).
    #[arg(long, value_delimiter = ',')]
    in_flight: Vec<usize>,
    /// Open loop: total messages per second (one run each).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Measured window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Write the latency chart (SVG, open-loop runs) here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Simulated phones.
    #[arg(long, default_value_t = 1000)]
    phones: usize,
    /// Phones per simulated binary (server-id).
    #[arg(long, default_value_t = 16)]
    phones_per_binary: usize,
    /// Phone message size in bytes (a padded noise_msg JSON frame).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Pushes each phone has in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Measured window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
}

#[derive(Args, Debug)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Measure HAProxy too, alternating with the relay.
    #[arg(long, value_enum, default_value = "none")]
    baseline: Baseline,
    /// Phone lifecycles in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Binaries the churning phones address (relay).
    #[arg(long, default_value_t = 4)]
    binaries: usize,
    /// Phone message size in bytes (a padded noise_msg JSON frame).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Measured window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long the relay rests (binaries only) after the churn before
    /// its RSS at rest is read.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    rest: Duration,
}

#[derive(Args, Debug)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// How long the mixed load runs.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// RSS sampling interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Phones that only hold their connection.
    #[arg(long, default_value_t = 1000)]
    idle_phones: usize,
    /// Phones that take turns sending at --rate.
    #[arg(long, default_value_t = 100)]
    echo_phones: usize,
    /// Phones per simulated binary (server-id).
    #[arg(long, default_value_t = 16)]
    phones_per_binary: usize,
    /// Echoes per second over all echo phones (open loop; 0: no echo).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Churning phone lifecycles in progress at most (0: no churn).
    #[arg(long, default_value_t = 16)]
    churn_concurrency: usize,
    /// New churning lifecycles per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 1000.0)]
    churn_rate: f64,
    /// Phone message size in bytes (a padded noise_msg JSON frame).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// How long the relay rests after the load before its RSS at rest is read.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    rest: Duration,
}

#[derive(Args, Debug)]
struct FdExhaustionArgs {
    #[command(flatten)]
    common: Common,
    /// The relay's RLIMIT_NOFILE (soft and hard).
    #[arg(long, default_value_t = 64)]
    fd_limit: u64,
    /// Connections opened at once (more than the limit).
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Measured window while accepting is paused.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
}

/// `5s`, `500ms`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("{text:?}: write a duration like 5s, 500ms or 2m"));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: not a duration"))?;
    if !(0.0..=86400.0).contains(&(v * mult)) {
        return Err(format!("{text:?}: between 0 and 24 hours"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Everything the run needs, set up once: limits, pinning, work dir.
struct Setup {
    env: Env,
    machine: Value,
    json: Option<PathBuf>,
}

fn setup(common: &Common) -> Result<Setup, String> {
    let fd_limit = sys::raise_nofile();
    let cpus = sys::online_cpus();
    let mut pin = !common.no_pin && cpus >= 2;
    let pin_note = if common.no_pin {
        "not pinned (--no-pin)".to_string()
    } else if !pin {
        format!("not pinned: only {cpus} CPU available")
    } else if let Err(e) = sys::pin_current_thread(common.gen_cpu) {
        pin = false;
        format!(
            "not pinned: cannot pin the generator to CPU {}: {e}",
            common.gen_cpu
        )
    } else {
        format!(
            "proxy pinned to CPU {}, generator and echo server to CPU {} (sched_setaffinity)",
            common.proxy_cpu, common.gen_cpu
        )
    };
    if common.sources == 0 || common.sources > 200 {
        return Err("--sources must be between 1 and 200".into());
    }
    let sources: Vec<Ipv4Addr> = (0..common.sources)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect();
    let workdir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let TransportPlan {
        remote,
        pki,
        client: tls_client,
    } = transport_setup(common, &workdir)?;
    let sources = match &remote {
        Some(r) => r.sources(&sources),
        None => sources,
    };
    let relay = common
        .relay
        .clone()
        .unwrap_or_else(target::default_relay_path);
    let launch = Launch {
        relay: relay.clone(),
        relay_args: common.relay_args.clone(),
        relay_log_level: common.relay_log_level.clone(),
        haproxy: common.haproxy.clone(),
        proxy_cpu: pin.then_some(common.proxy_cpu),
        gen_cpu: pin.then_some(common.gen_cpu),
        workdir,
        tls: pki.as_ref().map(|p| p.files.clone()),
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let relay_source = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let machine = json!({
        "workspace_git": relay_source,
        "cpus": cpus,
        "cpu_model": cpu_model,
        "kernel": kernel,
        "load_average_at_start": loadavg(),
        "open_file_limit": fd_limit,
        "ephemeral_ports": sys::ephemeral_ports(),
        "source_addresses": sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "pinning": pin_note,
        "relay": relay.display().to_string(),
        "relay_log_level": common.relay_log_level,
        "relay_extra_args": common.relay_args,
        "transport": if tls_client.is_some() { "tls" } else { "plain" },
        "url": remote.as_ref().map(|r| r.url.clone()),
    });
    if !common.quiet {
        eprintln!("relay-bench: {pin_note}");
        eprintln!(
            "relay-bench: open-file limit {fd_limit} per process; {} source addresses 127.0.0.2–{}; relay {}",
            sources.len(),
            sources.last().expect("at least one"),
            relay.display()
        );
        eprintln!("relay-bench: load average {}", loadavg());
        if let Some(r) = &remote {
            eprintln!(
                "relay-bench: target {} ({}), already running: client-side figures only",
                r.url, r.addr
            );
        }
    }
    let mut env = Env::new(launch, sources, fd_limit, !common.quiet);
    env.tls = tls_client;
    env.remote = remote;
    Ok(Setup {
        env,
        machine,
        json: common.json.clone(),
    })
}

/// Where the peers dial and how, from `--url`, `--tls` and `--tls-ca`.
#[derive(Default)]
struct TransportPlan {
    /// `--url`, resolved and allowed.
    remote: Option<url::Remote>,
    /// `--tls`: the run's certificate, for the targets started.
    pki: Option<tls::Pki>,
    /// The peers' TLS client (`--tls`, or a `wss://` URL).
    client: Option<tls::Client>,
}

fn transport_setup(common: &Common, workdir: &std::path::Path) -> Result<TransportPlan, String> {
    if let Some(text) = &common.url {
        let remote = url::Remote::resolve(text, common.allow_remote)?;
        if common.tls_ca.is_some() && !remote.tls {
            return Err(format!("--tls-ca applies to wss:// URLs, not {text}"));
        }
        let client = if remote.tls {
            let roots = tls::roots_for_url(common.tls_ca.as_deref())?;
            let name = rustls::pki_types::ServerName::try_from(remote.host.clone())
                .map_err(|e| format!("--url {text}: {e}"))?;
            Some(tls::Client::new(roots, name))
        } else {
            None
        };
        return Ok(TransportPlan {
            remote: Some(remote),
            pki: None,
            client,
        });
    }
    if !common.tls {
        return Ok(TransportPlan::default());
    }
    let pki = tls::Pki::generate(workdir)?;
    let client = pki.client()?;
    Ok(TransportPlan {
        remote: None,
        pki: Some(pki),
        client: Some(client),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Decides what runs: the relay (or the `--url` relay, or HAProxy alone
/// with `--baseline only`) and whether HAProxy runs beside it.
fn plan(setup: &mut Setup, runner: &mut Runner, baseline: Baseline) -> Result<bool, String> {
    if setup.env.remote.is_some() {
        runner.primary = Kind::Url;
        return match baseline {
            Baseline::None | Baseline::Auto => Ok(false),
            Baseline::Haproxy | Baseline::Only => {
                Err("--url loads a relay that runs elsewhere; no HAProxy baseline with it".into())
            }
        };
    }
    let haproxy = setup.env.launch.haproxy.clone();
    let available = target::haproxy_available(&haproxy);
    let on = match baseline {
        Baseline::None => false,
        Baseline::Only if !available => {
            return Err(format!(
                "--baseline only: `{haproxy}` cannot be run; install it (Debian: apt-get install -y haproxy) or pass --haproxy PATH"
            ))
        }
        Baseline::Only => {
            runner.primary = Kind::Haproxy;
            true
        }
        Baseline::Haproxy if !available => {
            return Err(format!(
                "--baseline haproxy: `{haproxy}` cannot be run; install it (Debian: apt-get install -y haproxy) or pass --haproxy PATH"
            ))
        }
        Baseline::Haproxy => true,
        Baseline::Auto => {
            if !available {
                eprintln!(
                    "relay-bench: NOTE: HAProxy not found (`{haproxy}`); measuring the relay alone. \
                     Install it (apt-get install -y haproxy) for the side-by-side baseline."
                );
            }
            available
        }
    };
    if on {
        let version = target::haproxy_version(&haproxy);
        setup.machine["haproxy"] = json!(version);
        eprintln!("relay-bench: baseline {version}, nbthread 1, mode http, timeout tunnel");
    }
    Ok(on && runner.primary != Kind::Haproxy)
}

/// Runs `f` for the relay and, with a baseline, for HAProxy: alternating
/// which goes first from one pair to the next.
struct Runner {
    results: Vec<Measurement>,
    failures: Vec<String>,
    pairs: usize,
    /// What is measured: the relay, the `--url` relay, or HAProxy alone.
    primary: Kind,
}

impl Runner {
    /// The targets of one pair.
    fn kinds(&self, with_haproxy: bool) -> Vec<Kind> {
        let mut kinds = vec![self.primary];
        if with_haproxy && self.primary != Kind::Haproxy {
            kinds.push(Kind::Haproxy);
        }
        kinds
    }

    fn pair(
        &mut self,
        env: &mut Env,
        with_haproxy: bool,
        mut f: impl FnMut(&mut Env, Kind) -> Result<Measurement, String>,
    ) {
        let mut kinds = self.kinds(with_haproxy);
        if kinds.len() == 2 {
            if self.pairs % 2 == 1 {
                kinds.reverse();
            }
            self.pairs += 1;
        }
        for kind in kinds {
            match f(env, kind) {
                Ok(m) => {
                    report::progress(&m);
                    self.results.push(m);
                }
                Err(e) => {
                    eprintln!("  FAILED ({}): {e}", kind.name());
                    self.failures.push(format!("{}: {e}", kind.name()));
                }
            }
        }
    }
}

fn finish(
    setup: &Setup,
    runner: &Runner,
    header: &str,
    svg: Option<&PathBuf>,
    title: &str,
) -> ExitCode {
    report::print(&runner.results, header);
    let mut machine = setup.machine.clone();
    let targets = if let Some(client) = &setup.env.tls {
        let log = client.log();
        println!("\n## TLS handshakes (as the clients saw them)");
        for line in log.lines() {
            println!("  {line}");
        }
        machine["tls_handshakes"] = log.json();
        report::tls_targets(&runner.results)
    } else {
        report::targets(&runner.results)
    };
    report::print_targets(&targets);
    machine["load_average_at_end"] = json!(loadavg());
    if let Some(path) = svg {
        match report::write_svg(path, &runner.results, title) {
            Ok(true) => println!("\nchart: {}", path.display()),
            Ok(false) => {}
            Err(e) => {
                eprintln!("relay-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &setup.json {
        if let Err(e) = report::write_json(path, machine, &runner.results) {
            eprintln!("relay-bench: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("json: {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&setup.env.launch.workdir);
    if !runner.failures.is_empty() {
        eprintln!("\nrelay-bench: {} run(s) failed:", runner.failures.len());
        for f in &runner.failures {
            eprintln!("  {f}");
        }
        return ExitCode::FAILURE;
    }
    let errors: u64 = runner.results.iter().map(|m| m.errors.count).sum();
    if errors > 0 {
        eprintln!("\nrelay-bench: {errors} protocol or connection errors during the runs (see the errors column)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn header(setup: &Setup) -> String {
    let mut text = format!(
        "# relay-bench — {} CPUs ({}), kernel {}; {}",
        setup.machine["cpus"],
        setup.machine["cpu_model"].as_str().unwrap_or(""),
        setup.machine["kernel"].as_str().unwrap_or(""),
        setup.machine["pinning"].as_str().unwrap_or("")
    );
    if let Some(remote) = &setup.env.remote {
        text.push_str(&format!(
            "\n# target {} ({}), already running: client-side figures only (no proxy CPU or memory)",
            remote.url, remote.addr
        ));
    } else if setup.env.tls.is_some() {
        text.push_str(
            "\n# over TLS: one ECDSA P-256 certificate made for the run, served by the relay \
             (--https-listen, --tls-cert) and by HAProxy (bind … ssl crt, TLS 1.2+1.3, alpn http/1.1); \
             clients: rustls (ring), SNI checked, no session resumption",
        );
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = match cli.cmd {
        Some(cmd) => cmd,
        None => match Cli::parse_from(["relay-bench", "suite"]).cmd {
            Some(cmd) => cmd,
            None => unreachable!("suite was given"),
        },
    };
    let result = run(cmd);
    // The phase logs and HAProxy configurations of this run.
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("relay-bench-{}", std::process::id())),
    );
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    let started = Instant::now();
    let mut runner = Runner {
        results: Vec::new(),
        failures: Vec::new(),
        pairs: 0,
        primary: Kind::Relay,
    };
    let code = match cmd {
        Cmd::Upgrade(a) => {
            own_relay_only(&a.common, "upgrade", false)?;
            let mut setup = setup(&a.common)?;
            let mut outcomes = Vec::new();
            for &connections in &a.connections {
                let plan = upgrade::Plan {
                    connections,
                    echo_phones: a.echo_phones.min(connections * 16 / 17),
                    rate: a.rate,
                    size: a.size,
                    before: a.before,
                    after: a.after,
                };
                outcomes.push((upgrade::run(&mut setup.env, &plan)?, plan));
            }
            for (outcome, plan) in &outcomes {
                upgrade::print(std::slice::from_ref(outcome), plan);
            }
            if let Some(path) = &setup.json {
                let runs: Vec<Value> = outcomes.iter().map(|(o, _)| o.json()).collect();
                let doc = json!({"machine": setup.machine, "upgrade": runs});
                std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let clean = outcomes.iter().all(|(o, _)| o.lost == 0 && o.closed == 0);
            return Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Soak(a) => return soak(a),
        Cmd::ScaleTest(a) => return Ok(scale::run(a)),
        Cmd::Balanced(a) => return scale::capacity::run(a),
        Cmd::EchoServer { listen } => {
            echo_server::run(listen).map_err(|e| format!("echo server: {e}"))?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Suite(a) => {
            let mut setup = setup(&a.common)?;
            let ha = plan(&mut setup, &mut runner, a.baseline)?;
            let env = &mut setup.env;
            let idle_phones = if runner.primary == Kind::Url {
                eprintln!("== idle: skipped (--url: no relay process to read memory from)");
                &[][..]
            } else {
                eprintln!("== idle");
                &a.idle_phones[..]
            };
            for &n in idle_phones {
                let ha_n = if ha || runner.primary == Kind::Haproxy {
                    let max = env.max_phones(Kind::Haproxy, 1) / 100 * 100;
                    if n > max {
                        eprintln!(
                            "  NOTE: {} phones through HAProxy need {} sockets in one process (2 per proxied client) \
                             but the open-file limit is {}: HAProxy is measured at {} phones instead",
                            fmt_count(n as f64),
                            fmt_count(2.0 * n as f64),
                            env.fd_limit,
                            fmt_count(max as f64)
                        );
                    }
                    n.min(max)
                } else {
                    n
                };
                runner.pair(env, ha, |env, kind| {
                    let phones = if kind == Kind::Haproxy { ha_n } else { n };
                    env.idle(kind, phones, a.echo.phones_per_binary, a.hold)
                });
            }
            eprintln!("== echo, closed loop");
            for &k in &a.echo.in_flight {
                runner.pair(env, ha, |env, kind| {
                    env.traffic(
                        kind,
                        false,
                        a.echo.phones,
                        a.echo.phones_per_binary,
                        a.echo.size,
                        Load::Closed(k),
                        a.warmup,
                        a.duration,
                    )
                });
            }
            eprintln!("== echo, open loop");
            for &r in &a.rates {
                runner.pair(env, ha, |env, kind| {
                    let warm = a.warmup.min(Duration::from_millis(500));
                    env.traffic(
                        kind,
                        false,
                        a.echo.phones,
                        a.echo.phones_per_binary,
                        a.echo.size,
                        Load::Open(r),
                        warm,
                        a.open_duration,
                    )
                });
            }
            if a.large_size > 0 {
                eprintln!("== echo, large messages");
                runner.pair(env, ha, |env, kind| {
                    env.traffic(
                        kind,
                        false,
                        a.large_phones,
                        a.echo.phones_per_binary,
                        a.large_size,
                        Load::Closed(a.large_in_flight.max(1)),
                        a.warmup,
                        a.duration,
                    )
                });
            }
            eprintln!("== churn");
            runner.pair(env, ha, |env, kind| {
                env.churn(
                    kind,
                    a.churn_concurrency,
                    4,
                    a.echo.size,
                    a.warmup,
                    a.duration,
                    a.churn_rest,
                )
            });
            if !a.no_fanout && runner.primary != Kind::Haproxy {
                eprintln!("== fanout");
                runner.pair(env, false, |env, kind| {
                    env.traffic(
                        kind,
                        true,
                        a.echo.phones,
                        a.echo.phones_per_binary,
                        a.echo.size,
                        Load::Closed(1),
                        a.warmup,
                        a.duration,
                    )
                });
            }
            let title = format!(
                "echo round-trip latency vs offered load — {} phones, {} B; relay solid, HAProxy dashed",
                a.echo.phones, a.echo.size
            );
            let h = header(&setup);
            let code = finish(&setup, &runner, &h, Some(&a.svg), &title);
            eprintln!(
                "relay-bench: suite took {:.0} s",
                started.elapsed().as_secs_f64()
            );
            code
        }
        Cmd::Idle(a) => {
            if a.common.url.is_some() {
                return Err(
                    "idle measures the relay's memory; with --url there is no process to read \
                     (use echo, fanout or churn)"
                        .into(),
                );
            }
            let mut setup = setup(&a.common)?;
            let ha = plan(&mut setup, &mut runner, a.baseline)?;
            for &n in &a.phones {
                for kind in runner.kinds(ha) {
                    let max = setup.env.max_phones(kind, a.phones_per_binary);
                    if n > max {
                        return Err(format!(
                            "{} phones cannot fit against {}: {}",
                            fmt_count(n as f64),
                            kind.name(),
                            setup
                                .env
                                .check_fit(
                                    kind,
                                    n,
                                    if kind.is_relay() {
                                        n.div_ceil(a.phones_per_binary)
                                    } else {
                                        0
                                    }
                                )
                                .err()
                                .unwrap_or_else(|| format!("at most {max} fit"))
                        ));
                    }
                }
                runner.pair(&mut setup.env, ha, |env, kind| {
                    env.idle(kind, n, a.phones_per_binary, a.hold)
                });
            }
            finish(&setup, &runner, &header(&setup), None, "")
        }
        Cmd::Echo(a) => {
            let mut setup = setup(&a.common)?;
            let ha = plan(&mut setup, &mut runner, a.baseline)?;
            for kind in runner.kinds(ha) {
                let binaries = if kind.is_relay() {
                    a.phones.div_ceil(a.phones_per_binary)
                } else {
                    0
                };
                setup.env.check_fit(kind, a.phones, binaries)?;
            }
            let mut loads: Vec<Load> = a
                .in_flight
                .iter()
                .map(|&k| Load::Closed(k.max(1)))
                .collect();
            loads.extend(a.rate.iter().map(|&r| Load::Open(r.max(1.0))));
            if loads.is_empty() {
                loads.push(Load::Closed(1));
            }
            for load in loads {
                runner.pair(&mut setup.env, ha, |env, kind| {
                    env.traffic(
                        kind,
                        false,
                        a.phones,
                        a.phones_per_binary,
                        a.size,
                        load,
                        a.warmup,
                        a.duration,
                    )
                });
            }
            let title = format!(
                "echo round-trip latency vs offered load — {} phones, {} B; relay solid, HAProxy dashed",
                a.phones, a.size
            );
            finish(&setup, &runner, &header(&setup), a.svg.as_ref(), &title)
        }
        Cmd::Fanout(a) => {
            let mut setup = setup(&a.common)?;
            plan(&mut setup, &mut runner, Baseline::None)?;
            setup.env.check_fit(
                runner.primary,
                a.phones,
                a.phones.div_ceil(a.phones_per_binary),
            )?;
            runner.pair(&mut setup.env, false, |env, kind| {
                env.traffic(
                    kind,
                    true,
                    a.phones,
                    a.phones_per_binary,
                    a.size,
                    Load::Closed(a.in_flight.max(1)),
                    a.warmup,
                    a.duration,
                )
            });
            finish(&setup, &runner, &header(&setup), None, "")
        }
        Cmd::Churn(a) => {
            let mut setup = setup(&a.common)?;
            let ha = plan(&mut setup, &mut runner, a.baseline)?;
            runner.pair(&mut setup.env, ha, |env, kind| {
                env.churn(
                    kind,
                    a.concurrency.max(1),
                    a.binaries,
                    a.size,
                    a.warmup,
                    a.duration,
                    a.rest,
                )
            });
            finish(&setup, &runner, &header(&setup), None, "")
        }
        Cmd::FdExhaustion(a) => {
            own_relay_only(&a.common, "fd-exhaustion", false)?;
            let setup = setup(&a.common)?;
            let m = fd_exhaustion::measure(
                &setup.env.launch,
                a.fd_limit,
                a.connections,
                a.duration,
                !a.common.quiet,
            )?;
            m.print(&header(&setup));
            if let Some(path) = &setup.json {
                let mut machine = setup.machine.clone();
                machine["load_average_at_end"] = json!(loadavg());
                m.write_json(path, machine)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                println!("json: {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&setup.env.launch.workdir);
            ExitCode::SUCCESS
        }
    };
    Ok(code)
}

fn soak(a: SoakArgs) -> Result<ExitCode, String> {
    if a.interval.is_zero() {
        return Err("--interval must be more than 0".into());
    }
    own_relay_only(&a.common, "soak", true)?;
    let mut setup = setup(&a.common)?;
    let params = soak::SoakParams {
        duration: a.duration,
        interval: a.interval,
        idle_phones: a.idle_phones,
        echo_phones: a.echo_phones,
        phones_per_binary: a.phones_per_binary.max(1),
        rate: a.rate.max(0.0),
        churn_concurrency: a.churn_concurrency,
        churn_rate: a.churn_rate.max(0.0),
        size: a.size,
        rest: a.rest,
    };
    let result = setup.env.soak(&params)?;
    result.print(&header(&setup));
    if let Some(path) = &setup.json {
        let mut machine = setup.machine.clone();
        machine["load_average_at_end"] = json!(loadavg());
        let doc = json!({"machine": machine, "soak": result.json()});
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("json: {}", path.display());
    }
    if result.errors.count > 0 {
        eprintln!(
            "\nrelay-bench: {} protocol or connection errors during the soak: {}",
            result.errors.count,
            result.errors.samples.join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if result.trend.verdict == soak::Verdict::Upward {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses `--url` for a subcommand that starts its own relay, and `--tls`
/// for one that measures plain connections only.
fn own_relay_only(common: &Common, what: &str, over_tls: bool) -> Result<(), String> {
    if common.url.is_some() {
        return Err(format!(
            "{what} starts and watches its own relay; --url is not supported"
        ));
    }
    if common.tls && !over_tls {
        return Err(format!(
            "{what} measures plain connections; --tls is not supported"
        ));
    }
    Ok(())
}
