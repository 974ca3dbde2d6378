//! SIGUSR2: upgrading in place without dropping anyone (`docs/UPGRADE.md`).
//!
//! ```text
//!  Idle ──SIGUSR2──▶ Checking ──report ok──▶ Letting go ──nothing left──▶ Ready ──end of turn──▶ exec
//!   ▲                 │ exit ≠ 0, bad report,    │ (TLS: 1001, wakes finish;                      │ fails
//!   │                 │                          │  bounded)                                      │
//!   └─────────────────┴── no answer in 5 s ──────┴────────────────────────────────────────────────┘
//!                          (logged; serving never stopped)
//! ```
//!
//! While the new executable runs in check mode the loop serves as usual;
//! the upgrade timer looks at the child every [`STEP`]. A second SIGUSR2
//! meanwhile is logged and ignored. Only the last step stops the loop:
//! at the end of a turn, after every queue was flushed, the state goes
//! into a sealed memfd and the process re-executes in place
//! (`handover/exec.rs`). The pause is that step plus the new image's read
//! and restore (`restore.rs`), which logs it.
//!
//! A connection moves if its transport is a plain socket (after its
//! PROXY header, if any: the source it gave is its `client_ip`).
//! Connections whose TLS the relay terminates cannot move (rustls state
//! stays in this process): before the exec they are closed 1001
//! "shutting down" and given up to [`LETTING_GO`] to get that close
//! out, while everything else is still served. Push wakes in flight on
//! the worker threads cannot move either (threads end at the exec): the
//! same window lets them finish, so their outcomes are logged and
//! counted; any still in flight after it are counted in the
//! `upgrade_exec` line as `push_wakes_abandoned`.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Child;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::deadlines::TimerKey;
use super::lifecycle::{Close, Conn, Origin, Phase};
use super::Relay;
use crate::handover::check::{judge, CHECK_DEADLINE};
use crate::handover::exec::{
    block_signals, monotonic_ns, restore_signals, seal_state, set_inherited, state_file, Executable,
};
use crate::handover::UpgradePlan;
use crate::heap;

/// How often a running upgrade is looked at.
const STEP: Duration = Duration::from_millis(10);
/// What one connection or slot takes in the encoded state, at most about
/// (116 B measured at 10,000 connections), queued bytes aside.
const ENCODED_PER_ENTRY: usize = 160;
/// How long connections that cannot move get to send their 1001, and
/// push wakes in flight get to finish.
const LETTING_GO: Duration = Duration::from_secs(1);

/// The descriptor of a connection that can move to the new image, or
/// `None` when its transport holds state in this process (TLS, or a PROXY
/// header not yet complete) or it came from a listener the snapshot does
/// not carry (ACME HTTP-01: the new image binds that one itself). The one
/// place that decides what moves.
pub(super) fn moving_fd(conn: &Conn) -> Option<RawFd> {
    let carried = matches!(conn.origin, Origin::WebSocket | Origin::Metrics);
    (carried && conn.transport.is_movable()).then(|| conn.transport.as_raw_fd())
}

/// What SIGUSR2 does, and how far it has come.
#[derive(Default)]
pub(super) struct Upgrades {
    plan: Option<UpgradePlan>,
    state: Step,
    /// The memfd the state will go into, its pages allocated once the
    /// check passed ([`Relay::prepare_the_pause`]).
    state_file: Option<File>,
}

#[derive(Default)]
enum Step {
    #[default]
    Idle,
    /// The new executable runs in check mode.
    Checking {
        exe: Executable,
        child: Child,
        deadline: Instant,
    },
    /// Connections that cannot move are being closed; push wakes in
    /// flight are finishing.
    LettingGo { exe: Executable, until: Instant },
    /// Hand over at the end of this turn.
    Ready { exe: Executable },
}

impl Relay {
    /// SIGUSR2 will execute `plan` (production: the path the relay was
    /// started from). Without it, SIGUSR2 is logged and ignored.
    pub fn enable_upgrades(&mut self, plan: UpgradePlan) {
        self.upgrade.plan = Some(plan);
    }

