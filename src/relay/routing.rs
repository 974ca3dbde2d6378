//! Routing between binaries and phones (SPEC §4, §5, §7): wrapping phone
//! messages into envelopes for the binary, delivering envelopes from the
//! binary to phones, close directives and close notices, backpressure
//! between a binary and its phones, and what the registry's decisions
//! mean for sockets when a peer leaves.

use std::net::SocketAddr;
use std::rc::Rc;

use log::{info, warn};

use super::conn::Peer;
use super::{Relay, TimerKey};
use crate::envelope::{self, BinaryEnvelope};
use crate::registry::{ConnKey, Release};
use crate::ws::{self, close};

/// How a peer's part ended; decides the close notice sent to its binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed with this code (1001 stands for "no code").
    Peer(u16),
    /// The connection vanished: EOF, reset, or output stalled.
    Vanished,
    /// The relay closed it with this code (protocol, heartbeat, backlog).
    Relay(u16),
    /// The binary asked for the close (close directive).
    Directive,
    /// Its binary was replaced or released; also a refused challenger.
    Displaced,
    /// The relay is shutting down.
    Shutdown,
}

impl Ending {
    /// The code of the close notice the binary gets, if it gets one.
    fn notice(self) -> Option<u16> {
        match self {
            Ending::Peer(code) | Ending::Relay(code) => Some(code),
            Ending::Vanished => Some(close::GOING_AWAY),
            Ending::Directive | Ending::Displaced | Ending::Shutdown => None,
        }
    }
}

impl Relay {
    /// A phone's message: valid JSON goes to the binary, wrapped verbatim;
    /// anything else closes that phone 1007 (SPEC §5.1).
    pub(super) fn forward_from_phone(
        &mut self,
        key: ConnKey,
        server_id: &str,
        conn_id: &str,
        payload: &[u8],
    ) {
        if !envelope::is_json(payload) {
            info!("phone_message_invalid server_id={server_id} conn_id={conn_id} code=1007");
            return self.close_ws(
                key,
                close::INVALID_PAYLOAD,
                "",
                Ending::Relay(close::INVALID_PAYLOAD),
            );
        }
        let Some(binary) = self.registry.binary(server_id) else {
            // The server-id is in grace. Whoever claims it next closes this
            // phone (4404) and has no crypto session for it, so the message
            // could never be used: say so, and keep the phone.
            self.metrics.phone_messages_dropped += 1;
            warn!("phone_message_dropped server_id={server_id} conn_id={conn_id} reason=binary_in_grace");
            return;
        };
        envelope::write_phone_message(self.queue(binary), conn_id, payload);
        self.metrics.frames_phone_to_binary += 1;
        self.check_high_water(binary, server_id);
    }

    /// A binary's message (SPEC §5.2, §5.3): deliver, close, or warn and
    /// drop that one envelope. The binary is never closed for it.
    pub(super) fn route_from_binary(&mut self, server_id: &str, payload: &[u8]) {
        let (conn_id, frame, close_code) = match envelope::parse_binary_message(payload) {
            Ok(BinaryEnvelope::Deliver {
                conn_id,
                frame,
                close_code,
            }) => (conn_id, frame, close_code),
            Ok(BinaryEnvelope::PushWake) => {
                self.metrics.push_dropped();
                return warn!("push_wake_dropped server_id={server_id} reason=push_not_configured");
            }
            Err(why) => return self.drop_envelope(server_id, why),
        };
        let phone = match self.registry.phone(&conn_id) {
            None => return self.drop_envelope(server_id, "unknown conn_id"),
            Some(phone) => phone,
        };
        match self.conns.get(phone).and_then(|conn| conn.peer()) {
            Some(Peer::Phone {
                server_id: owner, ..
            }) if &**owner == server_id => {}
            _ => return self.drop_envelope(server_id, "conn_id of another server-id"),
        }
        if let Some(frame) = frame {
            if !self.deliver_to_phone(phone, server_id, &conn_id, frame) {
                return;
            }
        }
        if let Some(code) = close_code {
            info!("phone_close_directive server_id={server_id} conn_id={conn_id} code={code}");
            self.close_ws(phone, code, "", Ending::Directive);
        }
    }

    fn drop_envelope(&mut self, server_id: &str, why: &str) {
        self.metrics.envelopes_dropped += 1;
        warn!("envelope_dropped server_id={server_id} reason={why:?}");
    }

    /// Queues `frame` to a phone as a text message, within its backlog
    /// budget; a phone over budget is closed 1011 "phone backlog full".
    fn deliver_to_phone(
        &mut self,
        phone: ConnKey,
        server_id: &str,
        conn_id: &str,
        frame: &[u8],
    ) -> bool {
        let queued = self.conns[phone].pending_output();
        if queued + frame.len() > self.config.phone_backlog {
            warn!("phone_backlog_full server_id={server_id} conn_id={conn_id} queued={queued} code=1011");
            self.drop_envelope(server_id, "phone cannot take the frame");
            self.close_ws(
                phone,
                close::INTERNAL,
                "phone backlog full",
                Ending::Relay(close::INTERNAL),
            );
            return false;
        }
        ws::write_frame(self.queue(phone), ws::FrameKind::Text, frame);
        self.metrics.frames_binary_to_phone += 1;
        true
    }

