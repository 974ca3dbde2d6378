//! `relay-bench scale-test`: several relays behind HAProxy, end to end,
//! with an instance failure (`make test-scale`, docs/SCALING.md).
//!
//! Three relay processes and two peered HAProxy balancers run
//! deploy/haproxy.cfg on loopback. Sixty server-ids, each with a simulated
//! binary and three simulated phones, dial the first balancer; the second
//! is only used to check that the stick table is shared. The phases:
//!
//! 1. **route**: every frame reaches the right peer; a binary and its
//!    phones share a relay.
//! 2. **kill**: SIGKILL the relay with most server-ids. Its binaries
//!    reconnect with the real back-off and land on survivors, their phones
//!    exchange again; no other server-id sees a disconnect.
//! 3. **return**: start it again. Phones dialling a moved server-id (on
//!    either balancer) still reach its binary, thanks to the stick table;
//!    the same dial through a control backend without it gets 4404.
//! 3. **hang**: SIGSTOP the busiest relay. The health checks mark it down
//!    and the balancers cut its tunnels; its peers move, the others stay.
//!    SIGCONT, and it is UP again.
//! 4. **rolling restart**: SIGTERM one relay while its peers have frames
//!    in flight; every frame it had accepted (its own counters) is
//!    delivered before its 1001, and its peers recover once it is back.
//! 5. **rebalance**: each relay holding server-ids away from their hash
//!    home has its stick entries cleared and is restarted; every
//!    server-id ends on its home relay again.
//!
//! Real processes and real time: recovery times are measured and printed,
//! and asserted only against the back-off schedule's bounds. Every process
//! started is stopped, on failure too (`Drop` guards). Exit status 0 when
//! every expectation held, 1 with the failed one otherwise, 2 when the
//! test could not run.

pub mod capacity;
mod client;
pub mod haproxy;
mod peers;
mod phases;
mod procs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};

use peers::Fleet;
use procs::{Balancer, Relay, RelayFlags};

/// Whether the balancers speak the PROXY protocol to the relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// On when the relay serves `--proxy-protocol`, off otherwise.
    Auto,
    /// On; fail when the relay does not serve it.
    On,
    /// Off: `send-proxy-v2` removed, the relays' per-IP limits raised.
    Off,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The relay executable [default: the workspace's target/release/pyrycode-relay].
    #[arg(long, value_name = "PATH")]
    relay: Option<PathBuf>,
    /// The HAProxy executable.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    /// PROXY protocol v2 from the balancers to the relays.
    #[arg(long, value_enum, default_value = "auto")]
    proxy: ProxyMode,
    /// Server-ids (each one binary and three phones).
    #[arg(long, default_value_t = 60)]
    server_ids: usize,
    /// Keep the logs and configurations (they are kept anyway on failure).
    #[arg(long)]
    keep: bool,
    /// Fail if the run takes longer than this (the issue: under 2 minutes).
    #[arg(long, default_value = "110s", value_parser = crate::parse_duration)]
    timeout: std::time::Duration,
}

/// Everything a run holds; dropping it stops every peer and process.
pub struct Run {
    fleet: Fleet,
    relays: Vec<Relay>,
    lbs: Vec<Balancer>,
    started: Instant,
    proxy: bool,
    /// Each server-id's relay before anything failed: the hash's choice
    /// (the stick tables were empty).
    homes: Vec<Option<String>>,
}

/// The relays and balancers of a run.
const RELAYS: usize = 3;
const BALANCERS: [&str; 2] = ["lbA", "lbB"];

