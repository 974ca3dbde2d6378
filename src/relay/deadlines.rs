//! Deadlines and the heartbeat (SPEC §2, §4, §6, §9): the relay's pings,
//! the peers' pings and pongs, and every timer. Each connection keeps its
//! deadlines in its own fields (`lifecycle.rs: Deadlines`) and the wheel
//! holds only the earliest; when that fires, every deadline that is due is
//! acted on and the next one is armed. Moving a deadline later costs
//! nothing; only an earlier one adds a wheel entry, and the stale entry is
//! ignored when it fires. Connections the relay is not reading are not
//! blamed for silence: their pong and message deadlines are pushed back.
//!
//! The other timers: a grace window's end, the shutdown drain, the sweep
//! of idle rate-limit and push buckets, the memory trim (`trim.rs`), the
//! end of an accept back-off, and an upgrade's steps (`handover.rs`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info};

use super::conns::Handle;
use super::lifecycle::{Close, Peer};
use super::Relay;
use crate::metrics::HttpRefusal;
use crate::ws::{self, FrameKind};

/// How often per-IP rate-limit state of idle IPs is forgotten.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How often capacity left idle by past load is given back (`trim.rs`): a
/// pooled buffer unused for this long is freed within twice this.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(4);

/// What a timer-wheel entry refers to.
pub(super) enum TimerKey {
    /// The earliest deadline of a connection, if it is still there.
    Conn(Handle),
    /// The end of a grace window (if the slot is still in that generation).
    Grace { server_id: Rc<str>, generation: u64 },
    /// The end of the shutdown drain.
    Drain,
    /// Time to forget idle IPs in the rate limiter.
    Sweep,
    /// Time to give back capacity that past load left idle.
    Trim,
    /// Time to accept again after `accept` failed (out of descriptors).
    AcceptBackoff,
    /// Time to look at a running upgrade again (`handover.rs`).
    Upgrade,
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

impl Relay {
    /// Makes sure the wheel will wake `handle` at its earliest deadline.
    pub(super) fn arm(&mut self, handle: Handle) {
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let Some(at) = conn.deadlines.earliest() else {
            return;
        };
        if conn.armed.is_none_or(|armed| at < armed) {
            conn.armed = Some(at);
            self.timers.schedule(at, TimerKey::Conn(handle));
        }
    }

