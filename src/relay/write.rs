//! Writing a connection. Output is appended to a connection's queue during
//! a turn ([`super::conns::Conns::queue`] puts it on the flush list) and
//! written once, at the end of the turn, until the socket would block.
//! `WRITABLE` interest is registered only while output is pending; output
//! that makes no progress for `--write-timeout` ends the connection (SPEC
//! §6). A flush that drains a binary below low water lifts backpressure
//! (SPEC §7).
//!
//! What the transport owes the peer by itself (a TLS handshake flight,
//! the rest of a record, an alert, `close_notify`) is written first and
//! counts as pending output like the queue.

use std::io::ErrorKind;

use log::{debug, info};
use mio::Interest;

use super::conns::Handle;
use super::Relay;

impl Relay {
    /// Writes every connection that got output this turn, once each.
    pub(super) fn flush_dirty(&mut self) {
        while self.conns.has_dirty() {
            for handle in self.conns.take_dirty() {
                self.flush(handle);
            }
        }
    }

    /// Writes what `handle` has queued until the socket would block.
    pub(super) fn flush(&mut self, handle: Handle) {
        let now = self.clock.now();
        let stall_at = now + self.config.write_timeout;
        let read_limit = self.config.output_read_limit();
        let Some((conn, pool)) = self.conns.with_pool(handle) else {
            return;
        };
        conn.dirty = false;
        let before = conn.pending_output();
        let mut progressed = false;
        match conn.transport.flush_pending(pool) {
            Ok(n) => progressed |= n > 0,
            Err(err) => {
                debug!("write_failed remote={} error={err}", conn.remote);
                return self.vanish(handle);
            }
        }
        if let Some(out) = conn.out.as_mut() {
            while out.pending() > 0 {
                match conn.transport.write(out.unsent(), pool) {
                    Ok(0) => return self.vanish(handle),
                    Ok(n) => {
                        if let Some(timed) = out.consume(n) {
                            let inside = now.saturating_duration_since(timed.read_at);
                            self.metrics.frame_latency(timed.direction, inside);
                        }
                        progressed = true;
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => {
                        debug!("write_failed remote={} error={err}", conn.remote);
                        return self.vanish(handle);
                    }
                }
            }
            if out.pending() == 0 {
                if let Some(out) = conn.out.take() {
                    pool.put(out.into_buffer());
                }
            }
        }
        conn.fin_when_flushed(pool);
        let pending = conn.pending_output();
        if pending == 0 {
            conn.deadlines.stall = None;
        } else if progressed || conn.deadlines.stall.is_none() {
            conn.deadlines.stall = Some(stall_at);
        }
        self.set_write_interest(handle, pending > 0);
        if progressed {
            self.on_binary_drained(handle, pending);
            if before > read_limit && pending <= read_limit {
                self.conns.resume(handle); // not read while over the limit
            }
        }
        self.arm(handle);
    }

    fn set_write_interest(&mut self, handle: Handle, wanted: bool) {
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        if conn.wants_write == wanted {
            return;
        }
        conn.wants_write = wanted;
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(err) =
            self.poll
                .registry()
                .reregister(&mut conn.transport, handle.token(), interest)
        {
            info!("reregister_failed remote={} error={err}", conn.remote);
        }
    }
}
