//! The hand-over state: a versioned tree of plain data, separate from the
//! live types so that those stay free to change.
//!
//! ```text
//! "PYRYHOV1" │ format version (u32 LE) │ postcard(Snapshot)
//! ```
//!
//! Everything the loop knows moves: the listeners by role, every
//! connection (its phase, its reader's partial input and reassembly, its
//! unsent output, its deadlines), the registry (slots, grace windows,
//! backpressure), the per-IP buckets, the counters and the uptime.
//! Sockets travel as descriptor numbers: the descriptors themselves stay
//! open across `execve`. Connections and slots refer to each other by a
//! connection's index in [`Snapshot::conns`]. Time is kept as durations
//! remaining after the snapshot's instant ([`Snapshot::taken_at`]) and
//! re-based on the new process's clock when restored.
//!
//! **Versioning.** [`FORMAT_VERSION`] is written first and read first: a
//! binary refuses a version it does not list in [`READABLE_VERSIONS`]
//! before it decodes anything else. Any change to a type below (a field,
//! a variant, an order) is a new version; a binary may keep reading an
//! older one by converting it. The old relay asks the new executable which
//! versions it reads (check mode, `exec.rs`) before it hands anything
//! over, so a version mismatch never costs a connection.
//!
//! [`Snapshot::validate`] checks every cross-reference before a restore
//! touches a socket: a snapshot that passes can be restored without a
//! failure that would leave some connections half-restored.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first bytes of every encoded snapshot.
pub const MAGIC: &[u8; 8] = b"PYRYHOV1";
/// The version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// The versions this build reads.
pub const READABLE_VERSIONS: &[u32] = &[1];
/// No deadline of a valid snapshot is further away than this (the longest
/// flag value anyone would give is minutes); it keeps re-basing from ever
/// overflowing an `Instant`.
pub const MAX_REMAINING: Duration = Duration::from_secs(365 * 24 * 3600);

/// The whole state of one relay loop.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `CLOCK_MONOTONIC` when the loop stopped serving, in nanoseconds
    /// (the same clock in the new image: it measures the pause).
    pub taken_at: u64,
    /// The process's CPU time then (`CLOCK_PROCESS_CPUTIME_ID`, which
    /// `execve` does not reset), in nanoseconds: the new image reports the
    /// CPU work of the pause beside its wall-clock length.
    pub taken_cpu: u64,
    /// How long the relay had been up (`/healthz` goes on counting).
    pub uptime: Duration,
    pub listeners: Vec<ListenerState>,
    pub conns: Vec<ConnState>,
    pub slots: Vec<SlotState>,
    pub ip_buckets: Vec<BucketState>,
    pub counters: Counters,
}

/// What a listener is for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerRole {
    /// The public WebSocket listener (`--insecure-listen`).
    Public,
    /// The loopback `/metrics` listener.
    Metrics,
}

/// A listening socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ListenerState {
    pub role: ListenerRole,
    pub fd: i32,
}

/// One connection, in whatever phase it is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConnState {
    pub fd: i32,
    /// The listener it came from.
    pub origin: ListenerRole,
    pub remote: SocketAddr,
    /// The address limits apply to (the peer, `X-Forwarded-For`, or the
    /// PROXY header's source).
    pub client_ip: IpAddr,
    /// Whether it counts against the connection caps.
    pub counted: bool,
    pub phase: PhaseState,
    pub reader: ReaderState,
    /// Output queued and not yet written.
    #[serde(with = "serde_bytes")]
    pub out: Vec<u8>,
    pub deadlines: DeadlinesState,
    /// It was to be read again without a readiness event.
    pub resume: bool,
}

/// `relay/lifecycle.rs: Phase`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PhaseState {
    /// The bytes of a partial request head.
    Head(#[serde(with = "serde_bytes")] Vec<u8>),
    Open(PeerState),
    Closing,
    Draining {
        fin_sent: bool,
    },
}

/// `relay/lifecycle.rs: Peer`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    Binary { server_id: String },
    Challenger { server_id: String },
    Phone { server_id: String, conn_id: String },
}

impl PeerState {
    pub fn server_id(&self) -> &str {
        match self {
            PeerState::Binary { server_id }
            | PeerState::Challenger { server_id }
            | PeerState::Phone { server_id, .. } => server_id,
        }
    }
}

/// `ws::Reader`: whether it still decodes, a partial frame, and a
/// fragmented message being reassembled.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReaderState {
    /// The peer's close was read, or a protocol error ended decoding.
    pub done: bool,
    pub failed: bool,
    #[serde(with = "serde_bytes")]
    pub pending: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub fragments: Option<Vec<u8>>,
    pub fragments_text: bool,
}