    /// Fires every due timer; returns whether any fired.
    pub(super) fn fire_timers(&mut self) -> bool {
        let now = self.clock.now();
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        let any = !fired.is_empty();
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn(handle) => self.on_conn_timer(handle, now),
                TimerKey::Grace {
                    server_id,
                    generation,
                } => self.grace_expired(&server_id, generation),
                TimerKey::Drain => self.drop_all_for_shutdown(),
                TimerKey::Sweep => {
                    self.limits.sweep(now);
                    self.sweep_wakes(now);
                    self.timers.schedule(now + SWEEP_INTERVAL, TimerKey::Sweep);
                }
                TimerKey::Trim => {
                    self.trim_idle_memory();
                    self.timers.schedule(now + TRIM_INTERVAL, TimerKey::Trim);
                }
                TimerKey::AcceptBackoff => self.resume_accepting(),
                TimerKey::Upgrade => self.upgrade_step(),
            }
        }
        self.fired = fired;
        any
    }

    fn on_conn_timer(&mut self, handle: Handle, now: Instant) {
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        if conn.armed.is_some_and(|armed| armed > now) {
            return; // a stale entry: an earlier one was armed since
        }
        conn.armed = None;
        if due(conn.deadlines.stall, now) {
            // Writability is edge-triggered and only reported once much of
            // the send buffer is free: a peer that reads slowly may have
            // made room without an event. Try once before calling it stalled.
            self.flush(handle);
        }
        if !self.conns.contains(handle)
            || self.fire_endings(handle, now)
            || self.fire_probe(handle, now)
            || self.fire_silence(handle, now)
        {
            return;
        }
        self.fire_ping(handle, now);
        self.arm(handle);
    }

    /// The deadlines that end a connection outright: handshake (408, or,
    /// before the PROXY header or the TLS handshake is complete, a close
    /// with nothing written: the peer has not spoken HTTP), close
    /// handshake, output stall. Returns whether one fired.
    fn fire_endings(&mut self, handle: Handle, now: Instant) -> bool {
        let Some(conn) = self.conns.get(handle) else {
            return true;
        };
        let d = &conn.deadlines;
        if due(d.handshake, now) {
            let stage = conn.transport.stage();
            debug!("handshake_timeout remote={} stage={stage}", conn.remote);
            match conn.transport.is_established() {
                true => self.refuse_head(handle, HttpRefusal::HandshakeTimeout),
                false => self.vanish(handle),
            }
            return true;
        }
        if due(d.close, now) || due(d.stall, now) {
            debug!(
                "connection_abandoned remote={} stalled={}",
                conn.remote,
                due(d.stall, now)
            );
            self.vanish(handle);
            return true;
        }
        false
    }

    /// The conflict probe went unanswered: the challenger takes over.
    fn fire_probe(&mut self, handle: Handle, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(handle) else {
            return true;
        };
        if !due(conn.deadlines.probe, now) {
            return false;
        }
        conn.deadlines.probe = None;
        self.probe_expired(handle);
        self.arm(handle);
        true
    }

    /// No pong in time (1011), or a message begun and not finished (1008).
    /// A connection the relay is not reading is given more time instead.
    /// Returns whether the connection was closed.
    fn fire_silence(&mut self, handle: Handle, now: Instant) -> bool {
        let paused = !self.may_read(handle);
        let (pong_timeout, message_timeout) =
            (self.config.pong_timeout, self.config.message_timeout);
        let Some(conn) = self.conns.get_mut(handle) else {
            return true;
        };
        let d = &mut conn.deadlines;
        let (pong_due, message_due) = (due(d.pong, now), due(d.message, now));
        if paused {
            if pong_due {
                d.pong = Some(now + pong_timeout);
            }
            if message_due {
                d.message = Some(now + message_timeout);
            }
            return false;
        }
        let why = match (pong_due, message_due) {
            (true, _) => {
                let is_server = !matches!(conn.peer(), Some(Peer::Phone { .. }));
                self.metrics.heartbeat_timeout(is_server);
                Close::Heartbeat
            }
            (false, true) => Close::MessageTimeout,
            (false, false) => return false,
        };
        let (code, reason) = why.frame();
        info!(
            "{} remote={} code={code}",
            reason.replace(' ', "_"),
            conn.remote
        );
        self.close(handle, why);
        true
    }

    /// A peer's ping is answered with a pong carrying its payload (SPEC
    /// §6); a closing connection owes no pong.
    pub(super) fn answer_ping(&mut self, handle: Handle, payload: &[u8]) {
        if self
            .conns
            .get(handle)
            .and_then(|conn| conn.peer())
            .is_some()
        {
            if let Some(out) = self.conns.queue(handle) {
                ws::write_frame(out, FrameKind::Pong, payload);
            }
        }
    }

    /// A pong ends the heartbeat's wait; a holder's pong to the conflict
    /// probe also decides the conflict (`slot.rs`).
    pub(super) fn on_pong(&mut self, handle: Handle, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        conn.deadlines.pong = None;
        if let Some(Peer::Binary(server_id)) = conn.peer() {
            let server_id = server_id.clone();
            self.probe_answered(handle, &server_id, payload);
        }
    }

    /// Sends the periodic ping and starts waiting for its pong.
    fn fire_ping(&mut self, handle: Handle, now: Instant) {
        let ping_interval = self.config.ping_interval;
        let pong_timeout = self.config.pong_timeout;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let d = &mut conn.deadlines;
        if !due(d.next_ping, now) {
            return;
        }
        d.next_ping = Some(now + ping_interval);
        if d.pong.is_none() {
            d.pong = Some(now + pong_timeout);
        }
        if conn.peer().is_some() {
            if let Some(out) = self.conns.queue(handle) {
                ws::write_frame(out, FrameKind::Ping, b"");
            }
        }
    }
}
