//! The simulated world: the relay (in process, manual clock, real
//! loopback sockets), the peers, and the model of what the relay must do.
//! After every step it lets every peer read, answer and echo until
//! nothing moves, reconciles what the relay holds with the model, and
//! checks the invariants.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use pyrycode_relay::fixture::{Client, TestRelay};
use pyrycode_relay::{Census, Config};

use super::model::{Actor, Fate, Kind, Loiterer, Slot, SlotState, SERVER_IDS};
use super::rng::Rng;
use super::{tally, trace};

/// The relay's limits in the simulation: small, so that every cap, the
/// backpressure marks and the phone backlog are reached by a few peers.
pub fn configure(config: &mut Config) {
    config.max_phones_per_server = 3;
    config.max_connections = 9;
    config.max_connections_per_ip = 3;
    config.max_message_size = 16 * 1024;
    config.phone_backlog = 24 * 1024;
    config.binary_high_water = 12 * 1024;
    config.binary_low_water = 3 * 1024;
}

/// The client addresses peers come from (per-IP caps apply to each).
pub const IPS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];

/// Kernel buffer size of every simulated socket (both ends), so that a
/// peer that stops reading pushes back after kilobytes.
pub const SOCKET_BUFFER: usize = 4096;

/// How many rounds of read-answer-echo a step may take to become still.
const ROUNDS: usize = 200;

pub struct World {
    pub relay: TestRelay,
    pub seed: u64,
    pub steps: u64,
    pub rng: Rng,
    pub actors: Vec<Actor>,
    pub slots: Vec<Option<Slot>>,
    pub conn_ids_seen: HashSet<String>,
    pub loiterers: Vec<Loiterer>,
    pub shutting_down: bool,
    pub config: Config,
}

impl World {
    pub fn new(seed: u64) -> World {
        let mut config = Config::default();
        configure(&mut config);
        config.rate_limit_burst = 1_000_000;
        let relay = TestRelay::try_start(config.clone()).expect("the relay starts");
        World {
            relay,
            seed,
            steps: 0,
            rng: Rng::new(seed),
            actors: Vec::new(),
            slots: vec![None; SERVER_IDS.len()],
            conn_ids_seen: HashSet::new(),
            loiterers: Vec::new(),
            shutting_down: false,
            config,
        }
    }

    pub fn now(&self) -> Duration {
        self.relay.elapsed()
    }

    /// After a step: everyone reads, answers and echoes until nothing
    /// moves; then the model and the relay are reconciled and checked.
    pub fn observe(&mut self) {
        self.settle_world();
        self.note_paused();
        self.check_loiterers();
        self.check();
    }

