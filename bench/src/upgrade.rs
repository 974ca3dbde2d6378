//! `relay-bench upgrade`: the pause of an in-place upgrade (SIGUSR2,
//! issue #12) under load.
//!
//! For each connection count: open that many connections (binaries and
//! phones, 16 phones per binary), of which `--echo-phones` phones echo
//! through their binaries at a fixed total rate (open loop, each round
//! trip timed from its scheduled send); the rest only hold (a second
//! generator on its own thread). After `--before`, SIGUSR2 re-executes
//! the relay in place; the load runs on for `--after`, then stops and
//! every message in flight is waited for.
//!
//! Reported: the largest round trip before and around the upgrade,
//! frames lost (sent and never echoed: must be 0), connections closed
//! (must be 0), and the pause the relay measured from the moment it
//! stopped serving (state written) to the moment the new image had read
//! it back and restored the loop (its `handover_restored … pause_ms=`
//! log line).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gen::{Gen, Mode, Target};
use crate::scenario::{fmt_count, Env};
use crate::target::Running;

/// Phones per binary, as in the other scenarios.
const PHONES_PER_BINARY: usize = 16;

/// How long the echo and the holding populations each have to connect.
const POPULATE_WITHIN: Duration = Duration::from_secs(120);

/// What one run is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub connections: usize,
    pub echo_phones: usize,
    /// Echoes per second, all echoing phones together.
    pub rate: f64,
    pub size: usize,
    pub before: Duration,
    pub after: Duration,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub connections: usize,
    pub pause_ms: Option<f64>,
    pub pause_cpu_ms: Option<f64>,
    pub snapshot_ms: Option<f64>,
    pub state_bytes: Option<u64>,
    pub max_rtt_before_ms: f64,
    pub max_rtt_around_ms: f64,
    pub p99_around_ms: f64,
    pub sent: u64,
    pub echoed: u64,
    pub lost: u64,
    pub closed: usize,
    pub errors: Vec<String>,
    pub load: String,
    /// The relay's own account: its `upgrade_prepared`, `upgrade_exec` and
    /// `handover_restored` log lines (where the pause went).
    pub relay_lines: Vec<String>,
}

impl Outcome {
    pub fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "pause_ms": self.pause_ms,
            "pause_cpu_ms": self.pause_cpu_ms,
            "snapshot_ms": self.snapshot_ms,
            "state_bytes": self.state_bytes,
            "max_rtt_before_ms": self.max_rtt_before_ms,
            "max_rtt_around_upgrade_ms": self.max_rtt_around_ms,
            "p99_rtt_around_upgrade_ms": self.p99_around_ms,
            "sent": self.sent,
            "echoed": self.echoed,
            "frames_lost": self.lost,
            "connections_closed": self.closed,
            "errors": self.errors,
            "load_average": self.load,
            "relay_log": self.relay_lines,
        })
    }
}

/// Splits `connections` into binaries and phones (16 phones per binary).
fn population(connections: usize) -> (usize, usize) {
    let binaries = connections.div_ceil(PHONES_PER_BINARY + 1);
    (binaries, connections - binaries)
}

fn generator(running: &Running, mode: Mode, size: usize, env: &Env) -> Result<Gen, String> {
    let target = Target {
        addr: running.addr,
        host: running.addr.to_string(),
        relay: true,
        tls: None,
    };
    Gen::new(target, mode, size, env.sources.clone()).map_err(|e| format!("generator: {e}"))
}

/// The holders: a generator on its own thread that only keeps its
/// connections (answering pings) until told to stop; returns how many
/// it still had open, and its errors.
fn spawn_holders(
    mut gen: Gen,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(usize, Vec<String>, u64)> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            gen.turn(Duration::from_millis(20));
        }
        let open = gen.open_binaries + gen.open_phones;
        let errors = (gen.errors.samples.clone(), gen.errors.count);
        gen.abort_all();
        (open, errors.0, errors.1)
    })
}

