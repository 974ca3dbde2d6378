//! Moving bytes: reading sockets into the shared scratch buffer, keeping
//! only partial data per connection, queueing output and flushing it once
//! per turn. Write interest is registered only while output is pending.

use std::io::{ErrorKind, Read, Write};

use log::{debug, info};
use mio::{Interest, Token};

use super::conn::{Peer, Phase};
use super::routing::Ending;
use super::Relay;
use crate::buffer::OutQueue;
use crate::http::{self, Head};
use crate::registry::ConnKey;

/// Reads one readiness event may do before other connections get a turn.
const READS_PER_EVENT: usize = 16;

/// What one read from a socket gave.
enum ReadOutcome {
    Data(usize),
    WouldBlock,
    Closed,
}

impl Relay {
    /// Reads whatever connection `key` has to offer, as its phase allows.
    pub(super) fn pump(&mut self, key: ConnKey) {
        self.pump_until(key, false);
    }

    /// Like [`Relay::pump`]; with `short_read_drains`, an open WebSocket
    /// stops reading at the first read that did not fill the buffer.
    pub(super) fn pump_until(&mut self, key: ConnKey, short_read_drains: bool) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match &conn.phase {
            Phase::Head => self.read_head(key),
            Phase::Draining { .. } => self.read_and_discard(key),
            Phase::Open(_) | Phase::Closing => self.read_frames(key, short_read_drains),
        }
    }

    /// Whether the relay reads from `key` now. Phones are not read while
    /// their binary is absent or backpressured; a challenger is not read
    /// while its claim is being decided; no connection is read while its
    /// own output queue is over [`Relay::output_read_limit`].
    pub(super) fn may_read(&self, key: ConnKey) -> bool {
        if self
            .conns
            .get(key)
            .is_some_and(|conn| conn.pending_output() > self.output_read_limit())
        {
            return false;
        }
        match self.conns.get(key).and_then(|conn| conn.peer()) {
            Some(Peer::Phone { server_id, .. }) => self.registry.phones_may_send(server_id),
            Some(Peer::Challenger(_)) => false,
            _ => true,
        }
    }

    /// The longest output queue a connection may have and still be read.
    /// Ordinary traffic stays below it (a phone's queue is capped by
    /// `phone_backlog`, a binary's by `binary_high_water` plus one
    /// message); only what a peer's own input makes the relay owe it
    /// (pongs) can go beyond, and a peer that pings without reading its
    /// pongs is not read until it does: its queue stays bounded and the
    /// output-stall deadline ends it.
    pub(super) fn output_read_limit(&self) -> usize {
        self.config.phone_backlog.max(self.config.binary_high_water)
            + self.config.max_message_size
            + super::SCRATCH_SIZE
    }

    fn read_socket(&mut self, key: ConnKey) -> ReadOutcome {
        debug_assert_eq!(self.scratch.len(), super::SCRATCH_SIZE);
        let Some(conn) = self.conns.get_mut(key) else {
            return ReadOutcome::Closed;
        };
        loop {
            return match conn.transport.read(&mut self.scratch) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => ReadOutcome::Data(n),
                Err(err) if err.kind() == ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    debug!("read_failed remote={} error={err}", conn.remote);
                    ReadOutcome::Closed
                }
            };
        }
    }

    fn read_head(&mut self, key: ConnKey) {
        loop {
            let n = match self.read_socket(key) {
                ReadOutcome::Data(n) => n,
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => return self.drop_conn(key, Ending::Vanished),
            };
            let conn = &mut self.conns[key];
            let inbuf = conn.inbuf.get_or_insert_with(|| self.pool.get());
            inbuf.extend_from_slice(&self.scratch[..n]);
            match http::parse_head(inbuf, self.config.max_header_size) {
                Head::Partial => continue,
                Head::TooLarge => return self.respond(key, 431, "", ""),
                Head::Malformed => return self.respond(key, 400, "", ""),
                Head::Complete { len, request } => return self.on_request(key, len, request),
            }
        }
    }

    fn read_frames(&mut self, key: ConnKey, short_read_drains: bool) {
        let id = self.conns[key].id;
        if self.conns[key].inbuf.is_some() && self.may_read(key) {
            self.consume(key, id, 0);
        }
        for _ in 0..READS_PER_EVENT {
            if self.live_conn(key, id).is_none() || !self.may_read(key) {
                return;
            }
            match self.read_socket(key) {
                ReadOutcome::Data(n) => {
                    self.consume(key, id, n);
                    if short_read_drains && n < super::SCRATCH_SIZE {
                        return;
                    }
                }
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => return self.on_eof(key),
            }
        }
        self.resume.push(key);
    }

    /// Feeds the first `n` scratch bytes (after any partial frame kept from
    /// before) to the frame decoder, and keeps what is left of a frame.
    fn consume(&mut self, key: ConnKey, id: u64, n: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.conns[key].inbuf.take() {
            Some(mut inbuf) => {
                inbuf.extend_from_slice(&scratch[..n]);
                self.scratch = scratch;
                let used = self.process_frames(key, id, &mut inbuf);
                inbuf.drain(..used);
                self.keep_partial(key, id, inbuf);
            }
            None => {
                let used = self.process_frames(key, id, &mut scratch[..n]);
                if used < n && self.live_conn(key, id).is_some() {
                    let mut partial = self.pool.get();
                    partial.extend_from_slice(&scratch[used..n]);
                    self.keep_partial(key, id, partial);
                }
                self.scratch = scratch;
            }
        }
        self.track_message_deadline(key, id);
    }

    fn keep_partial(&mut self, key: ConnKey, id: u64, partial: Vec<u8>) {
        match self.live_conn(key, id) {
            Some(conn) if !partial.is_empty() => conn.inbuf = Some(partial),
            _ => self.pool.put(partial),
        }
    }

    fn read_and_discard(&mut self, key: ConnKey) {
        loop {
            match self.read_socket(key) {
                ReadOutcome::Data(_) => continue,
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => return self.drop_conn(key, Ending::Vanished),
            }
        }
    }

    fn on_eof(&mut self, key: ConnKey) {
        self.drop_conn(key, Ending::Vanished);
    }

    /// Puts `key` on this turn's flush list (which also sends the FIN of
    /// a draining connection once its output is out).
    pub(super) fn mark_dirty(&mut self, key: ConnKey) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// The output queue of `key`, put on this turn's flush list.
    pub(super) fn queue(&mut self, key: ConnKey) -> &mut Vec<u8> {
        self.mark_dirty(key);
        let conn = &mut self.conns[key];
        conn.out
            .get_or_insert_with(|| OutQueue::new(self.pool.get()))
            .tail()
    }

    pub(super) fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for key in std::mem::take(&mut self.dirty) {
                self.flush(key);
            }
        }
    }

    /// Writes what `key` has queued until the socket would block.
    pub(super) fn flush(&mut self, key: ConnKey) {
        let now = self.clock.now();
        let write_timeout = self.config.write_timeout;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        let before = conn.pending_output();
        let mut progressed = false;
        if let Some(out) = conn.out.as_mut() {
            while out.pending() > 0 {
                match conn.transport.write(out.unsent()) {
                    Ok(0) => return self.drop_conn(key, Ending::Vanished),
                    Ok(n) => {
                        out.consume(n);
                        progressed = true;
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => {
                        debug!("write_failed remote={} error={err}", conn.remote);
                        return self.drop_conn(key, Ending::Vanished);
                    }
                }
            }
        }
        let pending = conn.pending_output();
        if pending == 0 {
            if let Some(out) = conn.out.take() {
                self.pool.put(out.into_buffer());
            }
            conn.deadlines.stall = None;
        } else if progressed || conn.deadlines.stall.is_none() {
            conn.deadlines.stall = Some(now + write_timeout);
        }
        if let Phase::Draining { fin_sent } = &mut conn.phase {
            if pending == 0 && !*fin_sent {
                *fin_sent = true;
                conn.transport.shutdown_write();
            }
        }
        self.set_write_interest(key, pending > 0);
        if progressed {
            self.on_binary_drained(key, pending);
            let limit = self.output_read_limit();
            if before > limit && pending <= limit {
                self.resume.push(key); // not read while over the limit
            }
        }
        self.arm(key);
    }

    fn set_write_interest(&mut self, key: ConnKey, wanted: bool) {
        let conn = &mut self.conns[key];
        if conn.wants_write == wanted {
            return;
        }
        conn.wants_write = wanted;
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(err) = self
            .poll
            .registry()
            .reregister(&mut conn.transport, Token(key), interest)
        {
            info!("reregister_failed remote={} error={err}", conn.remote);
        }
    }

    /// Queues a complete HTTP response and ends the connection after it.
    pub(super) fn respond(&mut self, key: ConnKey, status: u16, headers: &str, body: &str) {
        let out = self.queue(key);
        http::write_response(out, status, headers, body);
        self.finish_http(key);
    }

    /// Moves a connection whose last bytes are queued to `Draining`.
    pub(super) fn finish_http(&mut self, key: ConnKey) {
        let close_at = self.clock.now() + self.config.write_timeout;
        let conn = &mut self.conns[key];
        conn.phase = Phase::Draining { fin_sent: false };
        conn.deadlines.handshake = None;
        conn.deadlines.close = Some(close_at);
        if let Some(inbuf) = conn.inbuf.take() {
            self.pool.put(inbuf);
        }
        self.arm(key);
    }
}
