//! What the simulation believes about each peer and each server-id: the
//! model the relay's behaviour is checked against.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use pyrycode_relay::fixture::Client;

/// The server-ids the simulated binaries claim and phones dial.
pub const SERVER_IDS: [&str; 3] = ["sim-a", "sim-b", "sim-c"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Binary,
    Phone,
}

/// How an actor's connection ends, as far as the model knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Nothing ends it yet.
    Open,
    /// The relay closes it with exactly this code and reason.
    Closed(u16, String),
    /// It sent a close (with this code, or none): the relay echoes it.
    Echo(Option<u16>),
    /// It hung up or was reset.
    Gone,
    /// The relay ended it for a reason whose moment the model cannot
    /// predict (a heartbeat of a peer that did not answer, an output
    /// stall of a peer that did not read).
    Loose,
}

/// One simulated peer.
pub struct Actor {
    pub id: usize,
    pub kind: Kind,
    pub sid: usize,
    pub client: Option<Client>,
    pub fate: Fate,
    /// When the model decided `fate`.
    pub fate_at: Duration,
    /// Closes as good as `fate`: deadlines of the same instant, whose
    /// order is the relay's to choose.
    pub fate_or: Vec<(u16, String)>,
    /// Registered at the relay: a holder, a challenger, or a joined phone.
    pub registered: bool,
    pub challenger: bool,
    pub close_seen: bool,
    pub eof_seen: bool,
    /// Never answers pings.
    pub mute: bool,
    /// Relay time it last stopped being slow (not reading), if it was.
    pub slow_until: Option<Duration>,
    pub slow: bool,
    /// Last relay time it was seen not read by the relay.
    pub paused_at: Option<Duration>,
    pub opened_at: Duration,
    /// Pings it sent, in order: their pongs are due.
    pub pings: VecDeque<Vec<u8>>,
    /// A message it began and has not finished: since when, the bytes
    /// still to send, and (a phone's) the message itself.
    pub hanging: Option<Hanging>,
    // A phone's side.
    pub conn_id: Option<String>,
    /// The binary that served its server-id when it joined: the only
    /// one its messages can ever reach (while that binary serves).
    pub holder: Option<usize>,
    /// Messages it sent that its holder must get, in order.
    pub up: Vec<Vec<u8>>,
    /// Frames its binary sent it that must arrive, in order.
    pub down: VecDeque<Vec<u8>>,
    // A binary's side.
    /// Per phone: how many of its messages arrived.
    pub up_seen: HashMap<usize, usize>,
    /// conn_id → phone, learned from each phone's first message.
    pub phones_known: HashMap<String, usize>,
    /// Close notices due, per phone: the code, or `None` for "any code
    /// a loose ending may give".
    pub notices_due: HashMap<usize, Option<u16>>,
    /// Phones it may get a notice for (with 1001 or 1011), or not.
    pub notices_allowed: HashSet<usize>,
    /// Phones it got a notice for.
    pub noticed: HashSet<usize>,
    /// Per phone: frames sent to it so far.
    pub down_count: HashMap<usize, usize>,
}

impl Actor {
    pub fn new(
        id: usize,
        kind: Kind,
        sid: usize,
        client: Client,
        now: Duration,
        mute: bool,
    ) -> Actor {
        Actor {
            id,
            kind,
            sid,
            client: Some(client),
            fate: Fate::Open,
            fate_at: now,
            fate_or: Vec::new(),
            registered: false,
            challenger: false,
            close_seen: false,
            eof_seen: false,
            mute,
            slow_until: None,
            slow: false,
            paused_at: None,
            opened_at: now,
            pings: VecDeque::new(),
            hanging: None,
            conn_id: None,
            holder: None,
            up: Vec::new(),
            down: VecDeque::new(),
            up_seen: HashMap::new(),
            phones_known: HashMap::new(),
            notices_due: HashMap::new(),
            notices_allowed: HashSet::new(),
            noticed: HashSet::new(),
            down_count: HashMap::new(),
        }
    }

    pub fn name(&self) -> String {
        let kind = match (self.kind, self.challenger) {
            (Kind::Binary, true) => "challenger",
            (Kind::Binary, false) => "binary",
            (Kind::Phone, _) => "phone",
        };
        format!("{kind}#{} of {}", self.id, SERVER_IDS[self.sid])
    }

    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("an actor with a socket")
    }

    pub fn is_open(&self) -> bool {
        self.fate == Fate::Open && self.client.is_some()
    }

    /// Whether the relay may end it at a moment the model cannot name:
    /// it does not answer pings, or did not read (or was not read)
    /// within the last minute of relay time.
    pub fn may_end_loosely(&self, now: Duration) -> bool {
        let recent =
            |at: Option<Duration>| at.is_some_and(|at| at + Duration::from_secs(70) >= now);
        let silent = self.mute || self.slow || self.hanging.is_some();
        silent || recent(self.slow_until) || recent(self.paused_at)
    }

    /// Whether a close 1008 "message timeout" is its due: it left a
    /// message unfinished for the whole message timeout.
    pub fn may_time_out(&self, now: Duration, timeout: Duration) -> bool {
        self.hanging
            .as_ref()
            .is_some_and(|h| h.since + timeout <= now)
    }
}

/// A message begun and left unfinished (the slow-dribble defence).
#[derive(Clone, Debug)]
pub struct Hanging {
    pub since: Duration,
    pub rest: Vec<u8>,
    pub payload: Vec<u8>,
    /// Pings that came meanwhile: answered after the rest is sent.
    pub pongs: Vec<Vec<u8>>,
}

/// A connection that never finishes its request head: answered 408 at
/// the handshake deadline.
pub struct Loiterer {
    pub client: Client,
    pub deadline: Duration,
}

/// A server-id's slot, as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    Held(usize),
    Probing {
        holder: usize,
        challenger: usize,
        until: Duration,
    },
    Grace {
        until: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub state: SlotState,
    pub phones: Vec<usize>,
}

impl Slot {
    /// The binary phones' messages go to now.
    pub fn holder(&self) -> Option<usize> {
        match self.state {
            SlotState::Held(holder) | SlotState::Probing { holder, .. } => Some(holder),
            SlotState::Grace { .. } => None,
        }
    }
}