    /// A connection that never finishes its head hears nothing before
    /// the handshake deadline, and exactly a 408 at it.
    fn check_loiterers(&mut self) {
        let now = self.now();
        let relay = &self.relay;
        let shutting_down = self.shutting_down;
        self.loiterers.retain_mut(|loiterer| {
            let bytes = loiterer.client.take_bytes();
            let eof = loiterer.client.is_eof();
            if shutting_down {
                assert!(bytes.is_empty(), "a loiterer got {bytes:?} at shutdown");
            } else if now < loiterer.deadline {
                assert!(
                    bytes.is_empty() && !eof,
                    "a loiterer heard {bytes:?} before its deadline"
                );
                return true;
            }
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                assert!(text.starts_with("HTTP/1.1 408 "), "a loiterer got {text:?}");
                tally("loiterers answered 408");
            }
            if eof && !loiterer.client.has_hung_up() {
                loiterer.client.close_write();
            }
            loiterer.client.relay_phase(relay).is_some()
        });
    }

    /// Rounds of: sync; reconcile what the relay holds with the model
    /// (so that endings the model could not time are known before their
    /// consequences are read); handle every frame that arrived (which may
    /// queue answers). Until a round handles nothing.
    fn settle_world(&mut self) {
        for _ in 0..ROUNDS {
            let mut clients: Vec<&mut Client> = self
                .actors
                .iter_mut()
                .filter_map(|actor| actor.client.as_mut())
                .chain(self.loiterers.iter_mut().map(|l| &mut l.client))
                .collect();
            self.relay.sync(&mut clients);
            self.reconcile();
            self.let_go();
            if !self.handle_all_frames() {
                return;
            }
        }
        panic!("the world never became still in {ROUNDS} rounds");
    }

    /// What the relay holds for each actor must match the model; an
    /// ending the model did not predict is accepted only for a peer the
    /// relay may end at a moment the model cannot name.
    fn reconcile(&mut self) {
        let now = self.now();
        for id in 0..self.actors.len() {
            let actor = &self.actors[id];
            let Some(client) = actor.client.as_ref() else {
                continue;
            };
            let phase = client.relay_phase(&self.relay);
            let open = phase.is_some_and(|phase| phase.starts_with("open"));
            match (actor.fate == Fate::Open, open) {
                (true, true) => self.check_role(id, phase.unwrap_or("")),
                (false, true) => panic!(
                    "{}: the relay still holds it open ({phase:?}) but should have ended it ({:?})",
                    actor.name(),
                    actor.fate
                ),
                (true, false) if actor.may_end_loosely(now) => {
                    tally("loose endings");
                    trace(format!("{} ended by the relay ({phase:?})", actor.name()));
                    self.end_loosely(id);
                }
                (true, false) => panic!(
                    "{}: the relay ended it ({phase:?}) with no reason the model knows",
                    actor.name()
                ),
                (false, false) => {}
            }
        }
    }

    /// Peers whose connection is over on both sides close their sockets.
    fn let_go(&mut self) {
        for actor in &mut self.actors {
            let done = actor.client.as_ref().is_some_and(|client| {
                actor.eof_seen && client.has_hung_up() && client.relay_phase(&self.relay).is_none()
            });
            if done {
                actor.client = None;
            }
        }
    }

    /// An open actor is open as what the model says it is.
    fn check_role(&self, id: usize, phase: &str) {
        let actor = &self.actors[id];
        let expected = match (actor.kind, actor.challenger) {
            (Kind::Phone, _) => "open phone",
            (Kind::Binary, true) => "open challenger",
            (Kind::Binary, false) => "open binary",
        };
        assert_eq!(
            phase,
            expected,
            "{}: the relay holds it as {phase}",
            actor.name()
        );
    }

    /// The relay ended `id` on its own (heartbeat, stall): what that
    /// means for its server-id.
    fn end_loosely(&mut self, id: usize) {
        self.actors[id].fate = Fate::Loose;
        self.departed(id, None);
    }

    /// `id`'s part in its server-id is over (it left, or the relay ended
    /// it): the slot and the close notice follow. `notice` is the code a
    /// phone's binary must get (`None`: a loose ending, any code).
    pub fn departed(&mut self, id: usize, notice: Option<u16>) {
        let now = self.now();
        let (kind, sid, was_registered) = {
            let actor = &mut self.actors[id];
            let was = actor.registered;
            actor.registered = false;
            (actor.kind, actor.sid, was)
        };
        if !was_registered {
            return;
        }
        match kind {
            Kind::Phone => self.phone_departed(id, sid, notice),
            Kind::Binary => self.binary_departed(id, sid, now),
        }
    }

    fn phone_departed(&mut self, id: usize, sid: usize, notice: Option<u16>) {
        if let Some(slot) = self.slots[sid].as_mut() {
            slot.phones.retain(|&phone| phone != id);
        }
        let Some(holder) = self.actors[id].holder else {
            return;
        };
        let holder_serves = self.slots[sid]
            .as_ref()
            .and_then(Slot::holder)
            .is_some_and(|h| h == holder);
        if holder_serves {
            self.actors[holder].notices_due.insert(id, notice);
        } else if notice.is_none() {
            // Ended by the relay in the same instant as its binary: which
            // went first (and so whether a notice went out) is the
            // relay's business.
            self.actors[holder].notices_allowed.insert(id);
        }
    }

    fn binary_departed(&mut self, id: usize, sid: usize, now: Duration) {
        let Some(slot) = self.slots[sid].as_mut() else {
            return;
        };
        match slot.state.clone() {
            SlotState::Held(holder) if holder == id => {
                let until = now + self.config.grace_period;
                trace(format!("{} in grace until {until:?}", SERVER_IDS[sid]));
                slot.state = SlotState::Grace { until };
            }
            SlotState::Probing {
                holder, challenger, ..
            } if holder == id => {
                trace(format!("{} handed over to #{challenger}", SERVER_IDS[sid]));
                self.promote(sid, challenger);
            }
            SlotState::Probing {
                holder, challenger, ..
            } if challenger == id => {
                slot.state = SlotState::Held(holder);
            }
            _ => {}
        }
    }

    /// The challenger of `sid` holds it now; the phones there are closed
    /// 4404 "binary reclaimed server-id".
    pub fn promote(&mut self, sid: usize, challenger: usize) {
        let phones = {
            let slot = self.slots[sid].as_mut().expect("a slot");
            slot.state = SlotState::Held(challenger);
            std::mem::take(&mut slot.phones)
        };
        self.actors[challenger].challenger = false;
        for phone in phones {
            self.close_expected(phone, 4404, "binary reclaimed server-id");
        }
    }

    /// The relay must close `id` with `code` and `reason`, now. (What
    /// that means for its server-id is the caller's business: see
    /// [`World::departed`].)
    pub fn close_expected(&mut self, id: usize, code: u16, reason: &str) {
        let now = self.now();
        let actor = &mut self.actors[id];
        if matches!(actor.fate, Fate::Closed(..)) && actor.fate_at == now {
            // Two deadlines of one instant: either may have come first.
            actor.fate_or.push((code, reason.to_string()));
            return;
        }
        if actor.fate != Fate::Open {
            return;
        }
        actor.fate_at = now;
        if let (Kind::Phone, Some(holder)) = (actor.kind, actor.holder) {
            if actor.may_end_loosely(now) {
                // The relay may have ended it on its own in this very
                // instant, before this close, and told its binary.
                self.actors[holder].notices_allowed.insert(id);
            }
        }
        let actor = &mut self.actors[id];
        actor.fate = Fate::Closed(code, reason.to_string());
        actor.registered = false;
        actor.challenger = false;
    }

    /// Every peer still open leaves, every deadline passes, everyone hangs
    /// up: then the relay must hold nothing at all.
    pub fn wind_down(&mut self) {
        trace("wind down".to_string());
        let now = self.now();
        for actor in &mut self.actors {
            if let Some(client) = actor.client.as_mut().filter(|_| actor.slow) {
                client.set_reading(true);
                actor.slow = false;
                actor.slow_until = Some(now);
            }
        }
        self.observe();
        if Rng::for_step(self.seed, u64::MAX).chance(25) {
            return self.shut_down();
        }
        self.everyone_leaves();
        self.advance(Duration::from_secs(200));
        for actor in &mut self.actors {
            if let Some(client) = actor.client.as_mut() {
                if !client.has_hung_up() {
                    client.close_write();
                }
            }
        }
        self.observe();
        self.advance(Duration::from_secs(70));
        let census = self.relay.census();
        assert_eq!(census, Census::default(), "the relay still holds something");
        assert_eq!(self.relay.relay().memory().queued_output, 0);
    }

    /// Every open peer the relay reads says goodbye with a close frame;
    /// the others (held back, waiting on a probe) get there as time
    /// passes.
    fn everyone_leaves(&mut self) {
        for _ in 0..40 {
            let open: Vec<usize> = self
                .actors
                .iter()
                .filter(|a| a.is_open() && !a.challenger)
                .filter(|a| {
                    a.client.as_ref().and_then(|c| c.relay_reads(&self.relay)) == Some(true)
                })
                .map(|a| a.id)
                .collect();
            for id in open {
                // An earlier departure may have closed it meanwhile.
                if self.actors[id].is_open() {
                    self.leave_with_close(id, Some(1000));
                }
            }
            self.observe();
            if self.actors.iter().all(|a| !a.is_open()) {
                return;
            }
            self.advance(Duration::from_secs(5));
        }
    }

    /// SIGTERM instead of goodbyes (SPEC §9): every open WebSocket is
    /// closed 1001 "shutting down" after what is queued for it, requests
    /// still in their head are dropped, and once the close handshakes are
    /// done (or the drain deadline passes) the relay has finished.
    fn shut_down(&mut self) {
        trace("shutdown".to_string());
        self.shutting_down = true;
        self.relay.relay_mut().shutdown();
        for id in 0..self.actors.len() {
            if self.actors[id].fate == Fate::Open && self.actors[id].client.is_some() {
                self.actors[id].registered = false;
                self.close_expected(id, 1001, "shutting down");
            }
        }
        self.observe();
        self.advance(self.config.drain_timeout);
        assert!(
            self.relay.relay().is_finished(),
            "the relay did not finish its drain"
        );
        assert_eq!(self.relay.relay().census().connections, 0);
        tally("shutdowns");
    }

    /// Fires the model's own deadlines that are due: grace windows and
    /// conflict probes.
    pub fn model_deadlines(&mut self) {
        let now = self.now();
        self.message_deadlines(now);
        for (sid, name) in SERVER_IDS.iter().enumerate() {
            let Some(slot) = self.slots[sid].clone() else {
                continue;
            };
            match slot.state {
                SlotState::Grace { until } if until <= now => {
                    tally("grace expiries");
                    trace(format!("{name} grace expired"));
                    self.slots[sid] = None;
                    for phone in slot.phones {
                        self.close_expected(phone, 4404, "binary gone");
                    }
                }
                SlotState::Probing {
                    holder,
                    challenger,
                    until,
                } if until <= now => {
                    tally("takeovers");
                    trace(format!("{name} taken over by #{challenger}"));
                    self.close_expected(holder, 1011, "heartbeat timeout");
                    self.promote(sid, challenger);
                }
                _ => {}
            }
        }
    }

    /// A message begun and not finished in time closes its sender 1008
    /// "message timeout" — at that instant if the relay was reading it all
    /// along; a sender it was not reading got more time.
    fn message_deadlines(&mut self, now: Duration) {
        let timeout = self.config.message_timeout;
        for id in 0..self.actors.len() {
            let actor = &self.actors[id];
            let Some(hanging) = actor.hanging.as_ref() else {
                continue;
            };
            let read_all_along = actor.paused_at.is_none_or(|at| at < hanging.since);
            if hanging.since + timeout <= now && actor.fate == Fate::Open && read_all_along {
                tally("message timeouts");
                let ties = self.slot_deadline_closes(id, now);
                self.departed(id, Some(1008));
                self.close_expected(id, 1008, "message timeout");
                self.actors[id].fate_or.extend(ties);
            }
        }
    }

    /// The closes `id`'s server-id's own deadline, due at this same
    /// instant, would give it (the relay may fire that one first).
    fn slot_deadline_closes(&self, id: usize, now: Duration) -> Vec<(u16, String)> {
        let Some(slot) = self.slots[self.actors[id].sid].as_ref() else {
            return Vec::new();
        };
        let listed = slot.phones.contains(&id);
        match slot.state {
            SlotState::Grace { until } if until <= now && listed => {
                vec![(4404, "binary gone".to_string())]
            }
            SlotState::Probing { holder, until, .. } if until <= now && holder == id => {
                vec![(1011, "heartbeat timeout".to_string())]
            }
            SlotState::Probing { until, .. } if until <= now && listed => {
                vec![(4404, "binary reclaimed server-id".to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// The earliest deadline of the model, for advances that aim at it.
    pub fn model_next_deadline(&self) -> Option<Duration> {
        let slots = self
            .slots
            .iter()
            .flatten()
            .filter_map(|slot| match slot.state {
                SlotState::Grace { until } | SlotState::Probing { until, .. } => Some(until),
                SlotState::Held(_) => None,
            });
        let messages = self
            .actors
            .iter()
            .filter_map(|a| a.hanging.as_ref())
            .map(|h| h.since + self.config.message_timeout);
        let heads = self.loiterers.iter().map(|l| l.deadline);
        slots.chain(messages).chain(heads).min()
    }

    /// The invariants, after the world has become still.
    fn check(&mut self) {
        self.relay.assert_consistent();
        let now = self.now();
        for actor in &self.actors {
            let Some(client) = actor.client.as_ref() else {
                continue;
            };
            if !client.is_reading() {
                continue;
            }
            if let Fate::Closed(code, reason) = &actor.fate {
                if !actor.close_seen && !actor.eof_seen {
                    panic!(
                        "{}: the close {code} {reason:?} never arrived",
                        actor.name()
                    );
                }
            }
            if actor.fate == Fate::Open {
                self.check_complete(actor);
                let silent_for = now.saturating_sub(actor.opened_at);
                let never_excused = actor.slow_until.is_none() && actor.paused_at.is_none();
                if actor.mute && never_excused && silent_for >= Duration::from_secs(60) {
                    panic!("{}: silent for {silent_for:?} and still open", actor.name());
                }
            }
        }
        self.check_released_server_ids();
        self.check_live_count();
    }

    /// Everything sent between two live, reading peers has arrived.
    fn check_complete(&self, actor: &Actor) {
        let read_by_relay = actor
            .client
            .as_ref()
            .and_then(|client| client.relay_reads(&self.relay))
            == Some(true);
        if read_by_relay && !actor.pings.is_empty() {
            panic!("{}: pongs missing for {:?}", actor.name(), actor.pings);
        }
        match actor.kind {
            Kind::Phone => self.check_phone_complete(actor),
            Kind::Binary if !actor.challenger => self.check_binary_complete(actor),
            Kind::Binary => {}
        }
    }

    /// A phone whose binary reads has every frame that binary sent it.
    fn check_phone_complete(&self, phone: &Actor) {
        let holder_reads = phone
            .holder
            .is_some_and(|h| self.actors[h].is_open() && !self.actors[h].slow);
        if holder_reads && !phone.down.is_empty() {
            panic!(
                "{}: {} frames from its binary never arrived",
                phone.name(),
                phone.down.len()
            );
        }
    }

    /// A holder has every message its open phones sent, and every close
    /// notice due.
    fn check_binary_complete(&self, binary: &Actor) {
        for phone in self.actors.iter().filter(|p| p.holder == Some(binary.id)) {
            let seen = binary.up_seen.get(&phone.id).copied().unwrap_or(0);
            // A phone that does not read its pongs is not read either
            // once its own output passes the read limit.
            let read = phone
                .client
                .as_ref()
                .and_then(|c| c.relay_reads(&self.relay))
                == Some(true);
            if phone.is_open() && phone.registered && read && seen != phone.up.len() {
                panic!(
                    "{}: got {seen} of the {} messages {} sent",
                    binary.name(),
                    phone.up.len(),
                    phone.name()
                );
            }
        }
        if let Some((phone, code)) = binary.notices_due.iter().next() {
            panic!(
                "{}: no close notice ({code:?}) for phone#{phone}",
                binary.name()
            );
        }
    }

    /// No phone stays attached to a server-id that was released.
    fn check_released_server_ids(&self) {
        for actor in &self.actors {
            if actor.kind != Kind::Phone || self.slots[actor.sid].is_some() {
                continue;
            }
            let Some(client) = actor.client.as_ref() else {
                continue;
            };
            if client.relay_phase(&self.relay) == Some("open phone") {
                panic!(
                    "{}: attached to released {}",
                    actor.name(),
                    SERVER_IDS[actor.sid]
                );
            }
        }
    }

    /// The relay's count of live connections is the peers it holds (every
    /// peer was upgraded; refused ones are not kept).
    fn check_live_count(&mut self) {
        let census: Census = self.relay.relay().census();
        let held = self
            .actors
            .iter()
            .filter_map(|actor| actor.client.as_ref())
            .filter(|client| client.relay_phase(&self.relay).is_some())
            .count();
        assert_eq!(
            census.live, held,
            "the relay counts {} live connections but holds {held} peers",
            census.live
        );
    }

    /// Remembers which peers the relay is not reading now: their silence
    /// deadlines are pushed back, so the model excuses their timing.
    pub fn note_paused(&mut self) {
        let now = self.now();
        for actor in &mut self.actors {
            let Some(client) = actor.client.as_ref() else {
                continue;
            };
            if actor.fate == Fate::Open && client.relay_reads(&self.relay) == Some(false) {
                if !actor.challenger {
                    tally("peers seen held back");
                }
                actor.paused_at = Some(now);
            }
        }
    }

    /// Per client IP: connections the relay holds that were upgraded.
    pub fn live_from(&self, ip: usize) -> (usize, usize) {
        let mut from_ip = 0;
        let mut total = 0;
        for actor in &self.actors {
            let Some(client) = actor.client.as_ref() else {
                continue;
            };
            if client.relay_phase(&self.relay).is_none() {
                continue;
            }
            total += 1;
            if client.local_addr().ip() == IPS[ip] {
                from_ip += 1;
            }
        }
        (from_ip, total)
    }
}
