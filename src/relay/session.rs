//! An upgraded connection's WebSocket frames (SPEC §6, §8): decoding what
//! arrived, answering pings, noting pongs, reassembling fragmented
//! messages, running the close handshake, and handing complete messages to
//! routing.

use log::{debug, info};

use super::conn::{Peer, Phase};
use super::routing::Ending;
use super::Relay;
use crate::registry::ConnKey;
use crate::ws::{self, FrameError, FrameKind};

impl Relay {
    /// Decodes and handles the complete frames at the start of `buf`;
    /// returns how many bytes were used. A partial frame is left unused.
    pub(super) fn process_frames(&mut self, key: ConnKey, id: u64, buf: &mut [u8]) -> usize {
        let max_message = self.config.max_message_size;
        let mut at = 0;
        while at < buf.len() {
            let Some(conn) = self.live_conn(key, id) else {
                return buf.len();
            };
            let closing = match conn.phase {
                Phase::Open(_) => false,
                Phase::Closing => true,
                Phase::Head | Phase::Draining { .. } => return buf.len(),
            };
            if !self.may_read(key) {
                // Backpressure began (or this peer's own queue filled) in
                // the middle of a read: the rest waits in its buffer, so a
                // read of many small frames cannot overshoot the limits.
                break;
            }
            let conn = &self.conns[key];
            match ws::parse_frame(&mut buf[at..], &conn.assembler, max_message) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    let payload = at + frame.payload.start..at + frame.payload.end;
                    at += frame.len;
                    self.on_frame(key, frame.kind, frame.is_final, &buf[payload]);
                }
                Err(_) if closing => {
                    // Our close frame may still be queued: let it out, then
                    // FIN, and discard whatever else the peer sends.
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.phase = Phase::Draining { fin_sent: false };
                    }
                    self.mark_dirty(key);
                    return buf.len();
                }
                Err(err) => {
                    self.fail(key, err);
                    return buf.len();
                }
            }
        }
        at
    }

    fn on_frame(&mut self, key: ConnKey, kind: FrameKind, is_final: bool, payload: &[u8]) {
        match kind {
            FrameKind::Ping => {
                if matches!(self.conns[key].phase, Phase::Open(_)) {
                    ws::write_frame(self.queue(key), FrameKind::Pong, payload);
                }
            }
            FrameKind::Pong => self.on_pong(key),
            FrameKind::Close => self.on_peer_close(key, payload),
            FrameKind::Text | FrameKind::Binary if is_final => self.on_message(key, payload),
            FrameKind::Text | FrameKind::Binary => {
                let buffer = self.pool.get();
                let conn = &mut self.conns[key];
                conn.assembler
                    .open(kind == FrameKind::Text, buffer, payload);
            }
            FrameKind::Continuation => {
                let conn = &mut self.conns[key];
                conn.assembler.append(payload);
                if is_final {
                    let (_, message) = conn.assembler.finish();
                    self.on_message(key, &message);
                    self.pool.put(message);
                }
            }
        }
    }

    fn on_message(&mut self, key: ConnKey, payload: &[u8]) {
        match self.conns[key].peer() {
            Some(Peer::Phone { server_id, conn_id }) => {
                // Text or binary opcode alike, the payload must be JSON,
                // which includes being UTF-8: one check covers both (1007).
                let (server_id, conn_id) = (server_id.clone(), conn_id.clone());
                self.forward_from_phone(key, &server_id, &conn_id, payload);
            }
            Some(Peer::Binary(server_id)) => {
                let server_id = server_id.clone();
                self.route_from_binary(&server_id, payload);
            }
            Some(Peer::Challenger(_)) | None => {}
        }
    }

    fn on_pong(&mut self, key: ConnKey) {
        let conn = &mut self.conns[key];
        conn.deadlines.pong = None;
        if let Some(Peer::Binary(server_id)) = conn.peer() {
            let server_id = server_id.clone();
            if let Some(challenger) = self.registry.probe_answered(&server_id, key) {
                info!("server_conflict server_id={server_id} outcome=holder_answered code=4409");
                self.refuse_conflict(challenger, false);
            }
        }
    }

    fn on_peer_close(&mut self, key: ConnKey, payload: &[u8]) {
        let code = match ws::parse_close_payload(payload) {
            Ok(code) => code,
            Err(err) => return self.fail(key, err),
        };
        let close_at = self.clock.now() + self.config.write_timeout;
        let conn = &mut self.conns[key];
        let phase = std::mem::replace(&mut conn.phase, Phase::Draining { fin_sent: false });
        conn.deadlines = super::conn::Deadlines {
            close: Some(close_at),
            stall: conn.deadlines.stall,
            ..Default::default()
        };
        match phase {
            Phase::Open(peer) => {
                ws::write_close(self.queue(key), code, "");
                let ending = Ending::Peer(code.unwrap_or(ws::close::GOING_AWAY));
                let remote = self.conns[key].remote;
                self.detach(key, peer, ending, remote);
            }
            Phase::Closing => {
                // Our close was sent already: the handshake is complete.
                self.mark_dirty(key);
            }
            other => self.conns[key].phase = other,
        }
        self.arm(key);
    }

    /// Ends a connection whose bytes broke the protocol.
    pub(super) fn fail(&mut self, key: ConnKey, err: FrameError) {
        let conn = &self.conns[key];
        debug!(
            "ws_protocol_error remote={} code={} reason={:?}",
            conn.remote,
            err.close_code(),
            err.describe()
        );
        let code = err.close_code();
        self.close_ws(key, code, "", Ending::Relay(code));
        // The peer's bytes can no longer be framed (an oversized frame's
        // payload may still be on its way): parsing them would drop the
        // socket before our close frame is out. Send the close, then FIN,
        // and discard what the peer still sends (RFC 6455 §7.1.7).
        if let Some(conn) = self.conns.get_mut(key) {
            if matches!(conn.phase, Phase::Closing) {
                conn.phase = Phase::Draining { fin_sent: false };
            }
        }
    }

    /// Closes an open WebSocket with `code` and `reason` after what is
    /// queued, and ends its peer role now.
    pub(super) fn close_ws(&mut self, key: ConnKey, code: u16, reason: &str, ending: Ending) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let phase = std::mem::replace(&mut conn.phase, Phase::Closing);
        let Phase::Open(peer) = phase else {
            conn.phase = phase; // closing or closed already
            return;
        };
        let remote = conn.remote;
        ws::write_close(self.queue(key), Some(code), reason);
        self.enter_closing(key);
        // A phone held back by backpressure has unread bytes and may get no
        // new readiness edge: read on, to find the peer's close frame.
        self.resume.push(key);
        self.detach(key, peer, ending, remote);
    }

    /// Waits for the peer's close frame, up to the close deadline.
    pub(super) fn enter_closing(&mut self, key: ConnKey) {
        let close_at = self.clock.now() + self.config.write_timeout;
        let conn = &mut self.conns[key];
        conn.phase = Phase::Closing;
        conn.deadlines = super::conn::Deadlines {
            close: Some(close_at),
            stall: conn.deadlines.stall,
            ..Default::default()
        };
        self.arm(key);
    }
}