    /// SIGUSR2 arrived: open the executable and start its check.
    pub(super) fn on_upgrade_signal(&mut self) {
        let Some(plan) = self.upgrade.plan.clone() else {
            return warn!("upgrade_refused reason=not_enabled");
        };
        if self.drain_until.is_some() {
            return info!("upgrade_refused reason=shutting_down");
        }
        if !matches!(self.upgrade.state, Step::Idle) {
            return warn!("upgrade_busy note=\"an upgrade is running; signal ignored\"");
        }
        let exe_path = plan.exe.display().to_string();
        let exe = match Executable::open(&plan.exe) {
            Ok(exe) => exe,
            Err(err) => {
                return self.refuse(&format!("cannot_open exe={exe_path:?} error=\"{err}\""))
            }
        };
        let child = match exe.spawn_check(&plan.args) {
            Ok(child) => child,
            Err(err) => {
                return self.refuse(&format!("check_failed exe={exe_path:?} error=\"{err}\""))
            }
        };
        info!(
            "upgrade_started exe={exe_path:?} connections={}",
            self.conns.len()
        );
        let now = self.clock.now();
        self.upgrade.state = Step::Checking {
            exe,
            child,
            deadline: now + CHECK_DEADLINE,
        };
        self.timers.schedule(now + STEP, TimerKey::Upgrade);
    }

    /// The upgrade timer: how is the check doing, has everything that
    /// cannot move let go?
    pub(super) fn upgrade_step(&mut self) {
        let now = self.clock.now();
        let state = std::mem::take(&mut self.upgrade.state);
        if self.drain_until.is_some() && !matches!(state, Step::Idle) {
            if let Step::Checking { mut child, .. } = state {
                let _ = child.kill();
                let _ = child.wait();
            }
            return info!("upgrade_abandoned reason=shutting_down");
        }
        match state {
            Step::Checking {
                exe,
                child,
                deadline,
            } => self.on_check(exe, child, deadline, now),
            Step::LettingGo { exe, until } => {
                if !self.holding_on() || now >= until {
                    self.upgrade.state = Step::Ready { exe };
                } else {
                    self.upgrade.state = Step::LettingGo { exe, until };
                    self.timers.schedule(now + STEP, TimerKey::Upgrade);
                }
            }
            other => self.upgrade.state = other,
        }
    }

