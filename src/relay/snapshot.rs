//! The live loop as a [`Snapshot`]: plain data, nothing changed.
//!
//! Taking a snapshot reads the relay; it neither closes nor moves
//! anything, so an upgrade that fails after it (the exec is refused) leaves
//! the relay serving exactly as before. Deadlines become the time left
//! after `now`; connections are numbered by their place in
//! [`Snapshot::conns`], and the registry names them by that number.
//! A connection whose transport cannot move (`handover.rs: moving_fd`) is
//! left out; by the time a snapshot is taken for an upgrade, every such
//! connection has been closed and detached, so nothing refers to it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::conns::Handle;
use super::handover::moving_fd;
use super::lifecycle::{Conn, Deadlines, Origin, Peer, Phase};
use super::Relay;
use crate::handover::snapshot::{
    BucketState, ConnState, Counters, DeadlinesState, HolderState, ListenerRole, ListenerState,
    PeerState, PhaseState, ReaderState, SlotState,
};
use crate::handover::Snapshot;
use crate::metrics::Metrics;
use crate::registry::{Slot, SlotState as Holder};

impl Relay {
    /// The loop's whole state now; `taken_at` is `CLOCK_MONOTONIC` in
    /// nanoseconds (it measures the pause across the exec).
    pub fn snapshot(&self, taken_at: u64) -> Snapshot {
        let now = self.clock.now();
        let handles: Vec<Handle> = self
            .conns
            .handles()
            .into_iter()
            .filter(|&h| self.conns.get(h).is_some_and(|c| moving_fd(c).is_some()))
            .collect();
        let index: HashMap<Handle, u32> = handles
            .iter()
            .enumerate()
            .map(|(i, &h)| (h, i as u32))
            .collect();
        let resumed: HashSet<Handle> = self.conns.resume_list().iter().copied().collect();
        let conns = handles
            .iter()
            .filter_map(|&h| {
                let conn = self.conns.get(h)?;
                conn_state(conn, now, resumed.contains(&h))
            })
            .collect();
        let slots = self
            .registry
            .slots()
            .map(|(server_id, slot)| slot_state(server_id, slot, &index, now))
            .collect();
        Snapshot {
            taken_at,
            taken_cpu: crate::handover::exec::process_cpu_ns(),
            uptime: now.saturating_duration_since(self.started),
            listeners: self.listener_states(),
            conns,
            slots,
            ip_buckets: self
                .limits
                .export(now)
                .into_iter()
                .map(|(ip, tokens)| BucketState { ip, tokens })
                .collect(),
            counters: counters(&self.metrics),
        }
    }

    /// The WebSocket and metrics listeners (an ACME HTTP-01 listener is
    /// bound anew by the new image).
    fn listener_states(&self) -> Vec<ListenerState> {
        [
            (ListenerRole::Public, Origin::WebSocket),
            (ListenerRole::Metrics, Origin::Metrics),
        ]
        .into_iter()
        .filter_map(|(role, origin)| {
            let fd = self.listeners.fd_of(origin)?;
            Some(ListenerState { role, fd })
        })
        .collect()
    }
}

fn conn_state(conn: &Conn, now: Instant, resume: bool) -> Option<ConnState> {
    let parts = conn.reader.to_parts();
    Some(ConnState {
        fd: moving_fd(conn)?,
        origin: match conn.origin {
            Origin::WebSocket => ListenerRole::Public,
            Origin::Metrics => ListenerRole::Metrics,
            Origin::AcmeHttp01 => return None, // not carried (`moving_fd`)
        },
        remote: conn.remote,
        client_ip: conn.client_ip,
        counted: conn.counted,
        phase: phase_state(conn.phase()),
        reader: ReaderState {
            done: parts.done,
            failed: parts.failed,
            pending: parts.pending,
            fragments: parts.fragments,
            fragments_text: parts.fragments_text,
        },
        out: conn
            .out
            .as_ref()
            .map_or_else(Vec::new, |out| out.unsent().to_vec()),
        deadlines: deadlines_state(&conn.deadlines, now),
        resume,
    })
}

fn phase_state(phase: &Phase) -> PhaseState {
    match phase {
        Phase::Head(head) => PhaseState::Head(head.clone().unwrap_or_default()),
        Phase::Open(peer) => PhaseState::Open(match peer {
            Peer::Binary(server_id) => PeerState::Binary {
                server_id: server_id.to_string(),
            },
            Peer::Challenger(server_id) => PeerState::Challenger {
                server_id: server_id.to_string(),
            },
            Peer::Phone { server_id, conn_id } => PeerState::Phone {
                server_id: server_id.to_string(),
                conn_id: conn_id.to_string(),
            },
        }),
        Phase::Closing => PhaseState::Closing,
        Phase::Draining { fin_sent } => PhaseState::Draining {
            fin_sent: *fin_sent,
        },
    }
}

fn deadlines_state(d: &Deadlines, now: Instant) -> DeadlinesState {
    d.map(|at| at.saturating_duration_since(now))
}

fn slot_state(
    server_id: &str,
    slot: &Slot<Handle>,
    index: &HashMap<Handle, u32>,
    now: Instant,
) -> SlotState {
    // A handle missing from `index` would be a connection that cannot
    // move yet is in the registry; u32::MAX makes validation refuse the
    // snapshot (and the old relay serve on) rather than hide it.
    let at = |handle: &Handle| index.get(handle).copied().unwrap_or(u32::MAX);
    let holder = match &slot.state {
        Holder::Held { binary } => HolderState::Held { binary: at(binary) },
        Holder::Probing { binary, challenger } => HolderState::Probing {
            binary: at(binary),
            challenger: at(challenger),
        },
        Holder::Grace => HolderState::Grace {
            remaining: slot.grace_until.map_or(std::time::Duration::ZERO, |until| {
                until.saturating_duration_since(now)
            }),
        },
    };
    SlotState {
        server_id: server_id.to_string(),
        holder,
        phones: slot.phones.iter().map(at).collect(),
        generation: slot.generation,
        backpressured: slot.backpressured,
    }
}

fn counters(metrics: &Metrics) -> Counters {
    Counters {
        values: metrics.export(),
    }
}

/// The counters back (`restore.rs`); `None` when they are not this
/// build's counters.
pub(super) fn metrics_from(counters: &Counters) -> Option<Metrics> {
    Metrics::import(&counters.values)
}