pub fn run(args: ScaleArgs) -> ExitCode {
    let started = Instant::now();
    let workdir = std::env::temp_dir().join(format!("relay-bench-scale-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        eprintln!("scale-test: {}: {e}", workdir.display());
        return ExitCode::from(2);
    }
    crate::sys::raise_nofile();
    watchdog(args.timeout, workdir.clone());
    println!("scale-test: load average at start {}", loadavg());
    let mut run = match setup(&args, workdir.clone(), started) {
        Ok(run) => run,
        Err(e) => {
            eprintln!(
                "scale-test: cannot run: {e}\n(logs in {})",
                workdir.display()
            );
            return ExitCode::from(2);
        }
    };
    let outcome = run.phases();
    let stopped = run.teardown();
    println!("scale-test: load average at end {}", loadavg());
    let elapsed = started.elapsed().as_secs_f64();
    match outcome.and(stopped) {
        Ok(()) => {
            println!("scale-test: PASS in {elapsed:.1} s");
            if !args.keep {
                let _ = std::fs::remove_dir_all(&workdir);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nscale-test: FAIL after {elapsed:.1} s: {e}");
            eprintln!(
                "scale-test: logs and configurations in {}",
                workdir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Ends the process if the run is stuck: the relays and balancers die
/// with it (`PR_SET_PDEATHSIG`), the logs stay.
fn watchdog(limit: std::time::Duration, workdir: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "\nscale-test: FAIL: not done after {limit:?}; logs in {}",
            workdir.display()
        );
        std::process::exit(1);
    });
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Decides PROXY on or off, says which, and how the relays run.
fn relay_flags(args: &ScaleArgs, workdir: &std::path::Path) -> Result<RelayFlags, String> {
    let exe = args
        .relay
        .clone()
        .unwrap_or_else(crate::target::default_relay_path);
    if !exe.exists() {
        return Err(format!(
            "no relay at {} (make build, or --relay PATH)",
            exe.display()
        ));
    }
    let proxy = match args.proxy {
        ProxyMode::Off => false,
        mode => match procs::relay_serves_proxy(&exe, workdir)? {
            Ok(()) => true,
            Err(why) if mode == ProxyMode::Auto => {
                println!("scale-test: this relay does not serve --proxy-protocol ({why})");
                false
            }
            Err(why) => return Err(format!("--proxy on: {why}")),
        },
    };
    if proxy {
        println!("scale-test: PROXY protocol v2 ON: balancers send-proxy-v2, relays --proxy-protocol with their default per-IP limits (every peer dials from its own address)");
    } else {
        println!("scale-test: PROXY protocol v2 OFF: send-proxy-v2 removed; every client reaches the relays from the balancer's address, so their per-IP limits are raised (--rate-limit-burst, --max-connections-per-ip)");
    }
    Ok(RelayFlags {
        exe,
        proxy,
        raised_ip_limits: !proxy,
    })
}

/// Starts the relays and the two balancers.
fn setup(args: &ScaleArgs, workdir: PathBuf, started: Instant) -> Result<Run, String> {
    if args.server_ids == 0 || args.server_ids > 500 {
        return Err("--server-ids must be between 1 and 500".into());
    }
    let flags = relay_flags(args, &workdir)?;
    let mut relays = Vec::new();
    for i in 1..=RELAYS {
        let mut relay = Relay::new(&format!("relay{i}"), flags.clone(), &workdir)?;
        relay.start()?;
        relays.push(relay);
    }
    println!("scale-test: relays: {}", relays[0].command());
    let lbs = start_balancers(args, &relays, &workdir, flags.proxy)?;
    let fleet = Fleet::new(lbs[0].addr, args.server_ids);
    Ok(Run {
        fleet,
        relays,
        lbs,
        started,
        proxy: flags.proxy,
        homes: Vec::new(),
    })
}

fn start_balancers(
    args: &ScaleArgs,
    relays: &[Relay],
    workdir: &std::path::Path,
    proxy: bool,
) -> Result<Vec<Balancer>, String> {
    let deploy = std::fs::read_to_string(haproxy::deploy_file())
        .map_err(|e| format!("{}: {e}", haproxy::DEPLOY_FILE))?;
    let servers: Vec<(String, std::net::SocketAddr)> =
        relays.iter().map(|r| (r.name.clone(), r.addr)).collect();
    let mut peers = Vec::new();
    for name in BALANCERS {
        peers.push((name.to_string(), procs::free_addr()?));
    }
    let mut lbs = Vec::new();
    for name in BALANCERS {
        let (bind, control) = (procs::free_addr()?, procs::free_addr()?);
        let stats = workdir.join(format!("{name}.sock"));
        let spec = haproxy::Spec {
            bind,
            control_bind: Some(control),
            stats_socket: &stats,
            peers: &peers,
            relays: &servers,
            proxy,
            relay_header: true,
            log: true,
            global_extra: &[],
            maxconn: 4000,
        };
        let config = haproxy::render(&deploy, &spec)?;
        let listen = procs::Listen {
            addr: bind,
            control: Some(control),
            stats,
        };
        lbs.push(Balancer::start(
            &args.haproxy,
            name,
            &config,
            listen,
            workdir,
            None,
        )?);
    }
    println!(
        "scale-test: balancers: {} ({}) from {}, peered; {} relays",
        BALANCERS.join(", "),
        crate::target::haproxy_version(&args.haproxy),
        haproxy::DEPLOY_FILE,
        relays.len()
    );
    Ok(lbs)
}

impl Run {
    /// Stops the peers, the balancers and the relays (SIGTERM, checked).
    fn teardown(&mut self) -> Result<(), String> {
        self.fleet.stop();
        let mut stopped = 0;
        for lb in &mut self.lbs {
            lb.stop();
            stopped += 1;
        }
        let mut problems = Vec::new();
        for relay in &mut self.relays {
            if !relay.running() {
                continue;
            }
            match relay.terminate(std::time::Duration::from_secs(15)) {
                Ok(status) if status.success() => stopped += 1,
                Ok(status) => problems.push(format!("{} exited with {status}", relay.name)),
                Err(e) => problems.push(e),
            }
        }
        println!("scale-test: stopped {stopped} processes (every peer thread joined)");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Where the logs went, and their last lines, after a failure.
    fn show_logs(&self) {
        for relay in &self.relays {
            eprintln!("--- {} log:\n{}", relay.name, relay.log_tail());
        }
        for lb in &self.lbs {
            eprintln!("--- {} log:\n{}", lb.name, lb.log_tail());
        }
    }
}