/// Every deadline a connection can have, each an `Option<T>`: an
/// `Instant` in the running relay (`relay/lifecycle.rs: Deadlines`), the
/// time remaining (`Duration`) in a snapshot ([`DeadlinesState`]). One
/// struct for both, so a new deadline cannot be carried by one and
/// forgotten by the other.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadlineSet<T> {
    pub handshake: Option<T>,
    pub next_ping: Option<T>,
    pub pong: Option<T>,
    pub message: Option<T>,
    pub stall: Option<T>,
    pub close: Option<T>,
    pub probe: Option<T>,
}

/// Every deadline of a connection, as time remaining after the snapshot.
pub type DeadlinesState = DeadlineSet<Duration>;

impl<T> Default for DeadlineSet<T> {
    fn default() -> Self {
        DeadlineSet {
            handshake: None,
            next_ping: None,
            pong: None,
            message: None,
            stall: None,
            close: None,
            probe: None,
        }
    }
}

impl<T: Copy> DeadlineSet<T> {
    /// Every deadline, set or not.
    pub fn all(&self) -> [Option<T>; 7] {
        [
            self.handshake,
            self.next_ping,
            self.pong,
            self.message,
            self.stall,
            self.close,
            self.probe,
        ]
    }

    /// The same set with every deadline that is set passed through `f`.
    pub fn map<U>(&self, f: impl Fn(T) -> U) -> DeadlineSet<U> {
        DeadlineSet {
            handshake: self.handshake.map(&f),
            next_ping: self.next_ping.map(&f),
            pong: self.pong.map(&f),
            message: self.message.map(&f),
            stall: self.stall.map(&f),
            close: self.close.map(&f),
            probe: self.probe.map(&f),
        }
    }
}

/// A server-id's slot (`registry.rs: Slot`); connections by index.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub server_id: String,
    pub holder: HolderState,
    pub phones: Vec<u32>,
    pub generation: u64,
    pub backpressured: bool,
}

/// `registry.rs: SlotState`, with the grace window's remaining time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HolderState {
    Held { binary: u32 },
    Probing { binary: u32, challenger: u32 },
    Grace { remaining: Duration },
}

/// One client IP's rate-limit bucket (its live count follows from the
/// connections).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BucketState {
    pub ip: IpAddr,
    pub tokens: f64,
}

/// The counters of `metrics: Metrics`, in the order of
/// `Metrics::export` (every counter, histogram buckets included).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: Vec<u64>,
}

