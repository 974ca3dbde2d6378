//! The event loop: one `mio::Poll` owns every socket, each connection is a
//! slab entry whose index is its token, and every deadline is an entry of
//! one timer wheel. Nothing here blocks and nothing runs on another thread.
//!
//! One turn of the loop ([`Relay::turn`]):
//!
//! 1. `poll` for readiness, sleeping at most until the next deadline;
//! 2. handle each event: accept, read (until `WouldBlock` or a per-event
//!    budget), or write;
//! 3. read the connections whose reading was resumed (backpressure lifted,
//!    a challenger promoted, bytes left over after the request head);
//! 4. fire the timers that are due;
//! 5. flush every connection that got output this turn, once.
//!
//! The rest of the loop lives beside this file, one concern each:
//! `io` (reading and flushing), `upgrade` (the HTTP phase), `session`
//! (WebSocket frames of an open connection), `routing` (the registry and
//! the envelopes between binaries and phones) and `deadlines` (timers).

mod conn;
mod deadlines;
mod io;
mod routing;
mod session;
mod trim;
mod upgrade;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::buffer::BufferPool;
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::IpLimits;
use crate::metrics::Metrics;
use crate::registry::{ConnKey, Registry};
use crate::timer::TimerWheel;
use crate::transport::Transport;
use conn::{Conn, Deadlines, Origin, Phase};

const LISTENER: Token = Token(usize::MAX);
const METRICS_LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Size of the shared read buffer every read lands in first.
const SCRATCH_SIZE: usize = 64 * 1024;
/// How often per-IP rate-limit state of idle IPs is forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How often capacity left idle by past load is given back (`trim`): a
/// pooled buffer unused for this long is freed within twice this.
const TRIM_INTERVAL: Duration = Duration::from_secs(4);
/// How long accepting pauses after `accept` failed (EMFILE, ENFILE, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a timer-wheel entry refers to.
enum TimerKey {
    /// The earliest deadline of connection `key` (if it is still `id`).
    Conn { key: ConnKey, id: u64 },
    /// The end of a grace window (if the slot is still in that generation).
    Grace { server_id: Rc<str>, generation: u64 },
    /// The end of the shutdown drain.
    Drain,
    /// Time to forget idle IPs in the rate limiter.
    Sweep,
    /// Time to give back capacity that past load left idle.
    Trim,
    /// Time to accept again after `accept` failed (out of descriptors).
    AcceptBackoff,
}

/// One readiness event, copied out of `Events` so handling it may borrow
/// the relay mutably.
#[derive(Clone, Copy)]
struct Readiness {
    token: Token,
    readable: bool,
    writable: bool,
    /// The peer closed its side, or the socket has an error.
    closed: bool,
}

/// A snapshot of the loop's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sockets the loop holds, in any phase.
    pub connections: usize,
    /// Binaries connected and holding a server-id.
    pub binaries: usize,
    /// Phones connected to a server-id.
    pub phones: usize,
    /// Connections currently holding a read, write or reassembly buffer.
    pub connections_with_buffers: usize,
}

/// The relay's own accounting of the bytes it holds for connections
/// (docs/SECURITY.md gives the worst case as a formula of the limits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Output queued and not yet written, all connections together.
    pub queued_output: usize,
    /// The longest output queue of one connection.
    pub largest_queue: usize,
    /// Partial request heads and partial frames kept between reads.
    pub partial_input: usize,
    /// Fragmented messages being reassembled.
    pub reassembly: usize,
    /// What is actually allocated: the capacity of every connection's
    /// buffers, the idle buffer pool and the shared scratch buffer.
    pub allocated: usize,
}

/// The relay: listeners, connections, registry and timers of one loop.
pub struct Relay {
    config: Config,
    clock: Box<dyn Clock>,
    started: Instant,
    poll: Poll,
    events: Events,
    ready: Vec<Readiness>,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    conns: Slab<Conn>,
    next_conn_id: u64,
    registry: Registry,
    limits: IpLimits,
    timers: TimerWheel<TimerKey>,
    fired: Vec<TimerKey>,
    pool: BufferPool,
    scratch: Vec<u8>,
    /// Connections with output queued this turn.
    dirty: Vec<ConnKey>,
    /// Connections to read on the next pass without a readiness event.
    resume: Vec<ConnKey>,
    metrics: Metrics,
    binaries: usize,
    phones: usize,
    /// Connections counted against the connection caps (upgraded ones).
    live: usize,
    /// Set once shutdown has begun: when the drain ends.
    drain_until: Option<Instant>,
    /// Listener events are ignored until the `AcceptBackoff` timer fires.
    accept_paused: bool,
    /// Back-offs in a row (for logging the first and the recovery only).
    accept_pauses: u32,
}

