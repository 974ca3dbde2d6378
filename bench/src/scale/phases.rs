//! The phases of the scale test, in order: refusals at the balancer,
//! routing, a relay killed, the relay back, a rolling restart. Each phase
//! prints what it measured and returns an error naming the first
//! expectation that failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::Backoff;
use super::haproxy::{CONTROL_BACKEND, MAIN_BACKEND};
use super::peers::{self, Burst, End, Event, Probe, PHONES_PER_ID};
use super::procs;
use super::Run;

/// Attempts within which a binary must be back after its relay died:
/// the balancer redispatches at once, so the first attempt normally
/// lands; three leave room for a loaded machine.
const BINARY_ATTEMPTS: u32 = 3;
/// A phone may dial before its binary is back (4404) and then waits its
/// next, longer, back-off step: one attempt more than a binary.
const PHONE_ATTEMPTS: u32 = BINARY_ATTEMPTS + 1;
/// Time allowed on top of the back-off waits (connects, handshakes, the
/// first echo) on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(3);
/// How long the balancers may take to cut a hung relay's tunnels
/// (deploy/haproxy.cfg: `inter 2s fall 2`; a check times out after
/// `inter`): the next check starts within 2 s of the hang and fails 2 s
/// later, the second starts 2 s after that and fails 2 s later.
const HEALTH_DETECTION: Duration = Duration::from_secs(8);
/// Rolling restart: frames each phone, and each binary to each phone,
/// sends while the relay's peers are not reading.
const PHONE_BURST: Burst = Burst {
    frames: 20,
    size: 512,
};
const BINARY_BURST: Burst = Burst {
    frames: 16,
    size: 16 * 1024,
};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// "min / median / max" of durations.
fn spread(mut ds: Vec<Duration>) -> String {
    if ds.is_empty() {
        return "-".into();
    }
    ds.sort();
    format!(
        "{} / {} / {} (min / median / max)",
        secs(ds[0]),
        secs(ds[ds.len() / 2]),
        secs(ds[ds.len() - 1])
    )
}

/// Polls `cond` every 20 ms until it holds or `patience` is over.
fn wait_for(patience: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + patience;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a response head carries the test's header naming a relay.
fn names_relay(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(super::client::RELAY_HEADER))
    })
}

/// When a binary first connected after `t`, and to which relay, if it is
/// connected now.
fn binary_since(binary: &peers::Peer, t: Instant) -> Option<(Instant, String)> {
    let log = binary.log();
    log.relay.as_ref()?;
    log.events.iter().find_map(|(at, e)| match e {
        Event::Connected(relay) if *at >= t => Some((*at, relay.clone())),
        _ => None,
    })
}

/// When a phone first exchanged frames after `t`.
fn exchanging_since(phone: &peers::Peer, t: Instant) -> Option<Instant> {
    phone
        .log()
        .first_since(t, |e| matches!(e, Event::Exchanging))
}

/// A one-shot phone for server-id `id` through `addr`.
struct ProbeJob {
    id: usize,
    via: String,
    addr: SocketAddr,
    /// Through the control backend (no stick table).
    control: bool,
    /// Its number among the probes (its source address).
    number: usize,
}

impl ProbeJob {
    fn new(
        before: &[ProbeJob],
        id: usize,
        via: String,
        addr: SocketAddr,
        control: bool,
    ) -> ProbeJob {
        ProbeJob {
            id,
            via,
            addr,
            control,
            number: before.len(),
        }
    }
}

/// Runs every probe at once; their results in order.
fn run_probes(shared: &peers::Shared, jobs: &[ProbeJob], first: usize) -> Vec<Probe> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let sid = shared.ids[job.id].sid.clone();
                let (addr, number) = (job.addr, first + job.number);
                scope.spawn(move || peers::probe(addr, number, &sid, Duration::from_secs(5)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Probe::Failed("probe panicked".into())))
            .collect()
    })
}

