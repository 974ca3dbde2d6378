//! A [`Snapshot`] back into a serving loop, in the new image of an
//! upgrade (or, in tests, in the same process).
//!
//! Everything that can be wrong is found before a descriptor is touched:
//! the snapshot's own consistency (`Snapshot::validate`) and every
//! descriptor it names (`handover/sockets.rs`). After that, each piece
//! becomes live in order — the listeners first (the kernel has been
//! queueing their connections all along), then every connection in its
//! phase with its buffers and its deadlines re-based on this clock, then
//! the registry with its grace windows, the per-IP buckets, the counters
//! and the uptime. The wheel's entries are derived: each connection's
//! earliest deadline and each grace window's end. A connection that
//! cannot be registered with the new poll (out of kernel memory) is
//! dropped the ordinary way once the loop is whole, so its peers see a
//! departure like any other.

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll};

use super::conns::Handle;
use super::deadlines::TimerKey;
use super::lifecycle::{Conn, Deadlines, Origin, Peer, Phase, Restored};
use super::snapshot::metrics_from;
use super::Relay;
use crate::buffer::OutQueue;
use crate::clock::Clock;
use crate::config::Config;
use crate::handover::exec::{monotonic_ns, process_cpu_ns, ARRIVED};
use crate::handover::snapshot::{
    ConnState, DeadlinesState, HolderState, ListenerRole, PeerState, PhaseState, SlotState,
};
use crate::handover::{sockets, Snapshot, SnapshotError};
use crate::registry::{Slot, SlotState as Holder};
use crate::transport::{Recipe, Transport};
use crate::ws::{ReaderParts, Role};

/// Server-ids, one copy shared by their connections and their slot.
#[derive(Default)]
struct Names(HashMap<String, Rc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Rc<str> {
        self.0
            .entry(name.to_string())
            .or_insert_with(|| Rc::from(name))
            .clone()
    }
}

impl Relay {
    /// Builds the loop `snapshot` describes, taking over the descriptors
    /// it names. Refuses (touching none of them) a snapshot that is not
    /// consistent or names a descriptor that is not the socket it says.
    /// The WebSocket listener serves plain TCP ([`Relay::restore_with`]
    /// gives it its PROXY and TLS layers).
    pub fn restore(
        config: Config,
        clock: Box<dyn Clock>,
        snapshot: Snapshot,
    ) -> Result<Relay, SnapshotError> {
        Relay::restore_with(config, clock, snapshot, Recipe::plain())
    }

    /// [`Relay::restore`], the inherited WebSocket listener's connections
    /// getting the layers of `recipe` (the new image's own: its TLS
    /// config, its `--https-proxy-protocol`). Connections that come over
    /// are plain (TLS ones cannot move).
    pub fn restore_with(
        config: Config,
        clock: Box<dyn Clock>,
        snapshot: Snapshot,
        recipe: Recipe,
    ) -> Result<Relay, SnapshotError> {
        let began = monotonic_ns();
        snapshot.validate()?;
        sockets::check_all(&snapshot)?;
        let checked = monotonic_ns();
        let system = |err: std::io::Error| SnapshotError::Invalid(format!("poll: {err}"));
        let poll = Poll::new().map_err(system)?;
        // From here on the descriptors belong to the relay being built.
        let fd_of = |role| snapshot.listeners.iter().find(|l| l.role == role);
        let public = fd_of(ListenerRole::Public).expect("validated: a public listener");
        // SAFETY: a listening TCP socket (checked), inherited, used by
        // nothing else in this process.
        let listener = unsafe { TcpListener::from_raw_fd(public.fd) };
        let mut relay = Relay::with_poll(config, clock, poll).map_err(system)?;
        let registry = relay.poll.registry();
        relay
            .listeners
            .adopt(registry, listener, Origin::WebSocket, recipe)
            .map_err(system)?;
        if let Some(metrics) = fd_of(ListenerRole::Metrics) {
            // SAFETY: as above.
            let listener = unsafe { TcpListener::from_raw_fd(metrics.fd) };
            let registry = relay.poll.registry();
            let adopted =
                relay
                    .listeners
                    .adopt(registry, listener, Origin::Metrics, Recipe::plain());
            if let Err(err) = adopted {
                warn!("handover_listener_lost role=metrics error={err}");
            }
        }
        let now = relay.clock.now();
        relay.started = now.checked_sub(snapshot.uptime).unwrap_or(now);
        // Validated with the rest of the snapshot before any socket.
        relay.metrics = metrics_from(&snapshot.counters).unwrap_or_default();
        let mut names = Names::default();
        let (handles, lost) = relay.restore_conns(&snapshot.conns, &mut names, now);
        for slot in &snapshot.slots {
            relay.restore_slot(slot, &handles, &mut names, now);
        }
        for bucket in &snapshot.ip_buckets {
            relay.limits.import(bucket.ip, bucket.tokens, now);
        }
        for handle in lost {
            relay.vanish(handle);
        }
        relay.log_restored(&snapshot, [began, checked]);
        Ok(relay)
    }

