//! The turn of the loop (below); also accepting connections (with a
//! back-off when out of descriptors), signals, the helpers' waker and the
//! start of a graceful shutdown.
//!
//! ```text
//! Relay::turn
//!  1. poll(timeout = next deadline | a network event with the manual clock)
//!  2. for each event:  listener → accept until WouldBlock (or back off)
//!                      signal   → shutdown (SIGTERM, SIGINT), reload (SIGHUP),
//!                                 upgrade (SIGUSR2)
//!                      waker    → push outcomes, ACME certificates
//!                      socket   → flush if writable; read if readable
//!  3. read every connection on the resume list
//!  4. fire the due timers
//!  5. flush every connection that got output this turn, once
//!  6. (manual clock) parked POST /clock/advance requests: catch up, advance, answer
//!  7. an upgrade that is ready re-executes in place (`handover.rs`)
//! ```

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::deadlines::TimerKey;
use super::lifecycle::Conn;
use super::Relay;
use crate::proxy_protocol::HEADER_DEADLINE;

/// Tokens that are neither connections (at most `usize::MAX - 16`, see
/// `conns.rs`) nor listeners (the top [`super::MAX_LISTENERS`], see
/// `listeners.rs`).
pub(super) const SIGNALS: Token = Token(usize::MAX - 8);
/// The loop's waker: push outcomes or ACME certificates are waiting.
pub(super) const WAKER: Token = Token(usize::MAX - 9);

/// How long accepting pauses after `accept` failed (EMFILE, ENFILE, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One readiness event, copied out of `Events` so handling it may borrow
/// the relay mutably.
#[derive(Clone, Copy)]
pub(super) struct Readiness {
    token: Token,
    readable: bool,
    writable: bool,
    /// The peer closed its side, or the socket has an error.
    closed: bool,
}

impl Relay {
    /// One turn of the loop. `timeout` overrides how long `poll` may wait;
    /// `None` waits until the next deadline (real clock) or, under a
    /// manual clock, until a socket or signal is ready (no deadline comes
    /// due by itself). Returns whether anything happened.
    pub fn turn(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        let timeout = timeout.or_else(|| self.poll_timeout());
        let mut busy = self.poll_and_dispatch(timeout)?;
        busy |= self.read_resumed();
        busy |= self.fire_timers();
        self.flush_dirty();
        busy |= self.run_parked_advances()?;
        self.hand_over_if_ready();
        Ok(busy)
    }