/// What the binaries of some server-ids did after a disruption.
#[derive(Default)]
struct BinariesBack {
    times: Vec<Duration>,
    /// Dials per binary until it was back.
    attempts: Vec<usize>,
    /// The relay each came back on.
    landed: Vec<String>,
    /// Why dials failed on the way.
    failed: Vec<String>,
}

fn count_by<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Run {
    /// Every phase in order; the first failure ends the run.
    pub(super) fn phases(&mut self) -> Result<(), String> {
        let result = self
            .start()
            .and_then(|_| self.route())
            .and_then(|_| self.kill())
            .and_then(|moved| self.restore(&moved))
            .and_then(|_| self.hang())
            .and_then(|_| self.rolling_restart())
            .and_then(|_| self.rebalance())
            .and_then(|_| self.finish());
        if result.is_err() {
            self.show_logs();
        }
        result
    }

    fn ids(&self) -> usize {
        self.fleet.shared.ids.len()
    }

    /// The relay each server-id's binary is connected to now.
    fn placement(&self) -> Vec<Option<String>> {
        self.fleet
            .shared
            .ids
            .iter()
            .map(|s| s.binary.log().relay.clone())
            .collect()
    }

    fn ids_on(&self, relay: &str) -> Vec<usize> {
        self.placement()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_deref() == Some(relay))
            .map(|(i, _)| i)
            .collect()
    }

    /// The relay holding most server-ids now.
    fn busiest(&self) -> usize {
        let placement = self.placement();
        (0..self.relays.len())
            .max_by_key(|&r| {
                let n = placement
                    .iter()
                    .filter(|p| p.as_deref() == Some(&*self.relays[r].name))
                    .count();
                (n, std::cmp::Reverse(r))
            })
            .unwrap_or(0)
    }

    fn all_servers_up(&self) -> bool {
        self.lbs
            .iter()
            .all(|lb| self.relays.iter().all(|r| lb.is_up(&r.name)))
    }

    /// Phase 0: everything up; requests without a usable header refused.
    fn start(&mut self) -> Result<(), String> {
        println!("\n== start");
        if !wait_for(Duration::from_secs(15), || self.all_servers_up()) {
            return Err("the balancers did not see every relay UP within 15 s".into());
        }
        let lb = self.lbs[0].addr;
        // The same WebSocket upgrade, only the header differs: a refusal
        // must come from the balancer itself (no relay named in the
        // answer), and the well-formed one must reach a relay.
        let upgrade = |headers: &str| {
            format!(
                "GET /v1/client HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 X-Pyrycode-Token: t\r\nUser-Agent: {}\r\n{headers}\r\n",
                "relay-bench-scale-test"
            )
        };
        for (what, headers) in [
            ("no X-Pyrycode-Server", ""),
            (
                "two X-Pyrycode-Server",
                "X-Pyrycode-Server: a\r\nX-Pyrycode-Server: b\r\n",
            ),
            ("a malformed server-id", "X-Pyrycode-Server: a b/c\r\n"),
        ] {
            let head = procs::response_head(lb, &upgrade(headers))?;
            if !head.starts_with("HTTP/1.1 400") || names_relay(&head) {
                return Err(format!(
                    "the balancer did not refuse a request with {what} itself: {:?}",
                    head.lines().next().unwrap_or_default()
                ));
            }
        }
        let head = procs::response_head(lb, &upgrade("X-Pyrycode-Server: well-formed\r\n"))?;
        if !head.starts_with("HTTP/1.1 101") || !names_relay(&head) {
            return Err(format!(
                "the same upgrade with a well-formed X-Pyrycode-Server did not reach a relay: {:?}",
                head.lines().next().unwrap_or_default()
            ));
        }
        println!("   every relay UP on both balancers; an upgrade with no, two or a malformed X-Pyrycode-Server refused 400 by the balancer itself, the same with a well-formed one switched to WebSocket by a relay");
        Ok(())
    }

    /// Phase 1: binaries, then phones; every frame to the right peer.
    fn route(&mut self) -> Result<(), String> {
        println!("\n== route");
        let shared = self.fleet.shared.clone();
        self.fleet.start_binaries();
        if !wait_for(Duration::from_secs(20), || {
            shared.ids.iter().all(|s| s.binary.log().relay.is_some())
        }) {
            return Err(self.missing("binaries connected", |s| s.binary.log().relay.is_some()));
        }
        self.fleet.start_phones();
        if !wait_for(Duration::from_secs(30), || {
            shared.peers().all(|p| p.log().frames >= 3)
        }) {
            return Err("not every phone exchanged 3 frames within 30 s".into());
        }
        self.check_colocated()?;
        let placement = self.placement();
        self.homes = placement.clone();
        for relay in &self.relays {
            if !placement.iter().any(|p| p.as_deref() == Some(&*relay.name)) {
                return Err(format!("the hash put no server-id on {}", relay.name));
            }
        }
        println!(
            "   {} server-ids × (1 binary + {PHONES_PER_ID} phones) through {}: {}",
            self.ids(),
            self.lbs[0].name,
            count_by(placement.iter().map(|p| p.as_deref().unwrap_or("?")))
        );
        println!(
            "   every phone on its binary's relay; {} frames echoed, 0 misrouted, 0 out of order",
            self.echoes()
        );
        Ok(())
    }

    fn echoes(&self) -> u64 {
        self.fleet
            .shared
            .ids
            .iter()
            .flat_map(|s| &s.phones)
            .map(|p| p.log().frames)
            .sum()
    }

    /// Every misrouted or out-of-order frame so far fails the run; every
    /// connected phone is on its binary's relay.
    fn check_colocated(&self) -> Result<(), String> {
        for s in &self.fleet.shared.ids {
            let binary = s.binary.log().relay.clone();
            for (i, p) in s.phones.iter().enumerate() {
                let phone = p.log().relay.clone();
                if phone.is_some() && phone != binary {
                    return Err(format!(
                        "{} phone {i} is on {phone:?}, its binary on {binary:?}",
                        s.sid
                    ));
                }
            }
        }
        self.check_errors()
    }

    fn check_errors(&self) -> Result<(), String> {
        for p in self.fleet.shared.peers() {
            if let Some(e) = p.log().errors.first() {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// Names the server-ids whose binary does not satisfy `ok`.
    fn missing(&self, what: &str, ok: impl Fn(&peers::ServerId) -> bool) -> String {
        let bad: Vec<String> = self
            .fleet
            .shared
            .ids
            .iter()
            .filter(|s| !ok(s))
            .map(|s| {
                let last = s.binary.log().events.last().map(|e| format!("{:?}", e.1));
                format!("{} (last: {})", s.sid, last.unwrap_or_default())
            })
            .take(5)
            .collect();
        format!("not every {what}: {}", bad.join("; "))
    }

    /// No peer outside `except` lost its connection since `t`.
    fn others_undisturbed(&self, except: &[usize], t: Instant) -> Result<usize, String> {
        let mut checked = 0;
        for (i, s) in self.fleet.shared.ids.iter().enumerate() {
            if except.contains(&i) {
                continue;
            }
            checked += 1;
            for (who, p) in std::iter::once(("binary".to_string(), &s.binary)).chain(
                s.phones
                    .iter()
                    .enumerate()
                    .map(|(k, p)| (format!("phone {k}"), p)),
            ) {
                if let Some(end) = p.log().drops_since(t).first() {
                    return Err(format!(
                        "{} {who} (not on the restarted relay) was disconnected: {end:?}",
                        s.sid
                    ));
                }
            }
        }
        Ok(checked)
    }

    /// Waits until the binaries of `ids` connected and their phones
    /// exchanged again after `t`, within the back-off bounds (plus
    /// `detect`, the time for the connections to be cut); prints the
    /// recovery times.
    fn recovery(
        &self,
        ids: &[usize],
        t: Instant,
        avoid: Option<&str>,
        detect: Duration,
    ) -> Result<(), String> {
        let binary_bound = detect + Backoff::bound(BINARY_ATTEMPTS) + SLACK;
        let phone_bound = detect + Backoff::bound(PHONE_ATTEMPTS) + SLACK;
        let shared = &self.fleet.shared;
        wait_for(phone_bound, || {
            ids.iter().all(|&i| {
                let s = &shared.ids[i];
                binary_since(&s.binary, t).is_some()
                    && s.phones.iter().all(|p| exchanging_since(p, t).is_some())
            })
        });
        let binaries = self.binaries_back(ids, t, avoid, binary_bound)?;
        let (phone_times, refused) = self.phones_back(ids, t, phone_bound)?;
        println!(
            "   binaries back: {}/{} in {}; attempts {}; landed on {}",
            binaries.times.len(),
            ids.len(),
            spread(binaries.times),
            count_by(binaries.attempts.iter().map(|a| match a {
                1 => "1st",
                2 => "2nd",
                _ => "3rd+",
            })),
            count_by(binaries.landed.iter().map(String::as_str))
        );
        if !binaries.failed.is_empty() {
            println!(
                "   binaries' failed dials on the way: {}",
                count_by(binaries.failed.iter().map(String::as_str))
            );
        }
        println!(
            "   phones exchanging again: {}/{} in {}; 4404 \"no server\" on the way: {refused}",
            phone_times.len(),
            ids.len() * PHONES_PER_ID,
            spread(phone_times)
        );
        let cut = if detect.is_zero() {
            String::new()
        } else {
            format!("{} to be cut + ", secs(detect))
        };
        println!(
            "   (bounds: binaries {cut}{BINARY_ATTEMPTS} back-off steps + {} = {}, phones {cut}{PHONE_ATTEMPTS} steps + {} = {})",
            secs(SLACK),
            secs(binary_bound),
            secs(SLACK),
            secs(phone_bound)
        );
        self.check_colocated()
    }

    /// Each binary of `ids`: back after `t` within `bound`, not on `avoid`.
    fn binaries_back(
        &self,
        ids: &[usize],
        t: Instant,
        avoid: Option<&str>,
        bound: Duration,
    ) -> Result<BinariesBack, String> {
        let mut back = BinariesBack::default();
        for &i in ids {
            let s = &self.fleet.shared.ids[i];
            let since = binary_since(&s.binary, t);
            let log = s.binary.log();
            let Some((at, relay)) = since else {
                let last = log.events.last().map(|e| format!("{:?}", e.1));
                return Err(format!(
                    "{}'s binary was not back within {} (its last event: {})",
                    s.sid,
                    secs(bound),
                    last.unwrap_or_default()
                ));
            };
            if avoid == Some(relay.as_str()) {
                return Err(format!("{} reconnected to the dead {relay}", s.sid));
            }
            if at - t > bound {
                return Err(format!(
                    "{}'s binary took {} to come back, over the {} of {BINARY_ATTEMPTS} back-off steps",
                    s.sid,
                    secs(at - t),
                    secs(bound)
                ));
            }
            back.times.push(at - t);
            back.attempts
                .push(log.count_since(t, |e| matches!(e, Event::Connected(_) | Event::Failed(_))));
            back.landed.push(relay);
            for (when, e) in &log.events {
                if let (true, Event::Failed(why)) = (*when >= t, e) {
                    back.failed.push(why.to_string());
                }
            }
        }
        Ok(back)
    }

    /// Each phone of `ids`: exchanging after `t` within `bound`. Returns
    /// the times and the 4404s on the way.
    fn phones_back(
        &self,
        ids: &[usize],
        t: Instant,
        bound: Duration,
    ) -> Result<(Vec<Duration>, usize), String> {
        let (mut times, mut refused) = (Vec::new(), 0);
        for &i in ids {
            let s = &self.fleet.shared.ids[i];
            for (k, phone) in s.phones.iter().enumerate() {
                let at = exchanging_since(phone, t)
                    .filter(|at| *at - t <= bound)
                    .ok_or_else(|| {
                        format!(
                            "{} phone {k} did not exchange frames within {}",
                            s.sid,
                            secs(bound)
                        )
                    })?;
                times.push(at - t);
                refused += phone
                    .log()
                    .count_since(t, |e| matches!(e, Event::Ended(End::Closed(4404))));
            }
        }
        Ok((times, refused))
    }

    /// Phase 3b: SIGSTOP the busiest relay (a hung process, or a machine
    /// gone without closing anything). The balancers' health checks mark
    /// it down and cut its tunnels (`on-marked-down shutdown-sessions`);
    /// its peers redial elsewhere. Then SIGCONT, and it comes back.
    fn hang(&mut self) -> Result<(), String> {
        let target = self.busiest();
        let name = self.relays[target].name.clone();
        let ids = self.ids_on(&name);
        println!(
            "\n== hang: SIGSTOP {name} ({} server-ids), SIGCONT after its peers moved",
            ids.len()
        );
        let t = Instant::now();
        self.relays[target].signal(libc::SIGSTOP);
        self.recovery(&ids, t, Some(&name), HEALTH_DETECTION)?;
        let cut = ids
            .iter()
            .filter_map(|&i| {
                self.fleet.shared.ids[i]
                    .binary
                    .log()
                    .first_since(t, |e| matches!(e, Event::Ended(_)))
            })
            .map(|at| at - t)
            .collect();
        println!("   tunnels cut by the balancer after {}", spread(cut));
        let others = self.others_undisturbed(&ids, t)?;
        println!("   the other {others} server-ids: 0 disconnects");
        self.relays[target].signal(libc::SIGCONT);
        let back = Instant::now();
        if !wait_for(Duration::from_secs(20), || {
            self.lbs.iter().all(|lb| lb.is_up(&name))
        }) {
            return Err(format!("{name} was not UP again within 20 s of SIGCONT"));
        }
        println!("   SIGCONT: {name} UP again after {}", secs(back.elapsed()));
        Ok(())
    }

    /// Phase 2: SIGKILL the busiest relay. Returns the server-ids it held.
    fn kill(&mut self) -> Result<Vec<usize>, String> {
        let victim = self.busiest();
        let name = self.relays[victim].name.clone();
        let moved = self.ids_on(&name);
        println!(
            "\n== kill: SIGKILL {name} ({} server-ids: {} binaries, {} phones)",
            moved.len(),
            moved.len(),
            moved.len() * PHONES_PER_ID
        );
        let t = Instant::now();
        self.relays[victim].kill();
        self.recovery(&moved, t, Some(&name), Duration::ZERO)?;
        let others = self.others_undisturbed(&moved, t)?;
        println!("   the other {others} server-ids: 0 disconnects");
        Ok(moved)
    }

    /// Phase 3: the killed relay back; moved server-ids stay reachable.
    fn restore(&mut self, moved: &[usize]) -> Result<(), String> {
        let victim = (0..self.relays.len())
            .find(|&r| !self.relays[r].running())
            .ok_or("no relay is down")?;
        let name = self.relays[victim].name.clone();
        println!("\n== return: {name} started again");
        let t = Instant::now();
        self.relays[victim].start()?;
        if !wait_for(Duration::from_secs(20), || {
            self.lbs.iter().all(|lb| lb.is_up(&name))
        }) {
            return Err(format!("the balancers did not see {name} UP within 20 s"));
        }
        println!(
            "   {name} UP on both balancers (main and control backends) after {}",
            secs(t.elapsed())
        );
        self.probe_moved(moved, &name)?;
        self.check_stick_tables(moved, &name)?;
        let undisturbed = self.others_undisturbed(&[], t)?;
        println!("   all {undisturbed} server-ids: 0 disconnects while {name} came back");
        Ok(())
    }

    /// Both balancers' stick tables send the moved server-ids away from
    /// the returned relay (the second one learnt it through `peers`).
    fn check_stick_tables(&self, moved: &[usize], returned: &str) -> Result<(), String> {
        let shared = &self.fleet.shared;
        for lb in &self.lbs {
            let mut last = Default::default();
            let synced = wait_for(Duration::from_secs(5), || {
                last = lb.stick_entries(MAIN_BACKEND).unwrap_or_default();
                moved.iter().all(|&i| {
                    last.get(&shared.ids[i].sid)
                        .is_some_and(|server: &String| server != returned)
                })
            });
            if !synced {
                return Err(format!(
                    "{}'s stick table does not send every moved server-id away from {returned}: {:?}",
                    lb.name,
                    moved
                        .iter()
                        .map(|&i| (&shared.ids[i].sid, last.get(&shared.ids[i].sid)))
                        .take(5)
                        .collect::<Vec<_>>()
                ));
            }
            println!(
                "   {} stick table: {} entries; every moved server-id points away from {returned}",
                lb.name,
                last.len()
            );
        }
        Ok(())
    }

    /// Fresh phones for each moved server-id: through both balancers they
    /// reach the binary; through the control backend (no stick table)
    /// the hash sends them to the returned relay, which has no binary.
    fn probe_moved(&self, moved: &[usize], returned: &str) -> Result<(), String> {
        let shared = &self.fleet.shared;
        let control = self.lbs[0].control.ok_or("no control frontend")?;
        let mut jobs = Vec::new();
        for &id in moved {
            for lb in &self.lbs {
                jobs.push(ProbeJob::new(&jobs, id, lb.name.clone(), lb.addr, false));
            }
            let via = format!("{} control", self.lbs[0].name);
            jobs.push(ProbeJob::new(&jobs, id, via, control, true));
        }
        let first = peers::first_probe_number(self.ids());
        let results = run_probes(shared, &jobs, first);
        let placement = self.placement();
        let (mut reached, mut refused) = (0, 0);
        for (job, result) in jobs.iter().zip(results) {
            let sid = &shared.ids[job.id].sid;
            let (via, home) = (&job.via, placement[job.id].clone().unwrap_or_default());
            match (job.control, result) {
                (false, Probe::Echo(relay)) if relay == home => reached += 1,
                (true, Probe::Closed(relay, 4404)) if relay == returned => refused += 1,
                (false, other) => {
                    return Err(format!(
                        "a phone dialling moved {sid} through {via} did not reach its binary on {home}: {other:?}"
                    ))
                }
                (true, other) => {
                    return Err(format!(
                        "through the control backend ({CONTROL_BACKEND}, no stick table) moved {sid} was expected on {returned} with 4404: {other:?}"
                    ))
                }
            }
        }
        let names: Vec<&str> = self.lbs.iter().map(|l| l.name.as_str()).collect();
        println!(
            "   phones dialling a moved server-id after the return: {reached}/{} reached its binary (through {})",
            moved.len() * self.lbs.len(),
            names.join(" and ")
        );
        println!(
            "   the same dials without the stick table: {refused}/{} sent to {returned} and closed 4404",
            moved.len()
        );
        Ok(())
    }

    /// Phase 4: SIGTERM a relay with frames in flight; restart it.
    fn rolling_restart(&mut self) -> Result<(), String> {
        let target = self.busiest();
        let name = self.relays[target].name.clone();
        let ids = self.ids_on(&name);
        println!(
            "\n== rolling restart: SIGTERM {name} ({} server-ids), start it again",
            ids.len()
        );
        let expected = self.load_bursts(target, &ids)?;
        let t = Instant::now();
        self.relays[target].sigterm();
        self.set_paused(&ids, false);
        let status = self.relays[target].wait_exit(Duration::from_secs(20))?;
        let drained = t.elapsed();
        if !status.success() {
            return Err(format!("{name} exited with {status} after SIGTERM"));
        }
        self.relays[target].start()?;
        println!(
            "   {name} drained and exited 0 in {}, started again",
            secs(drained)
        );
        self.check_bursts(&ids, t, expected)?;
        self.fleet.shared.sending.store(true, Ordering::SeqCst);
        self.recovery(&ids, t, None, Duration::ZERO)?;
        let others = self.others_undisturbed(&ids, t)?;
        println!("   the other {others} server-ids: 0 disconnects");
        Ok(())
    }

    fn set_paused(&self, ids: &[usize], paused: bool) {
        for &i in ids {
            let s = &self.fleet.shared.ids[i];
            for p in std::iter::once(&s.binary).chain(&s.phones) {
                p.paused.store(paused, Ordering::SeqCst);
            }
        }
    }

    /// Quiet traffic, pause the relay's peers, have them send bursts, and
    /// wait until the relay has accepted every burst frame (its own
    /// counters). Returns the frames accepted (phone→binary,
    /// binary→phone).
    fn load_bursts(&self, target: usize, ids: &[usize]) -> Result<(u64, u64), String> {
        let shared = &self.fleet.shared;
        shared.sending.store(false, Ordering::SeqCst);
        if !wait_for(Duration::from_secs(5), || {
            shared.peers().all(|p| !p.log().in_flight)
        }) {
            return Err("steady traffic did not quiesce within 5 s".into());
        }
        let relay = &self.relays[target];
        let (p0, b0) = relay.forwarded()?;
        self.set_paused(ids, true);
        let phones = (ids.len() * PHONES_PER_ID) as u64;
        for &i in ids {
            shared.ids[i].binary.order_burst(BINARY_BURST);
            for p in &shared.ids[i].phones {
                p.order_burst(PHONE_BURST);
            }
        }
        let want = (
            p0 + phones * PHONE_BURST.frames as u64,
            b0 + phones * BINARY_BURST.frames as u64,
        );
        let mut now = (p0, b0);
        if !wait_for(Duration::from_secs(10), || {
            now = relay.forwarded().unwrap_or(now);
            now == want
        }) {
            return Err(format!(
                "{} accepted {:?} burst frames (phone→binary, binary→phone), expected {:?}",
                relay.name,
                (now.0 - p0, now.1 - b0),
                (want.0 - p0, want.1 - b0)
            ));
        }
        println!(
            "   before SIGTERM, with its peers not reading: {} phone→binary and {} binary→phone frames accepted by {} (its frames_forwarded_total)",
            want.0 - p0,
            want.1 - b0,
            relay.name
        );
        Ok((want.0 - p0, want.1 - b0))
    }

    /// Every accepted burst frame reached its peer before the 1001.
    fn check_bursts(&self, ids: &[usize], t: Instant, expected: (u64, u64)) -> Result<(), String> {
        let shared = &self.fleet.shared;
        let ended = |p: &peers::Peer| {
            p.log()
                .first_since(t, |e| matches!(e, Event::Ended(_)))
                .is_some()
        };
        if !wait_for(Duration::from_secs(15), || {
            ids.iter().all(|&i| {
                let s = &shared.ids[i];
                ended(&s.binary) && s.phones.iter().all(ended)
            })
        }) {
            return Err("not every peer of the restarted relay saw its connection end".into());
        }
        let (mut to_binaries, mut to_phones) = (0, 0);
        for &i in ids {
            let s = &shared.ids[i];
            for (who, p, want) in std::iter::once((
                "binary".to_string(),
                &s.binary,
                (PHONE_BURST.frames * PHONES_PER_ID) as u64,
            ))
            .chain(
                s.phones
                    .iter()
                    .enumerate()
                    .map(|(k, p)| (format!("phone {k}"), p, BINARY_BURST.frames as u64)),
            ) {
                let log = p.log();
                if log.last_close != Some(1001) || log.last_burst != want {
                    return Err(format!(
                        "{} {who}: {} of {want} burst frames, then close {:?} (want all, then 1001)",
                        s.sid, log.last_burst, log.last_close
                    ));
                }
                if who == "binary" {
                    to_binaries += log.last_burst;
                } else {
                    to_phones += log.last_burst;
                }
            }
        }
        if (to_binaries, to_phones) != expected {
            return Err(format!(
                "delivered {:?} burst frames, the relay had accepted {expected:?}",
                (to_binaries, to_phones)
            ));
        }
        println!(
            "   delivered before the 1001 \"shutting down\": {to_binaries}/{} to binaries, {to_phones}/{} to phones, in order",
            expected.0, expected.1
        );
        Ok(())
    }

    /// Phase 5: the server-ids that moved go home. For each relay holding
    /// server-ids away from their hash home: clear its stick entries on
    /// every balancer, then restart it at once; its binaries redial with
    /// no entry and the hash sends each home (docs/SCALING.md,
    /// "Rebalancing").
    fn rebalance(&mut self) -> Result<(), String> {
        println!("\n== rebalance");
        for r in 0..self.relays.len() {
            let name = self.relays[r].name.clone();
            let ids = self.ids_on(&name);
            let away = ids
                .iter()
                .filter(|&&i| self.homes[i].as_deref() != Some(&*name))
                .count();
            if away == 0 {
                continue;
            }
            println!(
                "   {name} holds {} server-ids, {away} away from home: clear table relays data.server_id eq {} on both balancers, restart {name}",
                ids.len(),
                r + 1
            );
            for lb in &self.lbs {
                lb.ask(&format!(
                    "clear table {MAIN_BACKEND} data.server_id eq {}",
                    r + 1
                ))?;
            }
            let t = Instant::now();
            self.relays[r].terminate(Duration::from_secs(20))?;
            self.relays[r].start()?;
            self.recovery(&ids, t, None, Duration::ZERO)?;
            let others = self.others_undisturbed(&ids, t)?;
            println!("   the other {others} server-ids: 0 disconnects");
        }
        let placement = self.placement();
        if let Some(i) = (0..self.ids()).find(|&i| placement[i] != self.homes[i]) {
            return Err(format!(
                "{} is on {:?} after the rebalance, its hash home is {:?}",
                self.fleet.shared.ids[i].sid, placement[i], self.homes[i]
            ));
        }
        println!(
            "   every server-id on its hash home again: {}",
            count_by(placement.iter().map(|p| p.as_deref().unwrap_or("?")))
        );
        Ok(())
    }

    /// Last: every phone exchanging, no error anywhere.
    fn finish(&mut self) -> Result<(), String> {
        println!("\n== end");
        let shared = self.fleet.shared.clone();
        let before: Vec<u64> = shared.peers().map(|p| p.log().frames).collect();
        let moved_on = wait_for(Duration::from_secs(10), || {
            shared
                .peers()
                .zip(&before)
                .all(|(p, b)| p.log().frames > *b)
        });
        if !moved_on {
            return Err("not every peer exchanged a frame in the last 10 s".into());
        }
        self.check_colocated()?;
        let placement = self.placement();
        println!(
            "   every binary and phone exchanging; {} frames echoed in all, 0 misrouted, 0 out of order; server-ids now {}",
            self.echoes(),
            count_by(placement.iter().map(|p| p.as_deref().unwrap_or("?")))
        );
        println!(
            "   PROXY protocol v2 towards the relays: {}; run took {:.1} s",
            if self.proxy { "ON" } else { "OFF" },
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