    /// Every connection, in order; returns their handles by index, and
    /// those that could not be registered.
    fn restore_conns(
        &mut self,
        conns: &[ConnState],
        names: &mut Names,
        now: Instant,
    ) -> (Vec<Handle>, Vec<Handle>) {
        let mut handles = Vec::with_capacity(conns.len());
        let mut lost = Vec::new();
        for state in conns {
            let restored = restored_conn(state, names, now);
            let handle = self
                .conns
                .insert(|handle| Conn::restored(handle.id(), restored))
                .expect("the table has room for what one table held");
            handles.push(handle);
            self.count_restored(handle);
            if !self.register_restored(handle) {
                lost.push(handle);
                continue;
            }
            self.arm(handle);
            if !state.out.is_empty() {
                self.conns.mark_dirty(handle);
            }
            if state.resume || state.reader.pending.is_some() {
                self.conns.resume(handle);
            }
        }
        (handles, lost)
    }

    /// The gauges, the connection caps and the per-IP count.
    fn count_restored(&mut self, handle: Handle) {
        let now = self.clock.now();
        let Some(conn) = self.conns.get(handle) else {
            return;
        };
        match conn.peer() {
            Some(Peer::Binary(_)) => self.counts.binaries += 1,
            Some(Peer::Phone { .. }) => self.counts.phones += 1,
            _ => {}
        }
        if conn.counted {
            let ip = conn.client_ip;
            self.counts.live += 1;
            self.limits.connection_opened(ip, now);
        }
    }