/// One run: a fresh relay, `plan.connections` connections, the upgrade.
pub fn run(env: &mut Env, plan: &Plan) -> Result<Outcome, String> {
    let mut launch = env.launch.clone();
    launch.relay_log_level = "info".into();
    let running = launch.relay(PHONES_PER_BINARY, &format!("upgrade-{}", plan.connections))?;
    let echo_binaries = plan.echo_phones.div_ceil(PHONES_PER_BINARY);
    let (hold_binaries, hold_phones) = population(
        plan.connections
            .saturating_sub(plan.echo_phones + echo_binaries),
    );
    eprintln!(
        "  upgrade: {} connections ({} echoing phones over {echo_binaries} binaries; {hold_phones} phones over {hold_binaries} binaries holding)",
        fmt_count(plan.connections as f64),
        plan.echo_phones
    );
    let mut echo = generator(&running, Mode::Echo, plan.size, env)?;
    echo.connect_all(echo_binaries, plan.echo_phones, POPULATE_WITHIN)?;
    let mut hold = generator(&running, Mode::Idle, 64, env)?;
    hold.connect_all(hold_binaries, hold_phones, POPULATE_WITHIN)?;
    let held = hold_binaries + hold_phones;
    let stop = Arc::new(AtomicBool::new(false));
    let holders = spawn_holders(hold, stop.clone());

    echo.start_open_loop(plan.rate);
    echo.run_until(Instant::now() + plan.before, |_| false);
    let before = std::mem::replace(&mut echo.stats, crate::gen::Stats::new());
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(running.pid() as libc::pid_t, libc::SIGUSR2) };
    echo.run_until(Instant::now() + plan.after, |_| false);
    echo.stop_sending();
    let sent = before.sent + echo.stats.sent;
    echo.run_until(Instant::now() + Duration::from_secs(10), |g| {
        before.completed + g.stats.completed >= sent
    });
    let echoed = before.completed + echo.stats.completed;
    let echo_open = echo.open_binaries + echo.open_phones;
    stop.store(true, Ordering::SeqCst);
    let (held_open, mut errors, hold_error_count) =
        holders.join().map_err(|_| "the holders' thread panicked")?;
    errors.extend(echo.errors.samples.iter().cloned());
    let closed = (echo_binaries + plan.echo_phones - echo_open) + (held - held_open);
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let log = std::fs::read_to_string(running.log_path()).unwrap_or_default();
    let outcome = Outcome {
        connections: plan.connections,
        pause_ms: logged(&log, "handover_restored", "pause_ms"),
        pause_cpu_ms: logged(&log, "handover_restored", "pause_cpu_ms"),
        snapshot_ms: logged(&log, "upgrade_exec", "snapshot_ms"),
        state_bytes: logged(&log, "upgrade_exec", "state_bytes").map(|b| b as u64),
        max_rtt_before_ms: ms(before.latency.max()),
        max_rtt_around_ms: ms(echo.stats.latency.max()),
        p99_around_ms: ms(echo.stats.latency.value_at_quantile(0.99)),
        sent,
        echoed,
        lost: sent.saturating_sub(echoed),
        closed,
        errors,
        relay_lines: log
            .lines()
            .filter(|l| {
                ["upgrade_prepared", "upgrade_exec", "handover_restored"]
                    .iter()
                    .any(|event| l.contains(event))
            })
            .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest).to_string())
            .collect(),
        load: std::fs::read_to_string("/proc/loadavg")
            .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    };
    if outcome.pause_ms.is_none() {
        eprintln!(
            "  upgrade: no handover_restored line; relay log:\n{}",
            running.log_tail()
        );
    }
    let _ = hold_error_count;
    echo.abort_all();
    running.stop();
    Ok(outcome)
}

/// The number after `key=` on the last log line containing `event`.
fn logged(log: &str, event: &str, key: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(event))?;
    let rest = line.split(&format!(" {key}=")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The table printed for every run.
pub fn print(outcomes: &[Outcome], plan: &Plan) {
    println!(
        "relay-bench upgrade: {} echoing phones at {} echoes/s total, {} B; SIGUSR2 after {:.0} s, load on for {:.0} s after",
        plan.echo_phones,
        plan.rate,
        plan.size,
        plan.before.as_secs_f64(),
        plan.after.as_secs_f64()
    );
    println!(
        "{:>12} {:>10} {:>10} {:>12} {:>11} {:>14} {:>16} {:>12} {:>8} {:>8}  load",
        "connections",
        "pause ms",
        "CPU ms",
        "snapshot ms",
        "state KiB",
        "max RTT before",
        "max RTT around",
        "p99 around",
        "lost",
        "closed"
    );
    for o in outcomes {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:>12} {:>10} {:>10} {:>12} {:>11} {:>11.1} ms {:>13.1} ms {:>9.1} ms {:>8} {:>8}  {}",
            fmt_count(o.connections as f64),
            opt(o.pause_ms),
            opt(o.pause_cpu_ms),
            opt(o.snapshot_ms),
            o.state_bytes
                .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1024.0)),
            o.max_rtt_before_ms,
            o.max_rtt_around_ms,
            o.p99_around_ms,
            o.lost,
            o.closed,
            o.load
        );
        for line in &o.relay_lines {
            println!("{:>12} relay: {line}", "");
        }
        if !o.errors.is_empty() {
            println!("{:>12} errors: {:?}", "", o.errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populations_add_up() {
        for n in [10, 1000, 8937, 10_000] {
            let (b, p) = population(n);
            assert_eq!(b + p, n);
            assert!(
                p <= b * PHONES_PER_BINARY,
                "{n}: {b} binaries for {p} phones"
            );
        }
    }

    #[test]
    fn figures_are_read_from_the_relays_log() {
        let log = "x INFO handover_restored connections=8 pause_ms=12.5\n";
        assert_eq!(logged(log, "handover_restored", "pause_ms"), Some(12.5));
        assert_eq!(logged(log, "upgrade_exec", "pause_ms"), None);
    }
}
