//! The relay: one `mio::Poll` owns every socket, each connection is an
//! entry of one table ([`conns`]) addressed by a handle, and every
//! deadline is an entry of one timer wheel. Nothing here blocks and
//! nothing runs on another thread.
//!
//! One concern per file, in the order a connection meets them:
//!
//! | file | owns |
//! |---|---|
//! | `event_loop.rs` | the turn: poll, dispatch, accept, signals, shutdown |
//! | `listeners.rs` | the listener table: roles, transport recipes, tokens |
//! | `conns.rs` | the connection table, handles, the flush and resume lists |
//! | `lifecycle.rs` | a connection's state, every phase change, every ending |
//! | `read.rs` | socket → scratch → request head or WebSocket reader → handlers |
//! | `upgrade.rs` | the HTTP phase: routes, SPEC §2 checks, the 101, phones joining |
//! | `slot.rs` | a server-id's slot: claim, conflict probe, takeover, grace, expiry |
//! | `routing.rs` | envelopes both ways, close notices, backpressure |
//! | `deadlines.rs` | the timer wheel's entries and what each deadline does |
//! | `write.rs` | flushing output once per turn, write interest, output stall |
//! | `wakes.rs` | push wakes: admitting a binary's `push_wake`, counting outcomes |
//! | `certs.rs` | TLS certificates: SIGHUP reloads, ACME renewals, HTTP-01 answers |
//! | `handover.rs` | SIGUSR2: check the new executable, re-execute in place |
//! | `snapshot.rs`, `restore.rs` | the loop's state to a `handover::Snapshot` and back |
//! | `trim.rs` | giving back capacity that past load left idle |
//! | `control.rs` | relay time under a manual clock: `advance`, the `/clock` endpoints |
//! | `inspect.rs` | for tests: the census, the consistency audit, a connection by address |
//!
//! `docs/LIFECYCLE.md` walks one connection through them.

mod certs;
mod conns;
mod control;
mod deadlines;
mod event_loop;
mod handover;
mod inspect;
mod lifecycle;
mod listeners;
mod read;
mod restore;
mod routing;
mod slot;
mod snapshot;
mod trim;
mod upgrade;
mod wakes;
mod write;

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Waker};

use crate::clock::Clock;
use crate::config::{Config, READ_CHUNK};
use crate::limits::IpLimits;
use crate::metrics::Metrics;
use crate::push::Push;
use crate::registry::Registry;
use crate::timer::TimerWheel;
use certs::Certificates;
use conns::{Conns, Handle};
pub use control::{AdvanceError, MAX_ADVANCE};
use deadlines::{TimerKey, SWEEP_INTERVAL, TRIM_INTERVAL};
use event_loop::{Readiness, SIGNALS, WAKER};
pub use inspect::Census;
pub(crate) use inspect::ConnView;
use listeners::Listeners;
pub use listeners::{Listen, Origin, MAX_LISTENERS};

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

/// The gauges and the count the connection caps apply to.
#[derive(Default)]
struct Counts {
    /// Binaries holding a server-id.
    binaries: usize,
    /// Phones joined to a server-id.
    phones: usize,
    /// Upgraded connections, counted against the connection caps.
    live: usize,
}

/// The relay: listeners, connections, registry and timers of one loop.
pub struct Relay {
    config: Config,
    clock: Box<dyn Clock>,
    started: Instant,
    poll: Poll,
    events: Events,
    ready: Vec<Readiness>,
    listeners: Listeners,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// The loop's one waker (mio allows one per poll): helper threads
    /// (push workers, ACME) wake the loop through it.
    waker: Arc<Waker>,
    conns: Conns,
    registry: Registry<Handle>,
    limits: IpLimits,
    timers: TimerWheel<TimerKey>,
    fired: Vec<TimerKey>,
    /// Every socket read lands here first.
    scratch: Vec<u8>,
    /// When the read being decoded completed (frame latency starts here).
    read_at: Instant,
    metrics: Metrics,
    counts: Counts,
    /// Push wakes, when configured (`enable_push`).
    push: Option<Push>,
    /// The TLS listeners' certificates, when there are any
    /// (`serve_certificates`).
    certs: Option<Certificates>,
    /// Set once shutdown has begun: when the drain ends.
    drain_until: Option<Instant>,
    /// Listener events are ignored until the `AcceptBackoff` timer fires.
    accept_paused: bool,
    /// Back-offs in a row (for logging the first and the recovery only).
    accept_pauses: u32,
    /// SIGUSR2: what to execute, and how far an upgrade has come.
    upgrade: handover::Upgrades,
    /// `POST /clock/advance` requests waiting for the end of the turn.
    parked_advances: VecDeque<(Handle, Duration)>,
}