/// Why a snapshot cannot be read or restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a hand-over state at all.
    BadMagic,
    /// A format version this build does not read.
    UnknownVersion(u32),
    /// The bytes do not decode as this version.
    Decode(String),
    /// The state contradicts itself.
    Invalid(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::BadMagic => write!(f, "not a hand-over state"),
            SnapshotError::UnknownVersion(v) => write!(
                f,
                "state format version {v} is unknown to this build (it reads {READABLE_VERSIONS:?})"
            ),
            SnapshotError::Decode(why) => write!(f, "state does not decode: {why}"),
            SnapshotError::Invalid(why) => write!(f, "state is inconsistent: {why}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

fn invalid(why: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(why.into())
}

impl Snapshot {
    /// The magic, the version, then the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.conns.len() * 160);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        postcard::to_extend(self, out).expect("a Vec grows as needed")
    }

    /// Reads what [`Snapshot::encode`] wrote; refuses an unknown version
    /// before decoding anything else. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let rest = bytes
            .strip_prefix(&MAGIC[..])
            .ok_or(SnapshotError::BadMagic)?;
        let (version, body) = rest
            .split_first_chunk::<4>()
            .ok_or(SnapshotError::BadMagic)?;
        let version = u32::from_le_bytes(*version);
        if !READABLE_VERSIONS.contains(&version) {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let (snapshot, rest) = postcard::take_from_bytes::<Snapshot>(body)
            .map_err(|err| SnapshotError::Decode(err.to_string()))?;
        if !rest.is_empty() {
            return Err(SnapshotError::Decode(format!(
                "{} bytes after the state",
                rest.len()
            )));
        }
        Ok(snapshot)
    }

    /// Every descriptor the snapshot names: listeners, then connections.
    pub fn fds(&self) -> impl Iterator<Item = i32> + '_ {
        self.listeners
            .iter()
            .map(|l| l.fd)
            .chain(self.conns.iter().map(|c| c.fd))
    }

    /// Checks that the state is whole and agrees with itself: descriptors
    /// unique, one public listener, every index in range, every slot's
    /// holder, challenger and phones are connections open as exactly that
    /// peer of exactly that server-id (and every open peer is in its
    /// slot), conn_ids unique, no deadline absurdly far.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if crate::metrics::Metrics::import(&self.counters.values).is_none() {
            return Err(invalid(format!(
                "{} counters, this build has {}",
                self.counters.values.len(),
                crate::metrics::Metrics::default().export().len()
            )));
        }
        self.validate_fds()?;
        for (index, conn) in self.conns.iter().enumerate() {
            validate_conn(index, conn)?;
        }
        self.validate_slots()
    }

    fn validate_fds(&self) -> Result<(), SnapshotError> {
        let mut seen = HashSet::new();
        for fd in self.fds() {
            if fd < 3 {
                return Err(invalid(format!("descriptor {fd} is a standard stream")));
            }
            if !seen.insert(fd) {
                return Err(invalid(format!("descriptor {fd} named twice")));
            }
        }
        let mut roles = HashSet::new();
        for listener in &self.listeners {
            if !roles.insert(listener.role) {
                return Err(invalid(format!("two {:?} listeners", listener.role)));
            }
        }
        if !roles.contains(&ListenerRole::Public) {
            return Err(invalid("no public listener"));
        }
        if self.uptime > MAX_REMAINING * 100 {
            return Err(invalid("uptime out of range"));
        }
        Ok(())
    }

    fn validate_slots(&self) -> Result<(), SnapshotError> {
        // What each connection index must be, according to the slots.
        let mut claimed: HashMap<u32, (&str, Role)> = HashMap::new();
        let mut server_ids = HashSet::new();
        for slot in &self.slots {
            let sid = slot.server_id.as_str();
            if !crate::http::is_valid_server_id(sid) || !server_ids.insert(sid) {
                return Err(invalid(format!("slot {sid:?} invalid or twice")));
            }
            let mut claim = |index: u32, role: Role| match claimed.insert(index, (sid, role)) {
                None => Ok(()),
                Some(_) => Err(invalid(format!("connection {index} in two places"))),
            };
            match slot.holder {
                HolderState::Held { binary } => claim(binary, Role::Binary)?,
                HolderState::Probing { binary, challenger } => {
                    claim(binary, Role::Binary)?;
                    claim(challenger, Role::Challenger)?;
                }
                HolderState::Grace { remaining } if remaining > MAX_REMAINING => {
                    return Err(invalid(format!("grace of {sid:?} out of range")));
                }
                HolderState::Grace { .. } => {}
            }
            for &phone in &slot.phones {
                claim(phone, Role::Phone)?;
            }
        }
        for (&index, &(sid, role)) in &claimed {
            let peer = self
                .conns
                .get(index as usize)
                .and_then(|conn| match &conn.phase {
                    PhaseState::Open(peer) => Some(peer),
                    _ => None,
                });
            if !peer.is_some_and(|peer| Role::of(peer) == role && peer.server_id() == sid) {
                return Err(invalid(format!(
                    "slot {sid:?} names connection {index} as {role:?}, which it is not"
                )));
            }
        }
        let mut conn_ids = HashSet::new();
        for (index, conn) in self.conns.iter().enumerate() {
            let PhaseState::Open(peer) = &conn.phase else {
                continue;
            };
            if !claimed.contains_key(&(index as u32)) {
                return Err(invalid(format!("open connection {index} is in no slot")));
            }
            if let PeerState::Phone { conn_id, .. } = peer {
                if !conn_ids.insert(conn_id.as_str()) {
                    return Err(invalid(format!("conn_id of connection {index} twice")));
                }
            }
        }
        Ok(())
    }
}

/// What a slot says a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Binary,
    Challenger,
    Phone,
}

impl Role {
    fn of(peer: &PeerState) -> Role {
        match peer {
            PeerState::Binary { .. } => Role::Binary,
            PeerState::Challenger { .. } => Role::Challenger,
            PeerState::Phone { .. } => Role::Phone,
        }
    }
}

