//! Reading a connection: its transport (the socket, and the PROXY and TLS
//! layers if its listener has them) into the one shared scratch buffer,
//! then, by phase, the bytes to the request-head parser (the HTTP phase),
//! through the connection's WebSocket [`Reader`] to whoever handles each
//! event — messages to routing, pings and pongs to the heartbeat, the
//! peer's close and protocol errors to the lifecycle — or into the void
//! (a draining connection).
//!
//! Sockets are edge-triggered: a connection is read until `WouldBlock`,
//! until a short read when the readiness event carried no FIN or error,
//! until a budget of [`READS_PER_EVENT`] reads (then it goes on the
//! resume list, so one busy peer cannot starve the others), or until it
//! may no longer be read ([`Relay::may_read`]: backpressure). Decoding
//! stops at the first event after which the connection may no longer be
//! read; the rest waits in its reader.

use log::debug;

use super::conns::Handle;
use super::lifecycle::{Conn, Peer, Phase};
use super::Relay;
use crate::config::READ_CHUNK;
use crate::http::{self, Head};
use crate::metrics::HttpRefusal;
use crate::proxy_protocol::HEADER_DEADLINE;
use crate::transport::Input;
use crate::ws::{Event, Reader, Role};

/// Reads one readiness event may do before other connections get a turn.
const READS_PER_EVENT: usize = 16;

impl Relay {
    /// Reads whatever `handle` has to offer, as its phase allows.
    pub(super) fn pump(&mut self, handle: Handle) {
        self.pump_until(handle, false);
    }

    /// Like [`Relay::pump`]; with `short_read_drains`, an open WebSocket
    /// stops reading at the first read that did not fill the buffer.
    pub(super) fn pump_until(&mut self, handle: Handle, short_read_drains: bool) {
        match self.conns.get(handle).map(Conn::phase) {
            Some(Phase::Head(_)) => self.read_head(handle),
            Some(Phase::Draining { .. }) => self.read_and_discard(handle),
            Some(Phase::Open(_) | Phase::Closing) => self.read_frames(handle, short_read_drains),
            None => {}
        }
    }

    /// Whether the relay reads from `handle` now. Phones are not read
    /// while their binary is backpressured; a challenger is not read while
    /// its claim is being decided; no connection is read while its own
    /// output queue is over [`crate::Config::output_read_limit`] (a peer
    /// that pings without reading its pongs).
    pub(super) fn may_read(&self, handle: Handle) -> bool {
        let Some(conn) = self.conns.get(handle) else {
            return false;
        };
        if conn.pending_output() > self.config.output_read_limit() {
            return false;
        }
        match conn.peer() {
            Some(Peer::Phone { server_id, .. }) => self.registry.phones_may_send(server_id),
            Some(Peer::Challenger(_)) => false,
            _ => true,
        }
    }

    /// One read of the transport into the scratch buffer. Handshake
    /// output the read produced (a TLS server flight) goes on this turn's
    /// flush list.
    fn read_socket(&mut self, handle: Handle) -> Input {
        debug_assert_eq!(self.scratch.len(), READ_CHUNK);
        let Some((conn, pool)) = self.conns.with_pool(handle) else {
            return Input::Closed;
        };
        let input = conn.transport.read(&mut self.scratch, pool);
        if let Input::Failed(err) = &input {
            debug!("read_failed remote={} error={err}", conn.remote);
        }
        if conn.transport.pending_output() > 0 {
            self.conns.mark_dirty(handle);
        }
        input
    }

    /// The HTTP phase: bytes accumulate until the request head is
    /// complete (431 past the head limit, 400 if it is not HTTP). Before
    /// that, the transport may still be reading a PROXY header or doing a
    /// TLS handshake; the client address it learns replaces the peer's.
    fn read_head(&mut self, handle: Handle) {
        loop {
            let input = self.read_socket(handle);
            self.learn_source(handle);
            let n = match input {
                Input::Data { len, .. } => len,
                Input::Again => continue,
                Input::WouldBlock => return,
                Input::Closed | Input::Failed(_) => return self.vanish(handle),
                Input::Refused(refusal) => return self.end_transport(handle, refusal),
            };
            let Some((conn, pool)) = self.conns.with_pool(handle) else {
                return;
            };
            let Some(head) = conn.head_mut() else {
                return;
            };
            let head = head.get_or_insert_with(|| pool.get());
            head.extend_from_slice(&self.scratch[..n]);
            match http::parse_head(head, self.config.max_header_size) {
                Head::Partial => continue,
                Head::TooLarge => return self.refuse_head(handle, HttpRefusal::HeadTooLarge),
                Head::Malformed => return self.refuse_head(handle, HttpRefusal::MalformedHead),
                Head::Complete { len, request } => return self.on_request(handle, len, request),
            }
        }
    }