    /// Steps 1 and 2: waits up to `timeout` for readiness and handles
    /// every event. Returns whether there was any.
    pub(super) fn poll_and_dispatch(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        if let Err(err) = self.poll.poll(&mut self.events, timeout) {
            if err.kind() == ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(err);
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|event| {
            let closed = event.is_read_closed() || event.is_error();
            Readiness {
                token: event.token(),
                readable: event.is_readable() || closed,
                writable: event.is_writable(),
                closed,
            }
        }));
        for &readiness in &ready {
            self.dispatch(readiness);
        }
        let any = !ready.is_empty();
        self.ready = ready;
        Ok(any)
    }

    /// Step 3: reads every connection on the resume list. Returns whether
    /// there was any.
    pub(super) fn read_resumed(&mut self) -> bool {
        let resumed = self.conns.take_resume();
        for &handle in &resumed {
            self.pump(handle);
        }
        !resumed.is_empty()
    }

    /// How long `poll` may sleep: until the next deadline on a real clock.
    /// Under a manual clock no deadline comes due by itself, so the loop
    /// sleeps until a socket or a signal wakes it — unless work is waiting
    /// (connections to read again, or a timer already due).
    fn poll_timeout(&self) -> Option<Duration> {
        if self.conns.has_resume() {
            return Some(Duration::ZERO);
        }
        let next = self.timers.next_deadline();
        let now = self.clock.now();
        if !self.clock.is_real() {
            return next.filter(|&at| at <= now).map(|_| Duration::ZERO);
        }
        let wait = next?.saturating_duration_since(now);
        Some(wait + Duration::from_millis(1))
    }

    fn dispatch(&mut self, event: Readiness) {
        match event.token {
            SIGNALS => self.on_signal(),
            WAKER => {
                self.on_wake_outcomes();
                self.on_acme_events();
            }
            token if self.listeners.index_of(token).is_some() => {
                if let Some(index) = self.listeners.index_of(token) {
                    self.accept(index);
                }
            }
            token => {
                let Some(handle) = self.conns.by_token(token) else {
                    return; // a connection dropped earlier in this turn
                };
                if event.writable {
                    self.flush(handle);
                }
                if event.readable {
                    // Without a FIN or error in this event, a short read
                    // means the socket is drained: edge-triggered epoll
                    // reports the next bytes as a new event, so the
                    // `recv` that would only say EAGAIN is skipped.
                    self.pump_until(handle, !event.closed);
                }
            }
        }
    }

    /// SIGUSR2 starts an upgrade (`handover.rs`); SIGHUP reloads the
    /// certificate files (`certs.rs`); SIGTERM and SIGINT a graceful
    /// shutdown.
    fn on_signal(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for signal in pending {
            match signal {
                signal_hook::consts::SIGUSR2 => self.on_upgrade_signal(),
                signal_hook::consts::SIGHUP => {
                    self.reload_certificates();
                }
                _ => self.shutdown(),
            }
        }
    }

    /// Accepts what waits on the listener at `index`.
    fn accept(&mut self, index: usize) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, remote)) => self.admit(stream, remote, index),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => return self.pause_accepting(&err),
            }
        }
    }

    /// `accept` failed for a reason that will not go away at once (out of
    /// file descriptors: EMFILE, ENFILE; or out of kernel memory): stop
    /// accepting for [`ACCEPT_BACKOFF`] instead of retrying on every
    /// listener event. Pending connections wait in the kernel's backlog.
    fn pause_accepting(&mut self, err: &std::io::Error) {
        self.accept_paused = true;
        self.accept_pauses += 1;
        if self.accept_pauses == 1 {
            warn!(
                "accept_paused error={err} backoff_ms={} connections={}",
                ACCEPT_BACKOFF.as_millis(),
                self.conns.len()
            );
        }
        let at = self.clock.now() + ACCEPT_BACKOFF;
        self.timers.schedule(at, TimerKey::AcceptBackoff);
    }

    /// The back-off is over: accept whatever waits in the backlog.
    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused = false;
        let indexes: Vec<usize> = self.listeners.indexes().collect();
        for index in indexes {
            self.accept(index);
        }
        if !self.accept_paused && self.accept_pauses > 0 {
            info!(
                "accept_resumed pauses={} connections={}",
                self.accept_pauses,
                self.conns.len()
            );
            self.accept_pauses = 0;
        }
    }

    /// A new connection: its transport (PROXY header, TLS, or plain), a
    /// table entry, `READABLE` interest, and the handshake deadline — at
    /// most [`HEADER_DEADLINE`] away while a PROXY header is awaited.
    fn admit(&mut self, stream: TcpStream, remote: SocketAddr, index: usize) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (origin, proxied) = (listener.origin, listener.recipe.proxy_protocol);
        let transport = match listener.recipe.start(stream) {
            Ok(transport) => transport,
            Err(err) => return warn!("accept_refused remote={remote} error={err}"),
        };
        let now = self.clock.now();
        let mut handshake = now + self.config.handshake_timeout;
        if proxied {
            handshake = handshake.min(now + HEADER_DEADLINE);
        }
        let Some(handle) = self
            .conns
            .insert(|handle| Conn::accepted(handle.id(), transport, origin, remote, handshake))
        else {
            warn!("accept_refused remote={remote} reason=table_full");
            return;
        };
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut conn.transport, handle.token(), Interest::READABLE)
        {
            warn!("register_failed remote={remote} error={err}");
            self.conns.remove(handle);
            return;
        }
        self.arm(handle);
    }

    /// Begins a graceful shutdown (SPEC §9): stop accepting, close every
    /// WebSocket 1001 "shutting down" after what is queued, and wait for
    /// the close handshakes until the drain deadline.
    pub fn shutdown(&mut self) {
        if self.drain_until.is_some() {
            return;
        }
        info!("shutdown_started connections={}", self.conns.len());
        self.listeners.close_all(self.poll.registry());
        self.stop_acme();
        let until = self.clock.now() + self.config.drain_timeout;
        self.drain_until = Some(until);
        self.timers.schedule(until, TimerKey::Drain);
        self.close_all_for_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Config, ManualClock, Relay, SystemClock};

    fn config() -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        }
    }

    /// `--manual-clock` must not spin a core: with nothing to do and no
    /// timer due, `poll` waits for a socket or a signal, however long.
    #[test]
    fn a_manual_clock_loop_sleeps_until_a_socket_is_ready() {
        let clock = ManualClock::new();
        let relay = Relay::new(config(), Box::new(clock.clone())).unwrap();
        assert_eq!(relay.poll_timeout(), None);
        // A timer due now (the clock moved without the relay firing it).
        clock.advance(Duration::from_secs(61));
        assert_eq!(relay.poll_timeout(), Some(Duration::ZERO));
    }

    #[test]
    fn a_real_clock_loop_sleeps_until_the_next_deadline() {
        let relay = Relay::new(config(), Box::new(SystemClock)).unwrap();
        // The first timer is the memory trim, TRIM_INTERVAL (4 s) away.
        let timeout = relay.poll_timeout().expect("the trim timer stands");
        let trim = super::super::deadlines::TRIM_INTERVAL;
        assert!(
            timeout > trim - Duration::from_millis(500)
                && timeout <= trim + Duration::from_millis(20),
            "{timeout:?}"
        );
    }
}