impl Relay {
    /// Binds a plain WebSocket listener on `config.listen` and builds an
    /// idle loop whose time comes from `clock`.
    pub fn new(config: Config, clock: Box<dyn Clock>) -> std::io::Result<Relay> {
        let listen = Listen::plain(config.listen);
        let mut relay = Relay::unbound(config, clock)?;
        relay.listen(listen)?;
        Ok(relay)
    }

    /// An idle loop with no listener yet (add them with [`Relay::listen`]).
    pub fn unbound(config: Config, clock: Box<dyn Clock>) -> std::io::Result<Relay> {
        Relay::with_poll(config, clock, Poll::new()?)
    }

    /// An idle loop on `poll`, with no listener yet (new, or being
    /// restored from a snapshot).
    fn with_poll(config: Config, clock: Box<dyn Clock>, poll: Poll) -> std::io::Result<Relay> {
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
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
            listeners: Listeners::default(),
            signals: None,
            waker,
            conns: Conns::default(),
            registry: Registry::default(),
            timers,
            fired: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            read_at: now,
            metrics: Metrics::default(),
            counts: Counts::default(),
            push: None,
            certs: None,
            drain_until: None,
            accept_paused: false,
            accept_pauses: 0,
            upgrade: handover::Upgrades::default(),
            parked_advances: VecDeque::new(),
        })
    }

    /// Opens a listener; returns the address it is bound to. At most
    /// [`MAX_LISTENERS`].
    pub fn listen(&mut self, listen: Listen) -> std::io::Result<SocketAddr> {
        self.listeners.open(self.poll.registry(), listen)
    }

    /// Serves `/metrics` on `addr` (which must be a loopback address).
    pub fn listen_metrics(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "the metrics listener must be a loopback address",
            ));
        }
        self.listen(Listen {
            origin: Origin::Metrics,
            ..Listen::plain(addr)
        })
    }

    /// The loop's waker, for a helper thread that must wake it (the ACME
    /// thread): its events are drained whenever it fires.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Turns SIGTERM and SIGINT into a graceful shutdown, SIGUSR2 into an
    /// upgrade (once [`Relay::enable_upgrades`] said how), and SIGHUP into
    /// a reload of the certificate files (nothing to reload: ignored).
    pub fn handle_signals(&mut self) -> std::io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new(crate::handover::exec::SIGNALS)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The address the first WebSocket listener is bound to
    /// (`0.0.0.0:0` if there is none).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners
            .addr_of(Origin::WebSocket)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Counters of the loop right now.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            binaries: self.counts.binaries,
            phones: self.counts.phones,
            connections_with_buffers: self.conns.iter().filter(|c| c.holds_buffers()).count(),
        }
    }

    /// The bytes held for connections right now.
    pub fn memory(&self) -> Memory {
        let mut memory = Memory {
            allocated: self.conns.pool.idle_bytes() + self.scratch.capacity(),
            ..Memory::default()
        };
        for conn in self.conns.iter() {
            let queued = conn.pending_output();
            memory.queued_output += queued;
            memory.largest_queue = memory.largest_queue.max(queued);
            memory.allocated += conn.out.as_ref().map_or(0, |out| out.capacity());
            memory.partial_input += conn.transport.partial_input();
            memory.allocated += conn.transport.bytes_held();
            if let Some(head) = conn.head() {
                memory.partial_input += head.len();
                memory.allocated += head.capacity();
            }
            memory.partial_input += conn.reader.pending_len();
            memory.reassembly += conn.reader.fragments_len();
            memory.allocated += conn.reader.allocated();
        }
        memory
    }

    /// The Prometheus exposition of the relay's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .render(self.counts.binaries, self.counts.phones)
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
}