    fn register_restored(&mut self, handle: Handle) -> bool {
        let Some(conn) = self.conns.get_mut(handle) else {
            return false;
        };
        let pending = conn.pending_output() > 0;
        let interest = if pending {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .register(&mut conn.transport, handle.token(), interest)
        {
            Ok(()) => {
                conn.wants_write = pending;
                true
            }
            Err(err) => {
                warn!("handover_conn_lost remote={} error={err}", conn.remote);
                false
            }
        }
    }

    fn restore_slot(
        &mut self,
        state: &SlotState,
        handles: &[Handle],
        names: &mut Names,
        now: Instant,
    ) {
        let at = |index: u32| handles[index as usize];
        let server_id = names.get(&state.server_id);
        let (holder, grace_until) = match state.holder {
            HolderState::Held { binary } => (Holder::Held { binary: at(binary) }, None),
            HolderState::Probing { binary, challenger } => (
                Holder::Probing {
                    binary: at(binary),
                    challenger: at(challenger),
                },
                None,
            ),
            HolderState::Grace { remaining } => (Holder::Grace, Some(now + remaining)),
        };
        let phones: Vec<Handle> = state.phones.iter().map(|&i| at(i)).collect();
        let conn_ids = phones
            .iter()
            .filter_map(|&phone| match self.conns.get(phone)?.peer()? {
                Peer::Phone { conn_id, .. } => Some((conn_id.clone(), phone)),
                _ => None,
            })
            .collect();
        if let Some(until) = grace_until {
            let key = TimerKey::Grace {
                server_id: server_id.clone(),
                generation: state.generation,
            };
            self.timers.schedule(until, key);
        }
        let slot = Slot {
            state: holder,
            phones,
            generation: state.generation,
            backpressured: state.backpressured,
            grace_until,
        };
        self.registry.restore_slot(server_id, slot, conn_ids);
    }

    /// The pause (from the old image's snapshot to now) and where it
    /// went: the exec, reading and decoding the state, checking it, and
    /// building the loop.
    fn log_restored(&self, snapshot: &Snapshot, [began, checked]: [u64; 2]) {
        let now = monotonic_ns();
        let arrived = match ARRIVED.load(Ordering::Relaxed) {
            0 => began,
            at => at,
        };
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
        info!(
            "handover_restored connections={} listeners={} slots={} binaries={} phones={} pause_ms={:.3} pause_cpu_ms={:.3} exec_ms={:.3} decode_ms={:.3} check_ms={:.3} build_ms={:.3}",
            self.conns.len(),
            self.listeners.count(),
            snapshot.slots.len(),
            self.counts.binaries,
            self.counts.phones,
            ms(snapshot.taken_at, now),
            ms(snapshot.taken_cpu, process_cpu_ns()),
            ms(snapshot.taken_at, arrived),
            ms(arrived, began),
            ms(began, checked),
            ms(checked, now),
        );
    }
}

/// One connection's parts, re-based on `now`.
fn restored_conn(state: &ConnState, names: &mut Names, now: Instant) -> Restored {
    // SAFETY: a connected TCP socket (checked), inherited, named once in
    // the snapshot (validated), used by nothing else in this process.
    let stream = unsafe { TcpStream::from_raw_fd(state.fd) };
    let reader = ReaderParts {
        done: state.reader.done,
        failed: state.reader.failed,
        pending: state.reader.pending.clone(),
        fragments: state.reader.fragments.clone(),
        fragments_text: state.reader.fragments_text,
    };
    Restored {
        transport: Transport::plain(stream),
        origin: match state.origin {
            ListenerRole::Public => Origin::WebSocket,
            ListenerRole::Metrics => Origin::Metrics,
        },
        remote: state.remote,
        client_ip: state.client_ip,
        phase: phase(&state.phase, names),
        reader: crate::ws::Reader::from_parts(Role::Server, reader),
        out: (!state.out.is_empty()).then(|| OutQueue::new(state.out.clone())),
        deadlines: deadlines(&state.deadlines, now),
        counted: state.counted,
    }
}

fn phase(state: &PhaseState, names: &mut Names) -> Phase {
    match state {
        PhaseState::Head(head) => Phase::Head((!head.is_empty()).then(|| head.clone())),
        PhaseState::Open(peer) => Phase::Open(match peer {
            PeerState::Binary { server_id } => Peer::Binary(names.get(server_id)),
            PeerState::Challenger { server_id } => Peer::Challenger(names.get(server_id)),
            PeerState::Phone { server_id, conn_id } => Peer::Phone {
                server_id: names.get(server_id),
                // Unique: shared with the registry from the connection.
                conn_id: Rc::from(conn_id.as_str()),
            },
        }),
        PhaseState::Closing => Phase::Closing,
        PhaseState::Draining { fin_sent } => Phase::Draining {
            fin_sent: *fin_sent,
        },
    }
}

/// Time left becomes an instant of this clock (validated: no remaining
/// time is long enough to overflow).
fn deadlines(state: &DeadlinesState, now: Instant) -> Deadlines {
    state.map(|left| now + left)
}
