//! A connection's life: its state, every phase change, and every way it
//! ends (SPEC §8, §9). `docs/LIFECYCLE.md` walks one connection through
//! this file.
//!
//! ```text
//! accept ─▶ Head ──(HTTP answer: healthz, metrics, 404, 4xx, 503, 408; or a TLS alert)──▶ Draining ─▶ gone
//!            │ │└──(101, then refused: 4404 / 4409 / 4429)──▶ Closing
//!            │ └───(EOF, error; silent close: PROXY refused, handshake unfinished at its deadline)──▶ gone
//!            │ 101
//!            ▼
//!          Open(Peer) ──(relay closes: code sent)──▶ Closing ──(peer's close, or a protocol error)──▶ Draining ─▶ gone
//!            │ │ └────(peer closes: echo sent)────────────────────────────────────▶ Draining
//!            │ └──────(protocol error: close sent)───────────────────────────────▶ Draining
//!            └────────(EOF, error, output stalled)───────────────────────────────────────────────────▶ gone
//!          Open(Challenger) ──(probe unanswered, or holder gone)──▶ Open(Binary)
//!          Closing, Draining ──(EOF, error, close deadline, output stalled, end of the shutdown drain)──▶ gone
//! ```
//!
//! [`Conn::enter`] is the only writer of a connection's phase; its `match`
//! lists the transitions above and debug-asserts that nothing else
//! happens. The invariants of each phase:
//!
//! - **Head**: no WebSocket yet; `head` holds a partial request head; only
//!   the handshake deadline is set; nothing counts against the caps.
//! - **Open**: the 101 was sent; the connection counts against the caps
//!   (`counted`); a binary or phone is in the registry and the gauges; the
//!   ping deadline is set; `reader` decodes its frames.
//! - **Closing**: our close frame is queued; the peer's part is over
//!   (detached: registry, gauges and close notice done); only the close and
//!   stall deadlines remain; frames are decoded only to find the peer's
//!   close.
//! - **Draining**: the last bytes are queued; once written, FIN is sent
//!   and the socket is read and discarded until EOF (a lingering close, so
//!   the peer sees our last bytes rather than a reset), bounded by the
//!   close deadline.
//! - **gone**: [`Relay::drop_conn`] removed it from the table, gave its
//!   buffers back and, if it was still open, detached its peer.
//!
//! A connection owns no buffer while it is idle: `head` exists only while
//! a request head is partial, the reader's buffers only while a frame or
//! fragmented message is partial, `out` only while output is unsent.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use log::{debug, info};

use super::conns::Handle;
pub use super::listeners::Origin;
use super::Relay;
use crate::buffer::{BufferPool, OutQueue};
use crate::handover::snapshot::DeadlineSet;
use crate::transport::{Refusal, Transport};
use crate::ws::{self, close, FrameError, Reader};

/// What the far end of an open WebSocket is.
#[derive(Debug)]
pub enum Peer {
    /// A binary holding `server_id`.
    Binary(Rc<str>),
    /// A binary claiming a held server-id, waiting for the conflict probe.
    /// Nothing is read from it meanwhile.
    Challenger(Rc<str>),
    /// A phone of `server_id`.
    Phone {
        server_id: Rc<str>,
        conn_id: Rc<str>,
    },
}

/// Where a connection is in its life (the diagram at the top).
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head; the bytes of a partial head.
    Head(Option<Vec<u8>>),
    /// An open WebSocket.
    Open(Peer),
    /// The relay sent a close frame and waits for the peer's.
    Closing,
    /// The last bytes are queued; `fin_sent` once they are out.
    Draining { fin_sent: bool },
}

/// Every deadline a connection can have; the earliest is in the wheel.
/// (The snapshot carries the same set as time remaining.)
pub type Deadlines = DeadlineSet<Instant>;

impl Deadlines {
    /// The earliest deadline set.
    pub fn earliest(&self) -> Option<Instant> {
        self.all().into_iter().flatten().min()
    }