impl Relay {
    /// Binds the WebSocket listener of `config` and builds an idle loop
    /// whose time comes from `clock`.
    pub fn new(config: Config, clock: Box<dyn Clock>) -> std::io::Result<Relay> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        deepen_backlog(&listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let now = clock.now();
        let mut timers = TimerWheel::new(now);
        timers.schedule(now + SWEEP_INTERVAL, TimerKey::Sweep);
        timers.schedule(now + TRIM_INTERVAL, TimerKey::Trim);
        Ok(Relay {
            limits: IpLimits::new(config.rate_limit_burst, config.rate_limit_interval),
            config,
            clock,
            started: now,
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            listener: Some(listener),
            local_addr,
            metrics_listener: None,
            signals: None,
            conns: Slab::new(),
            next_conn_id: 0,
            registry: Registry::default(),
            timers,
            fired: Vec::new(),
            pool: BufferPool::default(),
            scratch: vec![0; SCRATCH_SIZE],
            dirty: Vec::new(),
            resume: Vec::new(),
            metrics: Metrics::default(),
            binaries: 0,
            phones: 0,
            live: 0,
            drain_until: None,
            accept_paused: false,
            accept_pauses: 0,
        })
    }

    /// Serves `/metrics` on `addr` (which must be a loopback address).
    pub fn listen_metrics(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "the metrics listener must be a loopback address",
            ));
        }
        let mut listener = TcpListener::bind(addr)?;
        self.poll
            .registry()
            .register(&mut listener, METRICS_LISTENER, Interest::READABLE)?;
        let bound = listener.local_addr()?;
        self.metrics_listener = Some(listener);
        Ok(bound)
    }

    /// Turns SIGTERM and SIGINT into a graceful shutdown.
    pub fn handle_signals(&mut self) -> std::io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The address the WebSocket listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters of the loop right now.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            binaries: self.binaries,
            phones: self.phones,
            connections_with_buffers: self
                .conns
                .iter()
                .filter(|(_, c)| {
                    c.inbuf.is_some() || c.out.is_some() || c.assembler.buffer.is_some()
                })
                .count(),
        }
    }

    /// The bytes held for connections right now.
    pub fn memory(&self) -> Memory {
        let mut memory = Memory {
            allocated: self.pool.idle_bytes() + self.scratch.capacity(),
            ..Memory::default()
        };
        for (_, conn) in self.conns.iter() {
            let queued = conn.pending_output();
            memory.queued_output += queued;
            memory.largest_queue = memory.largest_queue.max(queued);
            memory.allocated += conn.out.as_ref().map_or(0, |out| out.capacity());
            if let Some(inbuf) = &conn.inbuf {
                memory.partial_input += inbuf.len();
                memory.allocated += inbuf.capacity();
            }
            if let Some(buffer) = &conn.assembler.buffer {
                memory.reassembly += buffer.len();
                memory.allocated += buffer.capacity();
            }
        }
        memory
    }

    /// The Prometheus exposition of the relay's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.binaries, self.phones)
    }

    /// Serves until shutdown has completed.
    pub fn run(&mut self) -> std::io::Result<()> {
        while !self.is_finished() {
            self.turn(None)?;
        }
        Ok(())
    }

    /// Whether shutdown has begun and every connection is gone.
    pub fn is_finished(&self) -> bool {
        self.drain_until.is_some() && self.conns.is_empty()
    }

    /// One turn of the loop. `timeout` overrides how long `poll` may wait;
    /// `None` waits until the next deadline (real clock) or not at all
    /// (manual clock). Returns whether anything happened.
    pub fn turn(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        let timeout = timeout.or_else(|| self.poll_timeout());
        if let Err(err) = self.poll.poll(&mut self.events, timeout) {
            if err.kind() == ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(err);
        }
        self.ready.clear();
        for event in self.events.iter() {
            let closed = event.is_read_closed() || event.is_error();
            self.ready.push(Readiness {
                token: event.token(),
                readable: event.is_readable() || closed,
                writable: event.is_writable(),
                closed,
            });
        }
        let mut busy = !self.ready.is_empty() || !self.resume.is_empty();
        let ready = std::mem::take(&mut self.ready);
        for &readiness in &ready {
            self.dispatch(readiness);
        }
        self.ready = ready;
        for key in std::mem::take(&mut self.resume) {
            self.pump(key);
        }
        busy |= self.fire_timers();
        self.flush_dirty();
        Ok(busy)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty() || !self.clock.is_real() {
            return Some(Duration::ZERO);
        }
        let next = self.timers.next_deadline()?;
        let wait = next.saturating_duration_since(self.clock.now());
        Some(wait + Duration::from_millis(1))
    }

    fn dispatch(&mut self, event: Readiness) {
        match event.token {
            LISTENER => self.accept(Origin::Public),
            METRICS_LISTENER => self.accept(Origin::Metrics),
            SIGNALS => self.on_signal(),
            Token(key) => {
                if event.writable {
                    self.flush(key);
                }
                if event.readable {
                    // Without a FIN or error in this event, a short read
                    // means the socket is drained: edge-triggered epoll
                    // reports the next bytes as a new event, so the
                    // `recv` that would only say EAGAIN is skipped.
                    self.pump_until(key, !event.closed);
                }
            }
        }
    }

    fn on_signal(&mut self) {
        let received = self
            .signals
            .as_mut()
            .is_some_and(|signals| signals.pending().next().is_some());
        if received {
            self.shutdown();
        }
    }

    fn accept(&mut self, origin: Origin) {
        if self.accept_paused {
            return;
        }
        loop {
            let listener = match origin {
                Origin::Public => self.listener.as_ref(),
                Origin::Metrics => self.metrics_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, remote)) => self.admit(stream, remote, origin),
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
    fn resume_accepting(&mut self) {
        self.accept_paused = false;
        self.accept(Origin::Public);
        self.accept(Origin::Metrics);
        if !self.accept_paused && self.accept_pauses > 0 {
            info!(
                "accept_resumed pauses={} connections={}",
                self.accept_pauses,
                self.conns.len()
            );
            self.accept_pauses = 0;
        }
    }

    fn admit(&mut self, stream: TcpStream, remote: SocketAddr, origin: Origin) {
        let _ = stream.set_nodelay(true);
        let mut transport = Transport::Plain(stream);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut transport, Token(key), Interest::READABLE)
        {
            warn!("register_failed remote={remote} error={err}");
            return;
        }
        self.next_conn_id += 1;
        let now = self.clock.now();
        entry.insert(Conn {
            id: self.next_conn_id,
            transport,
            origin,
            remote,
            client_ip: remote.ip(),
            phase: Phase::Head,
            inbuf: None,
            out: None,
            assembler: Default::default(),
            deadlines: Deadlines {
                handshake: Some(now + self.config.handshake_timeout),
                ..Deadlines::default()
            },
            armed: None,
            wants_write: false,
            dirty: false,
            counted: false,
        });
        self.arm(key);
    }

    /// Begins a graceful shutdown (SPEC §9): stop accepting, close every
    /// WebSocket 1001 "shutting down" after what is queued, and wait for
    /// the close handshakes until the drain deadline.
    pub fn shutdown(&mut self) {
        if self.drain_until.is_some() {
            return;
        }
        let now = self.clock.now();
        info!("shutdown_started connections={}", self.conns.len());
        for mut listener in [self.listener.take(), self.metrics_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let until = now + self.config.drain_timeout;
        self.drain_until = Some(until);
        self.timers.schedule(until, TimerKey::Drain);
        let keys: Vec<ConnKey> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns.get(key).map(|conn| &conn.phase) {
                Some(Phase::Head) => self.drop_conn(key, routing::Ending::Shutdown),
                Some(Phase::Open(_)) => self.close_ws(
                    key,
                    crate::ws::close::GOING_AWAY,
                    "shutting down",
                    routing::Ending::Shutdown,
                ),
                _ => {}
            }
        }
    }

    /// The connection at `key`, if it is still the one with `id`.
    fn live_conn(&mut self, key: ConnKey, id: u64) -> Option<&mut Conn> {
        self.conns.get_mut(key).filter(|conn| conn.id == id)
    }

    /// Removes a connection at once: deregisters it, ends its peer role
    /// and returns its buffers.
    fn drop_conn(&mut self, key: ConnKey, ending: routing::Ending) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.transport);
        if conn.counted {
            self.live -= 1;
            self.limits.connection_closed(conn.client_ip);
        }
        for buf in [conn.inbuf.take(), conn.assembler.buffer.take()]
            .into_iter()
            .flatten()
        {
            self.pool.put(buf);
        }
        if let Some(out) = conn.out.take() {
            self.pool.put(out.into_buffer());
        }
        if let Phase::Open(peer) = conn.phase {
            self.detach(key, peer, ending, conn.remote);
        }
    }
}

/// mio listens with a backlog of 128; a burst of reconnecting phones
/// (every phone of a restarted relay at once) overflows that. Listening
/// again on a listening socket only changes its backlog (the kernel caps
/// it at `net.core.somaxconn`).
fn deepen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a descriptor we own; failure leaves the old backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
}
