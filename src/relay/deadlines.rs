//! Deadlines (SPEC §2, §4, §6, §9): each connection keeps its deadlines in
//! its own fields and the wheel holds only the earliest; when that fires,
//! every deadline that is due is acted on and the next one is armed.
//! Connections the relay is not reading (backpressure, a waiting challenger) are not blamed
//! for silence: their pong and message deadlines are pushed back.

use std::time::Instant;

use log::{debug, info};

use super::conn::{Peer, Phase};
use super::routing::Ending;
use super::{Relay, TimerKey, SWEEP_INTERVAL, TRIM_INTERVAL};
use crate::registry::ConnKey;
use crate::ws::{self, close, FrameKind};

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

impl Relay {
    /// Makes sure the wheel will wake connection `key` at its earliest
    /// deadline.
    pub(super) fn arm(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(at) = conn.deadlines.earliest() else {
            return;
        };
        if conn.armed.is_none_or(|armed| at < armed) {
            conn.armed = Some(at);
            self.timers
                .schedule(at, TimerKey::Conn { key, id: conn.id });
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
                TimerKey::Conn { key, id } => self.on_conn_timer(key, id, now),
                TimerKey::Grace {
                    server_id,
                    generation,
                } => self.on_grace_expired(server_id, generation),
                TimerKey::Drain => self.on_drain_deadline(),
                TimerKey::Sweep => {
                    self.limits.sweep(now);
                    self.timers.schedule(now + SWEEP_INTERVAL, TimerKey::Sweep);
                }
                TimerKey::Trim => {
                    self.trim_idle_memory();
                    self.timers.schedule(now + TRIM_INTERVAL, TimerKey::Trim);
                }
                TimerKey::AcceptBackoff => self.resume_accepting(),
            }
        }
        self.fired = fired;
        any
    }

    fn on_conn_timer(&mut self, key: ConnKey, id: u64, now: Instant) {
        let Some(conn) = self.live_conn(key, id) else {
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
            self.flush(key);
        }
        if self.live_conn(key, id).is_none()
            || self.fire_endings(key, now)
            || self.fire_probe(key, now)
            || self.fire_silence(key, now)
        {
            return;
        }
        self.fire_ping(key, now);
        self.arm(key);
    }

    /// The deadlines that end a connection outright: handshake (408),
    /// close handshake, output stall. Returns whether one fired.
    fn fire_endings(&mut self, key: ConnKey, now: Instant) -> bool {
        let conn = &self.conns[key];
        let d = &conn.deadlines;
        if due(d.handshake, now) {
            debug!("handshake_timeout remote={}", conn.remote);
            self.respond(key, 408, "", "");
            return true;
        }
        if due(d.close, now) || due(d.stall, now) {
            let stalled = due(d.stall, now);
            debug!(
                "connection_abandoned remote={} stalled={stalled}",
                conn.remote
            );
            self.drop_conn(key, Ending::Vanished);
            return true;
        }
        false
    }

    /// The conflict probe went unanswered: the challenger takes over.
    fn fire_probe(&mut self, key: ConnKey, now: Instant) -> bool {
        let conn = &mut self.conns[key];
        if !due(conn.deadlines.probe, now) {
            return false;
        }
        conn.deadlines.probe = None;
        if let Some(Peer::Challenger(server_id)) = conn.peer() {
            let server_id = server_id.clone();
            self.take_over(key, server_id);
        }
        self.arm(key);
        true
    }

    /// No pong in time (1011), or a message begun and not finished (1008).
    /// A connection the relay is not reading is given more time instead.
    /// Returns whether the connection was closed.
    fn fire_silence(&mut self, key: ConnKey, now: Instant) -> bool {
        let paused = !self.may_read(key);
        let (pong_timeout, message_timeout) =
            (self.config.pong_timeout, self.config.message_timeout);
        let conn = &mut self.conns[key];
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
        let (code, reason) = match (pong_due, message_due) {
            (true, _) => (close::INTERNAL, "heartbeat timeout"),
            (false, true) => (close::POLICY, "message timeout"),
            (false, false) => return false,
        };
        info!(
            "{} remote={} code={code}",
            reason.replace(' ', "_"),
            conn.remote
        );
        self.close_ws(key, code, reason, Ending::Relay(code));
        true
    }

    /// Sends the periodic ping and starts waiting for its pong.
    fn fire_ping(&mut self, key: ConnKey, now: Instant) {
        let ping_interval = self.config.ping_interval;
        let pong_timeout = self.config.pong_timeout;
        let conn = &mut self.conns[key];
        let d = &mut conn.deadlines;
        if !due(d.next_ping, now) {
            return;
        }
        d.next_ping = Some(now + ping_interval);
        if d.pong.is_none() {
            d.pong = Some(now + pong_timeout);
        }
        if matches!(conn.phase, Phase::Open(_)) {
            ws::write_frame(self.queue(key), FrameKind::Ping, b"");
        }
    }

    /// Starts the message deadline when a frame or fragmented message is
    /// left incomplete, and clears it when nothing is in progress.
    pub(super) fn track_message_deadline(&mut self, key: ConnKey, id: u64) {
        let now = self.clock.now();
        let message_timeout = self.config.message_timeout;
        let Some(conn) = self.live_conn(key, id) else {
            return;
        };
        let in_progress = conn.inbuf.is_some() || conn.assembler.is_open();
        if !in_progress || !matches!(conn.phase, Phase::Open(_)) {
            conn.deadlines.message = None;
            return;
        }
        if conn.deadlines.message.is_none() {
            conn.deadlines.message = Some(now + message_timeout);
            self.arm(key);
        }
    }

    /// The shutdown drain is over: whatever is left is dropped.
    fn on_drain_deadline(&mut self) {
        let keys: Vec<ConnKey> = self.conns.iter().map(|(key, _)| key).collect();
        info!("shutdown_drain_expired connections={}", keys.len());
        for key in keys {
            self.drop_conn(key, Ending::Shutdown);
        }
    }
}