    /// Only the deadlines of a connection whose WebSocket is ending: the
    /// close handshake from now on, and an output stall already running.
    fn ending(&self, close_at: Instant) -> Deadlines {
        Deadlines {
            close: Some(close_at),
            stall: self.stall,
            ..Deadlines::default()
        }
    }
}

/// One accepted socket.
pub struct Conn {
    /// Unique for the life of the process (slab keys are reused).
    pub id: u64,
    pub transport: Transport,
    pub origin: Origin,
    pub remote: SocketAddr,
    /// The address limits apply to (the peer, or `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// Written only by [`Conn::enter`].
    phase: Phase,
    /// The WebSocket decoder: partial frames and fragmented messages.
    pub reader: Reader,
    /// Bytes queued for the socket.
    pub out: Option<OutQueue>,
    pub deadlines: Deadlines,
    /// The deadline the wheel holds for this connection, if any.
    pub armed: Option<Instant>,
    /// Whether WRITABLE interest is registered.
    pub wants_write: bool,
    /// Whether the connection is on the flush list of this turn.
    pub dirty: bool,
    /// Whether this connection counts against the connection caps.
    pub counted: bool,
    /// The balancer's own connection (a PROXY `LOCAL` header): it may ask
    /// for `/healthz` and nothing else.
    pub health_check_only: bool,
}

impl Conn {
    /// A connection just accepted: reading its request head, with the
    /// handshake deadline at `handshake`.
    pub fn accepted(
        id: u64,
        transport: Transport,
        origin: Origin,
        remote: SocketAddr,
        handshake: Instant,
    ) -> Conn {
        Conn {
            id,
            transport,
            origin,
            remote,
            client_ip: remote.ip(),
            phase: Phase::Head(None),
            reader: Reader::new(ws::Role::Server),
            out: None,
            deadlines: Deadlines {
                handshake: Some(handshake),
                ..Deadlines::default()
            },
            armed: None,
            wants_write: false,
            dirty: false,
            counted: false,
            health_check_only: false,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The open peer, if any.
    pub fn peer(&self) -> Option<&Peer> {
        match &self.phase {
            Phase::Open(peer) => Some(peer),
            _ => None,
        }
    }

    /// Bytes queued and not yet written: the output queue, and what the
    /// transport owes the peer (TLS ciphertext).
    pub fn pending_output(&self) -> usize {
        self.out.as_ref().map_or(0, OutQueue::pending) + self.transport.pending_output()
    }

    /// The bytes of a partial request head (Head only).
    pub fn head(&self) -> Option<&Vec<u8>> {
        match &self.phase {
            Phase::Head(head) => head.as_ref(),
            _ => None,
        }
    }

    /// Where a request head's bytes accumulate (Head only).
    pub fn head_mut(&mut self) -> Option<&mut Option<Vec<u8>>> {
        match &mut self.phase {
            Phase::Head(head) => Some(head),
            _ => None,
        }
    }

    /// Whether the connection holds any buffer.
    pub fn holds_buffers(&self) -> bool {
        self.head().is_some()
            || self.out.is_some()
            || self.reader.holds_buffers()
            || self.transport.holds_buffers()
    }

    /// Moves to `next`; returns the phase left. The one place a phase
    /// changes: the `match` is the diagram at the top of this file.
    pub fn enter(&mut self, next: Phase) -> Phase {
        let allowed = match (&self.phase, &next) {
            (Phase::Head(_), Phase::Open(_) | Phase::Closing) => true,
            (Phase::Open(Peer::Challenger(_)), Phase::Open(Peer::Binary(_))) => true,
            (Phase::Open(_), Phase::Closing) => true,
            (Phase::Head(_) | Phase::Open(_) | Phase::Closing, Phase::Draining { fin_sent }) => {
                !fin_sent
            }
            (Phase::Draining { fin_sent: false }, Phase::Draining { fin_sent: true }) => true,
            _ => false,
        };
        debug_assert!(allowed, "no such phase change: {:?} → {next:?}", self.phase);
        std::mem::replace(&mut self.phase, next)
    }

    /// Sends FIN once a draining connection's last bytes are written (TLS
    /// sends `close_notify` before it).
    pub fn fin_when_flushed(&mut self, pool: &mut BufferPool) {
        if matches!(self.phase, Phase::Draining { fin_sent: false }) && self.pending_output() == 0 {
            self.enter(Phase::Draining { fin_sent: true });
            self.transport.shutdown_write(pool);
        }
    }
}

/// The order in which shutdown closes open peers.
#[derive(Clone, Copy)]
enum ShutdownPass {
    Phones,
    Challengers,
    Binaries,
}

impl ShutdownPass {
    fn takes(self, peer: &Peer) -> bool {
        matches!(
            (self, peer),
            (ShutdownPass::Phones, Peer::Phone { .. })
                | (ShutdownPass::Challengers, Peer::Challenger(_))
                | (ShutdownPass::Binaries, Peer::Binary(_))
        )
    }
}

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
    /// The code of the close notice the binary gets, if it gets one
    /// (SPEC §5.4).
    pub fn notice(self) -> Option<u16> {
        match self {
            Ending::Peer(code) | Ending::Relay(code) => Some(code),
            Ending::Vanished => Some(close::GOING_AWAY),
            Ending::Directive | Ending::Displaced | Ending::Shutdown => None,
        }
    }
}

/// Why the relay closes a WebSocket (SPEC §8): the close frame it sends
/// and how the peer's part ends follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The peer's bytes broke the protocol (1002, 1007, 1009).
    Protocol(FrameError),
    /// A phone's message is not JSON (1007).
    NotJson,
    /// No pong in time (1011 "heartbeat timeout").
    Heartbeat,
    /// A started message did not complete in time (1008).
    MessageTimeout,
    /// A phone's output queue is over its budget (1011).
    BacklogFull,
    /// The binary asked for it, with this code (SPEC §5.2).
    Directive(u16),
    /// A holder that did not answer the conflict probe (1011).
    TakenOver,
    /// A phone whose server-id a new binary claimed (4404).
    Reclaimed,
    /// A phone whose server-id's grace window ended (4404).
    ServerGone,
    /// A claim that lost to the holder (4409).
    Conflict,
    /// A phone for a server-id nobody holds (4404).
    NoServer,
    /// A phone beyond the per-server-id cap (4429).
    PhonesAtCap,
    /// Graceful shutdown (1001).
    Shutdown,
}