    /// The PROXY header named the client: it is the connection's address
    /// from now on (rate limit, per-IP caps, logs), and the handshake
    /// deadline, held to the header's 5 s until now, becomes
    /// `--handshake-timeout` from the accept.
    fn learn_source(&mut self, handle: Handle) {
        let handshake_timeout = self.config.handshake_timeout;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let Some(source) = conn.transport.take_source() else {
            return;
        };
        debug!("proxy_header remote={} source={source}", conn.remote);
        conn.remote = source;
        conn.client_ip = source.ip();
        if let Some(at) = conn.deadlines.handshake {
            let header_wait = HEADER_DEADLINE.min(handshake_timeout);
            conn.deadlines.handshake = Some(at - header_wait + handshake_timeout);
        }
    }

    fn read_frames(&mut self, handle: Handle, short_read_drains: bool) {
        if self
            .conns
            .get(handle)
            .is_some_and(|conn| conn.reader.has_pending())
            && self.may_read(handle)
        {
            self.decode(handle, 0);
        }
        for _ in 0..READS_PER_EVENT {
            if !self.may_read(handle) {
                return;
            }
            match self.read_socket(handle) {
                Input::Data { len, more } => {
                    self.decode(handle, len);
                    if short_read_drains && !more {
                        return;
                    }
                }
                Input::Again => {}
                Input::WouldBlock => return,
                Input::Closed | Input::Failed(_) => return self.vanish(handle),
                Input::Refused(refusal) => return self.end_transport(handle, refusal),
            }
        }
        self.conns.resume(handle);
    }

    /// Runs the first `n` scratch bytes (after whatever the reader kept
    /// from before) through the connection's reader, handling each event
    /// while the connection may still be read.
    fn decode(&mut self, handle: Handle, n: usize) {
        self.read_at = self.clock.now();
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        // The reader and the scratch buffer leave `self` while events are
        // handled, so that handling may borrow the whole relay.
        let mut reader = std::mem::replace(&mut conn.reader, Reader::new(Role::Server));
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut batch = reader.batch(&mut scratch[..n], self.config.max_message_size);
        while self.may_read(handle) && self.is_decoding(handle) {
            let Some(event) = batch.next(&mut self.conns.pool) else {
                break;
            };
            match event {
                Event::Message { payload, .. } => self.on_message(handle, payload),
                Event::Ping(payload) => self.answer_ping(handle, payload),
                Event::Pong(payload) => self.on_pong(handle, payload),
                Event::Close { code, .. } => self.on_peer_close(handle, code),
                Event::Error(error) => self.on_protocol_error(handle, error),
            }
        }
        batch.finish(&mut self.conns.pool);
        self.scratch = scratch;
        match self.conns.get_mut(handle) {
            Some(conn) => conn.reader = reader,
            None => reader.release(&mut self.conns.pool),
        }
        self.track_message_deadline(handle);
    }

    /// Whether the connection's frames still matter: an open WebSocket,
    /// or one waiting for the peer's close.
    fn is_decoding(&self, handle: Handle) -> bool {
        self.conns
            .get(handle)
            .is_some_and(|conn| matches!(conn.phase(), Phase::Open(_) | Phase::Closing))
    }

    fn read_and_discard(&mut self, handle: Handle) {
        loop {
            match self.read_socket(handle) {
                Input::Data { .. } | Input::Again => continue,
                Input::WouldBlock => return,
                Input::Closed | Input::Failed(_) | Input::Refused(_) => return self.vanish(handle),
            }
        }
    }

    /// Starts the message deadline when a frame or fragmented message is
    /// left incomplete, and clears it when nothing is in progress (SPEC
    /// §6, slow-dribble defence).
    fn track_message_deadline(&mut self, handle: Handle) {
        let at = self.clock.now() + self.config.message_timeout;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let open = matches!(conn.phase(), Phase::Open(_));
        if !open || !conn.reader.is_mid_message() {
            conn.deadlines.message = None;
        } else if conn.deadlines.message.is_none() {
            conn.deadlines.message = Some(at);
            self.arm(handle);
        }
    }
}
