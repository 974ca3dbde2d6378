//! Looking at the relay from outside the loop, for tests: the census of
//! what it holds ([`Census`]), the consistency audit the test fixture and
//! the whole-relay simulation run after every step, and one connection
//! found by its peer's address (what `crate::fixture` needs for its
//! delivery barriers). Nothing here changes the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use super::conns::Handle;
use super::lifecycle::{Conn, Peer, Phase};
use super::Relay;
use crate::registry::{Slot, SlotState};
use crate::transport::Transport;

/// Timers that always stand: the rate limiter's sweep and the memory trim.
const PERIODIC_TIMERS: usize = 2;

/// Everything the relay holds, counted. Once every client has left and
/// every deadline has passed, all of it is zero (what the simulation in
/// `tests/sim.rs` checks at the end of each run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Sockets in the connection table, in any phase.
    pub connections: usize,
    /// Connections counted against the connection caps (upgraded, not gone).
    pub live: usize,
    /// Binaries holding a server-id (the gauge).
    pub binaries: usize,
    /// Phones joined to a server-id (the gauge).
    pub phones: usize,
    /// Server-ids with a registry slot: held, being probed, or in grace.
    pub server_ids: usize,
    /// conn_ids the registry routes to.
    pub conn_ids: usize,
    /// Timer-wheel entries, not counting the periodic ones that always
    /// stand (the rate limiter's sweep and the memory trim). Stale entries
    /// count until they fire.
    pub timers: usize,
    /// Client IPs the per-IP limits remember.
    pub tracked_ips: usize,
    /// Connections holding a head, reader or output buffer.
    pub connections_with_buffers: usize,
    /// Output queued and not yet written, all connections together.
    pub queued_output: usize,
}

/// One connection as the test fixture sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnView {
    /// The relay's socket of this connection.
    pub fd: RawFd,
    /// The phase, as a short name for failure messages.
    pub phase: &'static str,
    /// Whether the relay reads this connection when bytes arrive (false
    /// for a phone under backpressure, a waiting challenger, a connection
    /// whose own output is over the read limit).
    pub reading: bool,
    /// Output queued for it and not yet written.
    pub queued: usize,
}

impl Relay {
    /// What the relay holds right now.
    pub fn census(&self) -> Census {
        Census {
            connections: self.conns.len(),
            live: self.counts.live,
            binaries: self.counts.binaries,
            phones: self.counts.phones,
            server_ids: self.registry.slots().count(),
            conn_ids: self.registry.conn_ids().count(),
            timers: self.timers.len().saturating_sub(PERIODIC_TIMERS),
            tracked_ips: self.limits.tracked(),
            connections_with_buffers: self.conns.iter().filter(|c| c.holds_buffers()).count(),
            queued_output: self.conns.iter().map(Conn::pending_output).sum(),
        }
    }

    /// The connection whose peer is at `remote` (a test client's local
    /// address), if the relay still holds it.
    pub(crate) fn conn_by_remote(&self, remote: SocketAddr) -> Option<ConnView> {
        self.conn_view(self.conns.find(|conn| conn.remote == remote)?)
    }

    /// The connection on the relay's socket `fd`, whatever address a PROXY
    /// header gave it, if the relay still holds it.
    pub(crate) fn conn_by_fd(&self, fd: RawFd) -> Option<ConnView> {
        self.conn_view(self.conns.find(|conn| raw_fd(&conn.transport) == fd)?)
    }

    fn conn_view(&self, handle: Handle) -> Option<ConnView> {
        let conn = self.conns.get(handle)?;
        let reading = match conn.phase() {
            Phase::Open(_) | Phase::Closing => self.may_read(handle),
            Phase::Head(_) | Phase::Draining { .. } => true,
        };
        Some(ConnView {
            fd: raw_fd(&conn.transport),
            phase: phase_name(conn.phase()),
            reading,
            queued: conn.pending_output(),
        })
    }