impl Close {
    /// The code and reason of the close frame.
    pub fn frame(self) -> (u16, &'static str) {
        match self {
            Close::Protocol(error) => (error.close_code(), ""),
            Close::NotJson => (close::INVALID_PAYLOAD, ""),
            Close::Heartbeat | Close::TakenOver => (close::INTERNAL, "heartbeat timeout"),
            Close::MessageTimeout => (close::POLICY, "message timeout"),
            Close::BacklogFull => (close::INTERNAL, "phone backlog full"),
            Close::Directive(code) => (code, ""),
            Close::Reclaimed => (close::NOT_FOUND, "binary reclaimed server-id"),
            Close::ServerGone => (close::NOT_FOUND, "binary gone"),
            Close::Conflict => (close::CONFLICT, "server-id already claimed"),
            Close::NoServer => (close::NOT_FOUND, "no server with that id"),
            Close::PhonesAtCap => (close::TOO_MANY, "too many phones for server-id"),
            Close::Shutdown => (close::GOING_AWAY, "shutting down"),
        }
    }

    /// How the peer's part ends, for the close notice.
    fn ending(self) -> Ending {
        match self {
            Close::Protocol(_)
            | Close::NotJson
            | Close::Heartbeat
            | Close::MessageTimeout
            | Close::BacklogFull => Ending::Relay(self.frame().0),
            Close::Directive(_) => Ending::Directive,
            Close::Shutdown => Ending::Shutdown,
            Close::TakenOver
            | Close::Reclaimed
            | Close::ServerGone
            | Close::Conflict
            | Close::NoServer
            | Close::PhonesAtCap => Ending::Displaced,
        }
    }
}