fn validate_conn(index: usize, conn: &ConnState) -> Result<(), SnapshotError> {
    if conn
        .deadlines
        .all()
        .into_iter()
        .flatten()
        .any(|d| d > MAX_REMAINING)
    {
        return Err(invalid(format!(
            "connection {index}: deadline out of range"
        )));
    }
    if let PhaseState::Open(peer) = &conn.phase {
        if !crate::http::is_valid_server_id(peer.server_id()) {
            return Err(invalid(format!("connection {index}: bad server-id")));
        }
        if let PeerState::Phone { conn_id, .. } = peer {
            if conn_id.is_empty() {
                return Err(invalid(format!("connection {index}: empty conn_id")));
            }
        }
    }
    if matches!(conn.phase, PhaseState::Open(_)) && !conn.counted {
        return Err(invalid(format!("connection {index}: open but not counted")));
    }
    if conn.reader.failed && !conn.reader.done {
        return Err(invalid(format!("connection {index}: reader state")));
    }
    if conn.origin == ListenerRole::Metrics && conn.counted {
        return Err(invalid(format!(
            "connection {index}: a counted metrics request"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Snapshot {
        let conn = |fd, phase| ConnState {
            fd,
            origin: ListenerRole::Public,
            remote: "127.0.0.1:4000".parse().unwrap(),
            client_ip: "127.0.0.1".parse().unwrap(),
            counted: true,
            phase,
            reader: ReaderState {
                done: false,
                failed: false,
                pending: Some(vec![0x81, 0x85]),
                fragments: None,
                fragments_text: false,
            },
            out: b"queued".to_vec(),
            deadlines: DeadlinesState {
                next_ping: Some(Duration::from_secs(12)),
                ..DeadlinesState::default()
            },
            resume: false,
        };
        Snapshot {
            taken_at: 42,
            taken_cpu: 7,
            uptime: Duration::from_secs(3600),
            listeners: vec![ListenerState {
                role: ListenerRole::Public,
                fd: 3,
            }],
            conns: vec![
                conn(
                    10,
                    PhaseState::Open(PeerState::Binary {
                        server_id: "srv".into(),
                    }),
                ),
                conn(
                    11,
                    PhaseState::Open(PeerState::Phone {
                        server_id: "srv".into(),
                        conn_id: "client-srv-00".into(),
                    }),
                ),
            ],
            slots: vec![SlotState {
                server_id: "srv".into(),
                holder: HolderState::Held { binary: 0 },
                phones: vec![1],
                generation: 3,
                backpressured: false,
            }],
            ip_buckets: vec![BucketState {
                ip: "127.0.0.1".parse().unwrap(),
                tokens: 2.5,
            }],
            counters: Counters {
                // The first counter is frames_phone_to_binary.
                values: {
                    let mut values = crate::metrics::Metrics::default().export();
                    values[0] = 7;
                    values
                },
            },
        }
    }

    #[test]
    fn a_snapshot_comes_back_as_it_went() {
        let snapshot = sample();
        snapshot.validate().unwrap();
        let bytes = snapshot.encode();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snapshot);
    }

    #[test]
    fn an_unknown_version_is_refused_before_anything_is_decoded() {
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(
            Snapshot::decode(&bytes),
            Err(SnapshotError::UnknownVersion(99))
        );
        assert_eq!(
            Snapshot::decode(b"PYRYHOV0xxxx"),
            Err(SnapshotError::BadMagic)
        );
        assert_eq!(Snapshot::decode(b"PYRY"), Err(SnapshotError::BadMagic));
    }

    #[test]
    fn truncated_or_extended_bytes_are_refused() {
        let bytes = sample().encode();
        for len in 12..bytes.len() {
            assert!(Snapshot::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Snapshot::decode(&longer).is_err());
    }

    /// Whatever the bytes, decoding and validating return a result: no
    /// mutation of a real state makes either panic.
    #[test]
    fn no_corruption_of_the_bytes_panics() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                if let Ok(snapshot) = Snapshot::decode(&bad) {
                    let _ = snapshot.validate();
                }
            }
        }
    }

    #[test]
    fn contradictions_are_found_before_any_socket_is_touched() {
        let mut twice = sample();
        twice.conns[1].fd = 10;
        let mut stdio = sample();
        stdio.listeners[0].fd = 1;
        let mut dangling = sample();
        dangling.slots[0].phones = vec![9];
        let mut wrong_peer = sample();
        wrong_peer.slots[0].holder = HolderState::Held { binary: 1 };
        let mut orphan = sample();
        orphan.slots[0].phones.clear();
        let mut far = sample();
        far.conns[0].deadlines.pong = Some(MAX_REMAINING * 2);
        let mut no_listener = sample();
        no_listener.listeners.clear();
        for (what, snapshot) in [
            ("fd twice", twice),
            ("stdio", stdio),
            ("dangling index", dangling),
            ("wrong peer", wrong_peer),
            ("phone in no slot", orphan),
            ("far deadline", far),
            ("no listener", no_listener),
        ] {
            assert!(
                matches!(snapshot.validate(), Err(SnapshotError::Invalid(_))),
                "{what} passed validation"
            );
        }
    }
}
