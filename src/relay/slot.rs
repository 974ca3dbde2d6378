//! A server-id's slot (SPEC §4): claim, conflict probe, takeover, grace
//! and expiry, in one place.
//!
//! The registry decides: each of its calls changes the bookkeeping and
//! returns a value (`Claim`, `Release`, the challenger to refuse, the
//! holder and phones to close). This module acts on those decisions:
//! who becomes the binary, who is probed, who is closed with what, which
//! timer is armed.
//!
//! The conflict probe is a WebSocket ping with the payload
//! [`PROBE_PAYLOAD`] sent to the holder. Only a pong carrying that payload
//! answers it: RFC 6455 requires a pong to echo its ping's payload, so it
//! proves the holder has *read* the probe — its reader is alive, not just
//! its writer. A pong with another payload (an answer to a heartbeat ping
//! sent earlier, or an unsolicited pong) still counts for the heartbeat
//! but does not decide the conflict.

use std::rc::Rc;

use log::info;

use super::conns::Handle;
use super::deadlines::TimerKey;
use super::lifecycle::{Close, Peer};
use super::Relay;
use crate::metrics::{RegisterFailure, UpgradeOutcome};
use crate::registry::{Claim, Release};
use crate::ws::{self, FrameKind};

/// The payload of the conflict probe's ping.
pub const PROBE_PAYLOAD: &[u8] = b"conflict-probe";

impl Relay {
    /// A binary's upgrade completed: it claims `server_id`.
    pub(super) fn claim(&mut self, handle: Handle, server_id: Rc<str>) {
        let Some(remote) = self.conns.get(handle).map(|conn| conn.remote) else {
            return;
        };
        match self.registry.claim(&server_id, handle) {
            Claim::Fresh => {
                info!("server_claimed server_id={server_id} remote={remote}");
                self.become_binary(handle, server_id);
            }
            Claim::Reclaimed { phones } => {
                info!(
                    "server_reclaimed server_id={server_id} remote={remote} phones_closed={}",
                    phones.len()
                );
                self.become_binary(handle, server_id);
                self.close_phones(&phones, Close::Reclaimed);
            }
            Claim::Probe { holder } => {
                info!("server_conflict server_id={server_id} remote={remote} probing=holder");
                self.probe(holder, handle, server_id);
            }
            Claim::Busy => {
                info!("server_conflict server_id={server_id} remote={remote} outcome=refused reason=probe_running");
                self.refuse_claim(handle);
            }
        }
    }

    /// The challenger waits, unread, while the holder is pinged.
    fn probe(&mut self, holder: Handle, challenger: Handle, server_id: Rc<str>) {
        let deadline = self.clock.now() + self.config.conflict_probe_timeout;
        self.open(challenger, Peer::Challenger(server_id));
        if let Some(conn) = self.conns.get_mut(challenger) {
            conn.deadlines.probe = Some(deadline);
        }
        if let Some(out) = self.conns.queue(holder) {
            ws::write_frame(out, FrameKind::Ping, PROBE_PAYLOAD);
        }
    }

    /// A holder's pong: if it answers a running probe, the holder keeps
    /// the slot and the challenger is refused 4409.
    pub(super) fn probe_answered(&mut self, holder: Handle, server_id: &Rc<str>, payload: &[u8]) {
        if payload != PROBE_PAYLOAD {
            return;
        }
        if let Some(challenger) = self.registry.probe_answered(server_id, holder) {
            info!("server_conflict server_id={server_id} outcome=holder_answered code=4409");
            self.refuse_claim(challenger);
        }
    }

    /// The probe's deadline passed unanswered: the challenger takes the
    /// slot; the silent holder is closed 1011 and its phones 4404.
    pub(super) fn probe_expired(&mut self, challenger: Handle) {
        let Some(Peer::Challenger(server_id)) = self.conns.get(challenger).and_then(|c| c.peer())
        else {
            return;
        };
        let server_id = server_id.clone();
        let Some((holder, phones)) = self.registry.take_over(&server_id, challenger) else {
            return;
        };
        info!(
            "server_takeover server_id={server_id} reason=holder_silent phones_closed={}",
            phones.len()
        );
        self.become_binary(challenger, server_id);
        self.metrics.heartbeat_timeout(true);
        self.close(holder, Close::TakenOver);
        self.close_phones(&phones, Close::Reclaimed);
        self.conns.resume(challenger);
    }

    /// The holder's connection ended: the slot goes into grace, or to the
    /// challenger waiting for a probe.
    pub(super) fn binary_left(&mut self, handle: Handle, server_id: Rc<str>) {
        match self.registry.release(&server_id, handle) {
            Release::Grace { generation } => {
                let until = self.clock.now() + self.config.grace_period;
                self.registry.set_grace_end(&server_id, until);
                info!(
                    "server_released server_id={server_id} grace_seconds={}",
                    self.config.grace_period.as_secs_f64()
                );
                // Phones held back by this binary's backpressure may have
                // unread bytes and no new readiness edge: read them now.
                self.resume_phones(&server_id);
                let key = TimerKey::Grace {
                    server_id,
                    generation,
                };
                self.timers.schedule(until, key);
            }
            Release::HandedOver { challenger, phones } => {
                info!("server_takeover server_id={server_id} reason=holder_left");
                self.become_binary(challenger, server_id);
                self.close_phones(&phones, Close::Reclaimed);
                self.conns.resume(challenger);
            }
            Release::NotHolder => {}
        }
    }

    /// A challenger's connection ended before its probe did.
    pub(super) fn challenger_left(&mut self, handle: Handle, server_id: &str) {
        self.registry.challenger_left(server_id, handle);
    }

    /// A grace window ended: if it still stands, the slot is freed and its
    /// phones are closed 4404 "binary gone".
    pub(super) fn grace_expired(&mut self, server_id: &str, generation: u64) {
        let Some(phones) = self.registry.expire(server_id, generation) else {
            return;
        };
        self.metrics.grace_expiries += 1;
        info!(
            "grace_expired server_id={server_id} phones_closed={}",
            phones.len()
        );
        self.close_phones(&phones, Close::ServerGone);
    }

    /// `handle` serves `server_id` from now on.
    fn become_binary(&mut self, handle: Handle, server_id: Rc<str>) {
        self.open(handle, Peer::Binary(server_id));
        self.metrics.upgrade(true, UpgradeOutcome::Accept);
    }

    /// Closes a losing claimant 4409 "server-id already claimed".
    fn refuse_claim(&mut self, handle: Handle) {
        self.metrics.upgrade(true, UpgradeOutcome::Reject409);
        self.metrics.register_failure(RegisterFailure::ServerInUse);
        self.close(handle, Close::Conflict);
    }

    fn close_phones(&mut self, phones: &[Handle], why: Close) {
        for &phone in phones {
            self.close(phone, why);
        }
    }
}