impl Relay {
    /// The WebSocket of `handle` now serves `peer`: after the 101, or a
    /// challenger promoted to holder. Counts it in the gauges.
    pub(super) fn open(&mut self, handle: Handle, peer: Peer) {
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        match &peer {
            Peer::Binary(_) => self.counts.binaries += 1,
            Peer::Phone { .. } => self.counts.phones += 1,
            Peer::Challenger(_) => {}
        }
        conn.deadlines.probe = None;
        conn.enter(Phase::Open(peer));
    }

    /// Closes a WebSocket with `why`'s code after what is queued, and ends
    /// its peer's part now. A connection that was upgraded but never
    /// became a peer (a refused claim or phone) is closed the same way.
    pub(super) fn close(&mut self, handle: Handle, why: Close) {
        let (code, reason) = why.frame();
        match self.conns.get(handle).map(Conn::phase) {
            Some(Phase::Head(_) | Phase::Open(_)) => {}
            _ => return, // closing or closed already
        }
        if let Some(out) = self.conns.queue(handle) {
            ws::write_close(out, Some(code), reason);
        }
        if let Some((Phase::Open(peer), remote)) = self.enter_closing(handle) {
            // A phone held back by backpressure has unread bytes and may
            // get no new readiness edge: read on, to find its close frame.
            self.conns.resume(handle);
            self.detach(handle, peer, why.ending(), remote);
        }
    }

    /// Ends a connection whose bytes broke the protocol: the close frame,
    /// then FIN. The rest of its bytes cannot be framed (an oversized
    /// frame's payload may still be arriving), so they are discarded
    /// rather than parsed (RFC 6455 §7.1.7).
    fn fail(&mut self, handle: Handle, error: FrameError) {
        if let Some(conn) = self.conns.get(handle) {
            debug!(
                "ws_protocol_error remote={} code={} reason={:?}",
                conn.remote,
                error.close_code(),
                error.describe()
            );
        }
        self.close(handle, Close::Protocol(error));
        self.drain(handle);
    }

    /// The reader found a protocol error: an open connection is failed; a
    /// closing one, which may still be sending after our close, is
    /// drained.
    pub(super) fn on_protocol_error(&mut self, handle: Handle, error: FrameError) {
        match self.conns.get(handle).map(Conn::phase) {
            Some(Phase::Closing) => self.drain(handle),
            _ => self.fail(handle, error),
        }
    }

    /// A closing connection sent bytes that cannot be framed: let our
    /// close frame out, then FIN, and discard whatever else comes.
    fn drain(&mut self, handle: Handle) {
        if let Some(conn) = self.conns.get_mut(handle) {
            if matches!(conn.phase, Phase::Closing) {
                conn.enter(Phase::Draining { fin_sent: false });
            }
        }
        self.conns.mark_dirty(handle);
    }

    /// The peer's close frame arrived: echo it (or, if we closed first,
    /// the handshake is complete) and drain.
    pub(super) fn on_peer_close(&mut self, handle: Handle, code: Option<u16>) {
        let close_at = self.clock.now() + self.config.write_timeout;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        if !matches!(conn.phase, Phase::Open(_) | Phase::Closing) {
            return;
        }
        let left = conn.enter(Phase::Draining { fin_sent: false });
        conn.deadlines = conn.deadlines.ending(close_at);
        let remote = conn.remote;
        match left {
            Phase::Open(peer) => {
                if let Some(out) = self.conns.queue(handle) {
                    ws::write_close(out, code, "");
                }
                let ending = Ending::Peer(code.unwrap_or(close::GOING_AWAY));
                self.detach(handle, peer, ending, remote);
            }
            _ => self.conns.mark_dirty(handle),
        }
        self.arm(handle);
    }

    /// The HTTP phase is over and its response (or what the transport
    /// owes) is queued: drain.
    pub(super) fn finish_http(&mut self, handle: Handle) {
        let close_at = self.clock.now() + self.config.write_timeout;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let left = conn.enter(Phase::Draining { fin_sent: false });
        conn.deadlines.handshake = None;
        conn.deadlines.close = Some(close_at);
        if let Phase::Head(Some(head)) = left {
            self.conns.pool.put(head);
        }
        self.arm(handle);
    }

    /// The connection vanished (EOF, reset, a failed write, a stalled
    /// output or an unanswered close): drop it.
    pub(super) fn vanish(&mut self, handle: Handle) {
        self.drop_conn(handle, Ending::Vanished);
    }