    /// Stops reading a binary's phones once its output passes high water.
    fn check_high_water(&mut self, binary: ConnKey, server_id: &str) {
        if self.conns[binary].pending_output() > self.config.binary_high_water
            && self.registry.set_backpressured(server_id, true)
        {
            info!("backpressure_on server_id={server_id}");
        }
    }

    /// After a flush: resumes a binary's phones once its output is below
    /// low water.
    pub(super) fn on_binary_drained(&mut self, key: ConnKey, pending: usize) {
        if pending > self.config.binary_low_water {
            return;
        }
        let Some(Peer::Binary(server_id)) = self.conns.get(key).and_then(|conn| conn.peer()) else {
            return;
        };
        let server_id = server_id.clone();
        if self.registry.set_backpressured(&server_id, false) {
            info!("backpressure_off server_id={server_id}");
            self.resume_phones(&server_id);
        }
    }

    fn resume_phones(&mut self, server_id: &str) {
        let phones = self.registry.phones(server_id).to_vec();
        self.resume.extend(phones);
    }

    /// Closes each phone 4404 with `reason`; no notice goes to a binary.
    pub(super) fn close_phones(&mut self, phones: &[ConnKey], reason: &str) {
        for &phone in phones {
            self.close_ws(phone, close::NOT_FOUND, reason, Ending::Displaced);
        }
    }

    /// A peer's part is over (its socket is closing or gone): update the
    /// registry and counters, and tell the binary about a phone that left.
    pub(super) fn detach(&mut self, key: ConnKey, peer: Peer, ending: Ending, remote: SocketAddr) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.deadlines.probe = None;
        }
        match peer {
            Peer::Binary(server_id) => {
                self.binaries -= 1;
                info!(
                    "binary_disconnected server_id={server_id} remote={remote} ending={ending:?}"
                );
                if ending != Ending::Displaced {
                    self.release_slot(key, server_id);
                }
            }
            Peer::Challenger(server_id) => self.registry.challenger_left(&server_id, key),
            Peer::Phone { server_id, conn_id } => {
                self.phones -= 1;
                self.registry.leave(&server_id, &conn_id, key);
                info!(
                    "phone_disconnected server_id={server_id} conn_id={conn_id} ending={ending:?}"
                );
                if let (Some(code), Some(binary)) =
                    (ending.notice(), self.registry.binary(&server_id))
                {
                    envelope::write_close_notice(self.queue(binary), &conn_id, code);
                    self.check_high_water(binary, &server_id);
                }
            }
        }
    }

    fn release_slot(&mut self, key: ConnKey, server_id: Rc<str>) {
        match self.registry.release(&server_id, key) {
            Release::Grace { generation } => {
                let until = self.clock.now() + self.config.grace_period;
                info!(
                    "server_released server_id={server_id} grace_seconds={}",
                    self.config.grace_period.as_secs_f64()
                );
                // Phones held back by this binary's backpressure may have
                // unread bytes and no new readiness edge: read them now.
                self.resume_phones(&server_id);
                self.timers.schedule(
                    until,
                    TimerKey::Grace {
                        server_id,
                        generation,
                    },
                );
            }
            Release::HandedOver { challenger, phones } => {
                info!("server_takeover server_id={server_id} reason=holder_left");
                self.become_binary(challenger, server_id);
                self.close_phones(&phones, "binary reclaimed server-id");
                self.resume.push(challenger);
            }
            Release::NotHolder => {}
        }
    }

    /// The conflict probe went unanswered: the challenger takes over.
    pub(super) fn take_over(&mut self, challenger: ConnKey, server_id: Rc<str>) {
        let Some((holder, phones)) = self.registry.take_over(&server_id, challenger) else {
            return;
        };
        info!(
            "server_takeover server_id={server_id} reason=holder_silent phones_closed={}",
            phones.len()
        );
        self.become_binary(challenger, server_id);
        self.close_ws(
            holder,
            close::INTERNAL,
            "heartbeat timeout",
            Ending::Displaced,
        );
        self.close_phones(&phones, "binary reclaimed server-id");
        self.resume.push(challenger);
    }

    /// A grace window ended: free the slot and close its phones 4404.
    pub(super) fn on_grace_expired(&mut self, server_id: Rc<str>, generation: u64) {
        let Some(phones) = self.registry.expire(&server_id, generation) else {
            return;
        };
        self.metrics.grace_expiries += 1;
        info!(
            "grace_expired server_id={server_id} phones_closed={}",
            phones.len()
        );
        self.close_phones(&phones, "binary gone");
    }
}