    fn on_check(&mut self, exe: Executable, mut child: Child, deadline: Instant, now: Instant) {
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) if now < deadline => {
                self.upgrade.state = Step::Checking {
                    exe,
                    child,
                    deadline,
                };
                return self.timers.schedule(now + STEP, TimerKey::Upgrade);
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return self.refuse(&format!(
                    "check_timeout seconds={}",
                    CHECK_DEADLINE.as_secs()
                ));
            }
            Err(err) => return self.refuse(&format!("check_failed error=\"{err}\"")),
        };
        if !status.success() {
            return self.refuse(&format!("check_failed status=\"{status}\""));
        }
        match judge(&read_available(&mut child)) {
            Ok(report) => {
                info!(
                    "upgrade_check_passed version={} state_formats={:?}",
                    report.version, report.state_formats
                );
                self.let_go(exe);
            }
            Err(why) => self.refuse(&format!("check_failed why={why:?}")),
        }
    }

    /// Closes every connection that cannot move — requests still in their
    /// head are dropped, WebSockets are closed 1001 "shutting down" — and
    /// waits, up to [`LETTING_GO`], for them and for push wakes in flight.
    fn let_go(&mut self, exe: Executable) {
        self.prepare_the_pause();
        for handle in self.conns.handles() {
            let Some(conn) = self.conns.get(handle) else {
                continue;
            };
            if moving_fd(conn).is_some() {
                continue;
            }
            match conn.phase() {
                Phase::Head(_) => self.vanish(handle),
                Phase::Open(_) => self.close(handle, Close::Shutdown),
                _ => {}
            }
        }
        let until = self.clock.now() + LETTING_GO;
        self.upgrade.state = if !self.holding_on() {
            Step::Ready { exe }
        } else {
            self.timers
                .schedule(until.min(self.clock.now() + STEP), TimerKey::Upgrade);
            Step::LettingGo { exe, until }
        };
    }

    /// Whether something that cannot move is still here: a connection
    /// (TLS, or a PROXY header not yet complete) or a push wake in flight.
    fn holding_on(&self) -> bool {
        self.unmovable_left() > 0 || self.wakes_in_flight() > 0
    }

    fn unmovable_left(&self) -> usize {
        self.conns
            .iter()
            .filter(|conn| moving_fd(conn).is_none())
            .count()
    }

    /// Whether an upgrade has started and not ended (the memory trim waits
    /// for it: it would give back the pages the pause is to use).
    pub(super) fn upgrading(&self) -> bool {
        !matches!(self.upgrade.state, Step::Idle)
    }

    /// Faults in, while the loop still serves, the memory the pause will
    /// write: heap pages for the snapshot and its encoding, and the memfd's
    /// pages. A first touch of a page costs microseconds on a VM, and the
    /// snapshot of 10,000 connections touches ~1,600 of them.
    fn prepare_the_pause(&mut self) {
        let queued: usize = self
            .conns
            .iter()
            .map(|conn| conn.pending_output() + conn.reader.pending_len())
            .sum();
        let entries = self.conns.len() + self.registry.slots().count();
        let encoded = 4096 + entries * ENCODED_PER_ENTRY + queued;
        let began = monotonic_ns();
        heap::prefault(encoded * 6);
        self.upgrade.state_file = state_file(encoded).ok();
        info!(
            "upgrade_prepared heap_bytes={} state_file_bytes={encoded} ms={:.3}",
            encoded * 6,
            (monotonic_ns() - began) as f64 / 1e6
        );
    }

    fn refuse(&mut self, why: &str) {
        self.upgrade.state = Step::Idle;
        self.upgrade.state_file = None;
        warn!("upgrade_refused reason={why} note=\"serving on\"");
    }

    /// The end of a turn: if the upgrade is ready, hand over now.
    pub(super) fn hand_over_if_ready(&mut self) {
        if !matches!(self.upgrade.state, Step::Ready { .. }) {
            return;
        }
        let Step::Ready { exe } = std::mem::take(&mut self.upgrade.state) else {
            return;
        };
        let Some(plan) = self.upgrade.plan.clone() else {
            return;
        };
        let err = self.exec_with_state(&exe, &plan);
        self.refuse(&format!("exec_failed error=\"{err}\""));
    }

    /// Snapshot, memfd, descriptors kept open, signals blocked, exec.
    /// Returns only if something failed, with everything undone.
    fn exec_with_state(&mut self, exe: &Executable, plan: &UpgradePlan) -> std::io::Error {
        let taken_at = monotonic_ns();
        let snapshot = self.snapshot(taken_at);
        let taken = monotonic_ns();
        if let Err(err) = snapshot.validate() {
            return std::io::Error::other(format!("own state: {err}"));
        }
        let bytes = snapshot.encode();
        let encoded = monotonic_ns();
        let file = match self.upgrade.state_file.take() {
            Some(file) => Ok(file),
            None => state_file(bytes.len()),
        };
        let memfd = match file.and_then(|file| seal_state(file, &bytes)) {
            Ok(memfd) => memfd,
            Err(err) => return err,
        };
        let fds: Vec<RawFd> = snapshot.fds().collect();
        if let Err(err) = set_inherited(&fds, true) {
            let _ = set_inherited(&fds, false);
            return err;
        }
        let ms = |from: u64, to: u64| (to - from) as f64 / 1e6;
        let now = monotonic_ns();
        info!(
            "upgrade_exec exe={:?} connections={} slots={} push_wakes_abandoned={} state_bytes={} snapshot_ms={:.3} take_ms={:.3} encode_ms={:.3} write_ms={:.3}",
            exe.path.display().to_string(),
            snapshot.conns.len(),
            snapshot.slots.len(),
            self.wakes_in_flight(),
            bytes.len(),
            ms(taken_at, now),
            ms(taken_at, taken),
            ms(taken, encoded),
            ms(encoded, now),
        );
        let saved = block_signals();
        let err = exe.exec(&plan.args, memfd.as_raw_fd());
        restore_signals(saved);
        let _ = set_inherited(&fds, false);
        err
    }

    /// Lets go of every socket without closing it, for a relay restored
    /// from this one's snapshot in the same process (tests): the
    /// descriptors now belong to that relay.
    pub fn abandon(mut self) {
        self.listeners.forget_all();
        for handle in self.conns.handles() {
            if let Some(conn) = self.conns.remove(handle) {
                let _ = conn.transport.into_raw_fd();
            }
        }
    }
}

/// What the check wrote to its stdout, without waiting on a pipe that a
/// grandchild might still hold open.
fn read_available(child: &mut Child) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut stdout) = child.stdout.take() else {
        return out;
    };
    // SAFETY: fcntl on the pipe we own; only its flags change.
    unsafe {
        let fd = stdout.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut chunk = [0u8; 4096];
    while out.len() < 64 * 1024 {
        match stdout.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out
}