    /// A layer under HTTP ends the connection (a refused PROXY header, a
    /// failed TLS handshake or record, a finished TLS-ALPN-01 validation).
    /// Before HTTP began, what the transport owes the peer (a TLS alert,
    /// `close_notify`) is written, then FIN: a lingering close. Otherwise,
    /// and when nothing is owed, the connection is dropped at once: a
    /// refused PROXY header gets no byte at all.
    pub(super) fn end_transport(&mut self, handle: Handle, refusal: Refusal) {
        let Some(conn) = self.conns.get(handle) else {
            return;
        };
        log_refusal(conn.remote, &refusal);
        let owes = conn.transport.pending_output() > 0;
        if owes && matches!(conn.phase, Phase::Head(_)) {
            self.finish_http(handle);
            self.conns.mark_dirty(handle);
        } else {
            self.vanish(handle);
        }
    }

    /// Shutdown begins (SPEC §9): requests still in their head are
    /// dropped, open WebSockets are closed 1001 after what is queued.
    ///
    /// Phones go first, then challengers, then binaries: a binary's part
    /// ending while a phone or a challenger of its server-id is still open
    /// would act on them (a challenger waiting on the conflict probe would
    /// be handed the server-id, and the phones closed 4404 "binary
    /// reclaimed server-id" instead of 1001).
    pub(super) fn close_all_for_shutdown(&mut self) {
        let handles = self.conns.handles();
        for handle in &handles {
            if let Some(Phase::Head(_)) = self.conns.get(*handle).map(Conn::phase) {
                self.drop_conn(*handle, Ending::Shutdown);
            }
        }
        for pass in [
            ShutdownPass::Phones,
            ShutdownPass::Challengers,
            ShutdownPass::Binaries,
        ] {
            for &handle in &handles {
                let peer = self.conns.get(handle).and_then(Conn::peer);
                if peer.is_some_and(|peer| pass.takes(peer)) {
                    self.close(handle, Close::Shutdown);
                }
            }
        }
    }

    /// The shutdown drain is over: whatever is left is dropped.
    pub(super) fn drop_all_for_shutdown(&mut self) {
        let handles = self.conns.handles();
        info!("shutdown_drain_expired connections={}", handles.len());
        for handle in handles {
            self.drop_conn(handle, Ending::Shutdown);
        }
    }

    /// Waits for the peer's close frame, up to the close deadline; returns
    /// the phase left and the peer's address.
    fn enter_closing(&mut self, handle: Handle) -> Option<(Phase, SocketAddr)> {
        let close_at = self.clock.now() + self.config.write_timeout;
        let conn = self.conns.get_mut(handle)?;
        let left = conn.enter(Phase::Closing);
        conn.deadlines = conn.deadlines.ending(close_at);
        let remote = conn.remote;
        self.arm(handle);
        Some((left, remote))
    }

    /// Removes a connection at once: deregisters it, gives its buffers
    /// back and, if it was open, ends its peer's part.
    fn drop_conn(&mut self, handle: Handle, ending: Ending) {
        let Some(mut conn) = self.conns.remove(handle) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.transport);
        if conn.counted {
            self.counts.live -= 1;
            self.limits.connection_closed(conn.client_ip);
        }
        let pool = &mut self.conns.pool;
        conn.transport.release(pool);
        conn.reader.release(pool);
        if let Some(out) = conn.out.take() {
            pool.put(out.into_buffer());
        }
        match conn.phase {
            Phase::Head(Some(head)) => pool.put(head),
            Phase::Open(peer) => self.detach(handle, peer, ending, conn.remote),
            _ => {}
        }
    }

    /// A peer's part is over (its socket is closing or gone): the gauges,
    /// the registry, and what it means for the others — a binary's slot
    /// goes into grace, a phone's binary gets a close notice.
    fn detach(&mut self, handle: Handle, peer: Peer, ending: Ending, remote: SocketAddr) {
        if let Some(conn) = self.conns.get_mut(handle) {
            conn.deadlines.probe = None;
        }
        match peer {
            Peer::Binary(server_id) => {
                self.counts.binaries -= 1;
                info!(
                    "binary_disconnected server_id={server_id} remote={remote} ending={ending:?}"
                );
                if ending != Ending::Displaced {
                    self.binary_left(handle, server_id);
                }
            }
            Peer::Challenger(server_id) => self.challenger_left(handle, &server_id),
            Peer::Phone { server_id, conn_id } => {
                self.counts.phones -= 1;
                self.registry.leave(&server_id, &conn_id, handle);
                info!(
                    "phone_disconnected server_id={server_id} conn_id={conn_id} ending={ending:?}"
                );
                if let Some(code) = ending.notice() {
                    self.notify_binary(&server_id, &conn_id, code);
                }
            }
        }
    }
}