    /// Checks that the connection table, the registry, the gauges and the
    /// limits agree with each other and that the caps hold. Returns every
    /// disagreement found.
    pub(crate) fn audit(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        self.audit_connections(&mut problems);
        self.audit_registry(&mut problems);
        self.audit_counts(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Every open peer is where the registry says it is.
    fn audit_connections(&self, problems: &mut Vec<String>) {
        for handle in self.conns.handles() {
            let Some(Phase::Open(peer)) = self.conns.get(handle).map(Conn::phase) else {
                continue;
            };
            let found = match peer {
                Peer::Binary(server_id) => self.registry.binary(server_id) == Some(handle),
                Peer::Challenger(server_id) => matches!(
                    self.registry.slot(server_id).map(|slot| slot.state),
                    Some(SlotState::Probing { challenger, .. }) if challenger == handle
                ),
                Peer::Phone { server_id, conn_id } => {
                    self.registry.phones(server_id).contains(&handle)
                        && self.registry.phone(conn_id) == Some(handle)
                }
            };
            if !found {
                problems.push(format!("open {peer:?} is not in the registry as such"));
            }
        }
    }

    /// Every registry entry names an open peer of its server-id, and
    /// every conn_id an open phone.
    fn audit_registry(&self, problems: &mut Vec<String>) {
        for (server_id, slot) in self.registry.slots() {
            self.audit_slot(server_id, slot, problems);
        }
        for (conn_id, phone) in self.registry.conn_ids() {
            let routes = |p: &Peer| matches!(p, Peer::Phone { conn_id: id, .. } if id == conn_id);
            if !self.is_peer(phone, routes) {
                problems.push(format!("conn_id {conn_id} routes to no open phone"));
            }
        }
    }

    /// One slot: its holder, challenger and phones are open as such, the
    /// phone cap holds, and phones are held back only while the binary
    /// has more than low water queued.
    fn audit_slot(&self, server_id: &str, slot: &Slot<Handle>, problems: &mut Vec<String>) {
        let (binary, challenger) = match slot.state {
            SlotState::Held { binary } => (Some(binary), None),
            SlotState::Probing { binary, challenger } => (Some(binary), Some(challenger)),
            SlotState::Grace => (None, None),
        };
        let holds = |p: &Peer| matches!(p, Peer::Binary(id) if &**id == server_id);
        if binary.is_some_and(|binary| !self.is_peer(binary, holds)) {
            problems.push(format!("{server_id}: its holder is not an open binary"));
        }
        let waits = |p: &Peer| matches!(p, Peer::Challenger(id) if &**id == server_id);
        if challenger.is_some_and(|challenger| !self.is_peer(challenger, waits)) {
            problems.push(format!("{server_id}: its challenger is not waiting"));
        }
        let queued = binary
            .and_then(|binary| self.conns.get(binary))
            .map_or(0, Conn::pending_output);
        if slot.backpressured && queued <= self.config.binary_low_water {
            problems.push(format!(
                "{server_id}: phones held back, but its binary has {queued} bytes queued"
            ));
        }
        let cap = self.config.max_phones_per_server;
        if slot.phones.len() > cap {
            problems.push(format!(
                "{server_id}: {} phones, cap {cap}",
                slot.phones.len()
            ));
        }
        let serves =
            |p: &Peer| matches!(p, Peer::Phone { server_id: id, .. } if &**id == server_id);
        if slot
            .phones
            .iter()
            .any(|&phone| !self.is_peer(phone, serves))
        {
            problems.push(format!("{server_id}: a listed phone is not its open phone"));
        }
    }

    /// The gauges and the caps' counts match the table; the caps hold.
    fn audit_counts(&self, problems: &mut Vec<String>) {
        let (mut binaries, mut phones, mut live) = (0, 0, 0);
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        for conn in self.conns.iter() {
            match conn.peer() {
                Some(Peer::Binary(_)) => binaries += 1,
                Some(Peer::Phone { .. }) => phones += 1,
                _ => {}
            }
            if conn.counted {
                live += 1;
                *per_ip.entry(conn.client_ip).or_default() += 1;
            }
        }
        let counts = &self.counts;
        if (counts.binaries, counts.phones, counts.live) != (binaries, phones, live) {
            problems.push(format!(
                "gauges binaries={} phones={} live={}, table {binaries} {phones} {live}",
                counts.binaries, counts.phones, counts.live
            ));
        }
        if live > self.config.max_connections {
            problems.push(format!(
                "{live} live connections, cap {}",
                self.config.max_connections
            ));
        }
        for (ip, count) in per_ip {
            if self.limits.live(ip) != count {
                problems.push(format!(
                    "{ip}: limits count {}, table {count}",
                    self.limits.live(ip)
                ));
            }
            if count > self.config.max_connections_per_ip {
                problems.push(format!(
                    "{ip}: {count} live connections, cap {}",
                    self.config.max_connections_per_ip
                ));
            }
        }
    }

    fn is_peer(&self, handle: Handle, matches: impl Fn(&Peer) -> bool) -> bool {
        self.conns
            .get(handle)
            .and_then(Conn::peer)
            .is_some_and(matches)
    }
}

fn raw_fd(transport: &Transport) -> RawFd {
    transport.as_raw_fd()
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Head(_) => "head",
        Phase::Open(Peer::Binary(_)) => "open binary",
        Phase::Open(Peer::Challenger(_)) => "open challenger",
        Phase::Open(Peer::Phone { .. }) => "open phone",
        Phase::Closing => "closing",
        Phase::Draining { fin_sent: false } => "draining",
        Phase::Draining { fin_sent: true } => "draining, FIN sent",
    }
}
