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
//! | `conns.rs` | the connection table, handles, the flush and resume lists |
//! | `lifecycle.rs` | a connection's state, every phase change, every ending |
//! | `read.rs` | socket → scratch → request head or WebSocket reader → handlers |
//! | `upgrade.rs` | the HTTP phase: routes, SPEC §2 checks, the 101, phones joining |
//! | `slot.rs` | a server-id's slot: claim, conflict probe, takeover, grace, expiry |
//! | `routing.rs` | envelopes both ways, close notices, backpressure |
//! | `deadlines.rs` | the timer wheel's entries and what each deadline does |
//! | `write.rs` | flushing output once per turn, write interest, output stall |
//! | `wakes.rs` | push wakes: admitting a binary's `push_wake`, counting outcomes |
//! | `handover.rs` | SIGUSR2: check the new executable, re-execute in place |
//! | `snapshot.rs`, `restore.rs` | the loop's state to a `handover::Snapshot` and back |
//! | `trim.rs` | giving back capacity that past load left idle |
//! | `control.rs` | relay time under a manual clock: `advance`, the `/clock` endpoints |
//! | `inspect.rs` | for tests: the census, the consistency audit, a connection by address |
//!
//! `docs/LIFECYCLE.md` walks one connection through them.

mod conns;
mod control;
mod deadlines;
mod event_loop;
mod handover;
mod inspect;
mod lifecycle;
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
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll};

use crate::clock::Clock;
use crate::config::{Config, READ_CHUNK};
use crate::limits::IpLimits;
use crate::metrics::Metrics;
use crate::push::Push;
use crate::registry::Registry;
use crate::timer::TimerWheel;
use conns::{Conns, Handle};
pub use control::{AdvanceError, MAX_ADVANCE};
use deadlines::{TimerKey, SWEEP_INTERVAL, TRIM_INTERVAL};
use event_loop::{Readiness, LISTENER, METRICS_LISTENER, SIGNALS};
pub use inspect::Census;

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
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
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
    /// Binds the WebSocket listener of `config` and builds an idle loop
    /// whose time comes from `clock`.
    pub fn new(config: Config, clock: Box<dyn Clock>) -> std::io::Result<Relay> {
        let poll = Poll::new()?;
        let listener = TcpListener::bind(config.listen)?;
        deepen_backlog(&listener);
        Relay::with_listener(config, clock, poll, listener)
    }

    /// An idle loop around a bound listener (new, or handed over).
    fn with_listener(
        config: Config,
        clock: Box<dyn Clock>,
        poll: Poll,
        mut listener: TcpListener,
    ) -> std::io::Result<Relay> {
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
            conns: Conns::default(),
            registry: Registry::default(),
            timers,
            fired: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            read_at: now,
            metrics: Metrics::default(),
            counts: Counts::default(),
            push: None,
            drain_until: None,
            accept_paused: false,
            accept_pauses: 0,
            upgrade: handover::Upgrades::default(),
            parked_advances: VecDeque::new(),
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

    /// Turns SIGTERM and SIGINT into a graceful shutdown, and SIGUSR2
    /// into an upgrade (once [`Relay::enable_upgrades`] said how).
    pub fn handle_signals(&mut self) -> std::io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new(crate::handover::exec::SIGNALS)?;
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

/// mio listens with a backlog of 128; a burst of reconnecting phones
/// (every phone of a restarted relay at once) overflows that. Listening
/// again on a listening socket only changes its backlog (the kernel caps
/// it at `net.core.somaxconn`).
fn deepen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a descriptor we own; failure leaves the old backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
}