/// One line for a connection a layer under HTTP ended.
fn log_refusal(remote: SocketAddr, refusal: &Refusal) {
    match refusal {
        Refusal::ProxyHeader(why) => {
            info!(
                "proxy_header_refused remote={remote} reason={}",
                why.as_str()
            )
        }
        Refusal::Tls(error) => debug!("tls_failed remote={remote} error=\"{error}\""),
        Refusal::TlsHandshakeTooLarge => {
            info!("tls_failed remote={remote} error=\"handshake message too large\"")
        }
        Refusal::AcmeValidationDone => info!("acme_tls_alpn01_validated remote={remote}"),
    }
}

/// A connection handed over by an upgrade (`restore.rs`) comes back in
/// the phase it was in: the one way to make a `Conn` in any phase other
/// than `Head`, and not a transition.
pub struct Restored {
    pub transport: Transport,
    pub origin: Origin,
    pub remote: SocketAddr,
    pub client_ip: IpAddr,
    pub phase: Phase,
    pub reader: Reader,
    pub out: Option<OutQueue>,
    pub deadlines: Deadlines,
    pub counted: bool,
}

impl Conn {
    pub fn restored(id: u64, parts: Restored) -> Conn {
        Conn {
            id,
            transport: parts.transport,
            origin: parts.origin,
            remote: parts.remote,
            client_ip: parts.client_ip,
            phase: parts.phase,
            reader: parts.reader,
            out: parts.out,
            deadlines: parts.deadlines,
            armed: None,
            wants_write: false,
            dirty: false,
            counted: parts.counted,
            health_check_only: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection, idle or not, is one `Conn` in the slab: its size
    /// is most of the relay's memory per idle connection (docs/SECURITY.md).
    /// (336 bytes before the output queue gained room for one timed frame;
    /// 360 before the transport gained a pointer to its PROXY or TLS layer.
    /// Debug builds: mio's socket carries an extra 8-byte selector id.)
    #[test]
    fn a_connection_stays_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 368,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn only_the_diagrams_transitions_are_allowed() {
        let server_id: Rc<str> = Rc::from("s");
        let open = || Phase::Open(Peer::Binary(server_id.clone()));
        let allowed = |from: Phase, to: Phase| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut conn = test_conn();
                conn.phase = from;
                conn.enter(to);
            }));
            result.is_ok()
        };
        assert!(allowed(Phase::Head(None), open()));
        assert!(allowed(Phase::Head(None), Phase::Closing));
        assert!(allowed(open(), Phase::Draining { fin_sent: false }));
        assert!(allowed(Phase::Closing, Phase::Draining { fin_sent: false }));
        assert!(allowed(
            Phase::Open(Peer::Challenger(server_id.clone())),
            open()
        ));
        if cfg!(debug_assertions) {
            assert!(!allowed(Phase::Closing, open()));
            assert!(!allowed(open(), Phase::Head(None)));
            assert!(!allowed(
                Phase::Head(None),
                Phase::Draining { fin_sent: true }
            ));
            assert!(!allowed(open(), open()));
        }
    }

    fn test_conn() -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let remote = stream.local_addr().unwrap();
        Conn::accepted(
            1,
            Transport::plain(mio::net::TcpStream::from_std(stream)),
            Origin::WebSocket,
            remote,
            Instant::now(),
        )
    }
}
