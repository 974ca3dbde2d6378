//! Routing between a binary and its phones (SPEC §5, §7): a phone's
//! message wrapped verbatim into an envelope and queued to its binary; a
//! binary's envelope delivered to its phone, closing it on a close
//! directive (a `push_wake` goes to `wakes.rs`); the close notice a binary
//! gets when a phone leaves; and
//! backpressure — a binary whose output passes high water stops its
//! phones being read until it drains below low water.

use log::{info, warn};

use super::conns::Handle;
use super::lifecycle::{Close, Peer};
use super::Relay;
use crate::envelope::{self, BinaryEnvelope};
use crate::metrics::Direction;
use crate::ws::{self, FrameKind};

impl Relay {
    /// A complete message from `handle`: a phone's goes to its binary, a
    /// binary's is an envelope (text or binary opcode alike, SPEC §5.1).
    /// A challenger is not read; a closing connection's messages are
    /// ignored.
    pub(super) fn on_message(&mut self, handle: Handle, payload: &[u8]) {
        match self.conns.get(handle).and_then(|conn| conn.peer()) {
            Some(Peer::Phone { server_id, conn_id }) => {
                let (server_id, conn_id) = (server_id.clone(), conn_id.clone());
                self.forward_from_phone(handle, &server_id, &conn_id, payload);
            }
            Some(Peer::Binary(server_id)) => {
                let server_id = server_id.clone();
                self.route_from_binary(&server_id, payload);
            }
            Some(Peer::Challenger(_)) | None => {}
        }
    }

    /// A phone's message: valid JSON goes to the binary, wrapped verbatim;
    /// anything else closes that phone 1007 (SPEC §5.1).
    fn forward_from_phone(
        &mut self,
        phone: Handle,
        server_id: &str,
        conn_id: &str,
        payload: &[u8],
    ) {
        if !envelope::is_json(payload) {
            info!("phone_message_invalid server_id={server_id} conn_id={conn_id} code=1007");
            return self.close(phone, Close::NotJson);
        }
        let Some(binary) = self.registry.binary(server_id) else {
            // The server-id is in grace. Whoever claims it next closes this
            // phone (4404) and has no crypto session for it, so the message
            // could never be used: say so, and keep the phone.
            self.metrics.phone_messages_dropped += 1;
            warn!("phone_message_dropped server_id={server_id} conn_id={conn_id} reason=binary_in_grace");
            return;
        };
        if let Some(out) = self.conns.queue(binary) {
            envelope::write_phone_message(out, conn_id, payload);
            self.metrics.frames_phone_to_binary += 1;
            self.metrics.bytes_phone_to_binary += payload.len() as u64;
            let (read_at, direction) = (self.read_at, Direction::PhoneToBinary);
            self.conns.time_last_frame(binary, read_at, direction);
        }
        self.check_high_water(binary, server_id);
    }

    /// A binary's message (SPEC §5.2, §5.3): deliver, close, or warn and
    /// drop that one envelope. The binary is never closed for it.
    fn route_from_binary(&mut self, server_id: &str, payload: &[u8]) {
        let (conn_id, frame, close_code) = match envelope::parse_binary_message(payload) {
            Ok(BinaryEnvelope::Deliver {
                conn_id,
                frame,
                close_code,
            }) => (conn_id, frame, close_code),
            Ok(BinaryEnvelope::PushWake(wake)) => return self.request_wake(server_id, wake),
            Err(why) => return self.drop_envelope(server_id, why),
        };
        let Some(phone) = self.registry.phone(&conn_id) else {
            return self.drop_envelope(server_id, "unknown conn_id");
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
            self.close(phone, Close::Directive(code));
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
        phone: Handle,
        server_id: &str,
        conn_id: &str,
        frame: &[u8],
    ) -> bool {
        let queued = self
            .conns
            .get(phone)
            .map_or(0, |conn| conn.pending_output());
        if queued + frame.len() > self.config.phone_backlog {
            warn!("phone_backlog_full server_id={server_id} conn_id={conn_id} queued={queued} code=1011");
            self.metrics.phone_backlog_full_closes += 1;
            self.drop_envelope(server_id, "phone cannot take the frame");
            self.close(phone, Close::BacklogFull);
            return false;
        }
        if let Some(out) = self.conns.queue(phone) {
            ws::write_frame(out, FrameKind::Text, frame);
            self.metrics.frames_binary_to_phone += 1;
            self.metrics.bytes_binary_to_phone += frame.len() as u64;
            let (read_at, direction) = (self.read_at, Direction::BinaryToPhone);
            self.conns.time_last_frame(phone, read_at, direction);
        }
        true
    }

    /// Tells a phone's binary that the phone is gone (SPEC §5.4).
    pub(super) fn notify_binary(&mut self, server_id: &str, conn_id: &str, code: u16) {
        let Some(binary) = self.registry.binary(server_id) else {
            return;
        };
        if let Some(out) = self.conns.queue(binary) {
            envelope::write_close_notice(out, conn_id, code);
        }
        self.check_high_water(binary, server_id);
    }

    /// Stops reading a binary's phones once its output passes high water.
    fn check_high_water(&mut self, binary: Handle, server_id: &str) {
        let queued = self
            .conns
            .get(binary)
            .map_or(0, |conn| conn.pending_output());
        if queued > self.config.binary_high_water
            && self.registry.set_backpressured(server_id, true)
        {
            self.metrics.backpressure_pauses += 1;
            info!("backpressure_on server_id={server_id}");
        }
    }

    /// After a flush: resumes a binary's phones once its output is below
    /// low water.
    pub(super) fn on_binary_drained(&mut self, handle: Handle, pending: usize) {
        if pending > self.config.binary_low_water {
            return;
        }
        let Some(Peer::Binary(server_id)) = self.conns.get(handle).and_then(|conn| conn.peer())
        else {
            return;
        };
        let server_id = server_id.clone();
        if self.registry.set_backpressured(&server_id, false) {
            info!("backpressure_off server_id={server_id}");
            self.resume_phones(&server_id);
        }
    }

    /// Reads every phone of `server_id` again, readiness event or not.
    pub(super) fn resume_phones(&mut self, server_id: &str) {
        for &phone in self.registry.phones(server_id) {
            self.conns.resume(phone);
        }
    }
}
