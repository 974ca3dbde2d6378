//! The workload: each step the simulation picks one action at random —
//! binaries claim, conflict, leave and reclaim; phones join, talk, leave
//! or vanish; binaries route, direct closes and send malformed
//! envelopes; peers ping, stop reading and read again; writes are split
//! at random points; the clock moves, often exactly onto a deadline.

use std::time::Duration;

use pyrycode_relay::fixture::{
    binary_headers, close_directive, envelope, masked_frame, phone_headers, upgrade_head, Client,
};

use super::model::{Actor, Fate, Hanging, Kind, Loiterer, Slot, SlotState, SERVER_IDS};
use super::payload::{malformed_envelope, message, not_json};
use super::rng::Rng;
use super::world::{World, IPS, SOCKET_BUFFER};
use super::{tally, trace};

/// The relay's timer resolution: every duration the simulation uses is a
/// multiple of it, so the model's deadlines and the relay's coincide.
const TICK: u64 = 10;

/// Actors at once at most (open or not yet cleaned up), so a run does
/// not become a crowd that only the caps talk to.
const CROWD: usize = 24;

#[derive(Clone, Copy, Debug)]
enum Action {
    Claim,
    Join,
    PhoneSends,
    BinarySends,
    Leave,
    Ping,
    ToggleSlow,
    BadPhoneMessage,
    Hang,
    Loiter,
    Advance,
}

const ACTIONS: [(Action, usize); 11] = [
    (Action::Claim, 8),
    (Action::Join, 12),
    (Action::PhoneSends, 22),
    (Action::BinarySends, 22),
    (Action::Leave, 8),
    (Action::Ping, 4),
    (Action::ToggleSlow, 5),
    (Action::BadPhoneMessage, 2),
    (Action::Hang, 3),
    (Action::Loiter, 1),
    (Action::Advance, 14),
];

impl World {
    /// One step: an action, then the world settles and is checked.
    pub fn step(&mut self) {
        // Each step draws from its own stream: where the kernel makes two
        // runs of a seed differ in a detail (how many bytes a full socket
        // took), later steps still make the same choices.
        self.steps += 1;
        self.rng = Rng::for_step(self.seed, self.steps);
        let weights: Vec<usize> = ACTIONS.iter().map(|(_, w)| *w).collect();
        let action = ACTIONS[self.rng.weighted(&weights)].0;
        match action {
            Action::Claim => self.claim(),
            Action::Join => self.join(),
            Action::PhoneSends => self.phone_sends(),
            Action::BinarySends => self.binary_sends(),
            Action::Leave => self.leave(),
            Action::Ping => self.ping(),
            Action::ToggleSlow => self.toggle_slow(),
            Action::BadPhoneMessage => self.bad_phone_message(),
            Action::Hang => self.hang(),
            Action::Loiter => self.loiter(),
            Action::Advance => {
                let by = self.pick_advance();
                self.advance(by);
            }
        }
        self.observe();
    }

    // -----------------------------------------------------------------
    // Connecting
    // -----------------------------------------------------------------

    fn crowded(&self) -> bool {
        self.actors.iter().filter(|a| a.client.is_some()).count() >= CROWD
    }

    /// A new connection from a random address, upgraded on `path`; the
    /// status must be what the caps say. `None` when refused (as
    /// predicted).
    fn upgrade(
        &mut self,
        path: &str,
        headers: &[(&'static str, String)],
    ) -> Option<(Client, usize)> {
        let ip = self.rng.below(IPS.len());
        let (from_ip, total) = self.live_from(ip);
        let expected = if from_ip >= self.config.max_connections_per_ip {
            429
        } else if total >= self.config.max_connections {
            503
        } else {
            101
        };
        let mut client = self.relay.connect_tuned(IPS[ip], Some(SOCKET_BUFFER));
        client.set_relay_send_buffer(&self.relay, SOCKET_BUFFER);
        let head = upgrade_head(path, headers);
        self.write_split(&mut client, head.as_bytes());
        let (status, response) = client.response(&mut self.relay);
        trace(format!("upgrade {path} from {} -> {status}", IPS[ip]));
        assert_eq!(
            status, expected,
            "upgrade on {path} from {}: {response}",
            IPS[ip]
        );
        tally(match status {
            101 => "upgrades 101",
            429 => "upgrades 429",
            _ => "upgrades 503",
        });
        (status == 101).then_some((client, ip))
    }

    fn claim(&mut self) {
        if self.crowded() {
            return;
        }
        let sid = self.rng.below(SERVER_IDS.len());
        let Some((client, _)) = self.upgrade("/v1/server", &binary_headers(SERVER_IDS[sid])) else {
            return;
        };
        let id = self.actors.len();
        let mute = self.rng.chance(8);
        let mut actor = Actor::new(id, Kind::Binary, sid, client, self.now(), mute);
        actor.client().set_name(format!("binary#{id}"));
        actor.registered = true;
        self.actors.push(actor);
        trace(format!(
            "binary#{id} claims {} (mute {mute})",
            SERVER_IDS[sid]
        ));
        match self.slots[sid].clone() {
            None => {
                self.slots[sid] = Some(Slot {
                    state: SlotState::Held(id),
                    phones: Vec::new(),
                })
            }
            Some(slot) => match slot.state {
                SlotState::Grace { .. } => {
                    tally("reclaims");
                    self.reclaim(sid, id)
                }
                SlotState::Held(holder) => {
                    let until = self.now() + self.config.conflict_probe_timeout;
                    self.actors[id].challenger = true;
                    self.slots[sid].as_mut().unwrap().state = SlotState::Probing {
                        holder,
                        challenger: id,
                        until,
                    };
                }
                SlotState::Probing { .. } => {
                    self.close_expected(id, 4409, "server-id already claimed")
                }
            },
        }
    }

    /// A claim during grace: the claimant holds the slot; the phones
    /// there are closed 4404 "binary reclaimed server-id".
    fn reclaim(&mut self, sid: usize, id: usize) {
        let slot = self.slots[sid].as_mut().unwrap();
        slot.state = SlotState::Held(id);
        let phones = std::mem::take(&mut slot.phones);
        for phone in phones {
            self.close_expected(phone, 4404, "binary reclaimed server-id");
        }
    }

    fn join(&mut self) {
        if self.crowded() {
            return;
        }
        let sid = self.rng.below(SERVER_IDS.len());
        let Some((client, _)) = self.upgrade("/v1/client", &phone_headers(SERVER_IDS[sid])) else {
            return;
        };
        let id = self.actors.len();
        let mute = self.rng.chance(6);
        let mut actor = Actor::new(id, Kind::Phone, sid, client, self.now(), mute);
        actor.client().set_name(format!("phone#{id}"));
        self.actors.push(actor);
        let cap = self.config.max_phones_per_server;
        match self.slots[sid].as_mut() {
            None => self.close_expected(id, 4404, "no server with that id"),
            Some(slot) if slot.phones.len() >= cap => {
                self.close_expected(id, 4429, "too many phones for server-id")
            }
            Some(slot) => {
                slot.phones.push(id);
                let holder = slot.holder();
                let phone = &mut self.actors[id];
                phone.registered = true;
                phone.holder = holder;
                trace(format!(
                    "phone#{id} joins {} (holder {holder:?}, mute {mute})",
                    SERVER_IDS[sid]
                ));
                self.send_from_phone(id);
            }
        }
    }

    // -----------------------------------------------------------------
    // Traffic
    // -----------------------------------------------------------------

    /// Writes `bytes` in one to four pieces cut at random points, letting
    /// the relay read each piece before the next.
    fn write_split(&mut self, client: &mut Client, bytes: &[u8]) {
        let pieces = self.rng.range(1, 4);
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| self.rng.below(bytes.len().max(1)))
            .collect();
        cuts.sort_unstable();
        let mut at = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            if cut > at {
                client.push_raw(&bytes[at..cut]);
                client.wait_delivered(&mut self.relay);
                at = cut;
            }
        }
    }

    fn write_split_for(&mut self, id: usize, bytes: &[u8]) {
        let mut client = self.actors[id].client.take().expect("a socket");
        self.write_split(&mut client, bytes);
        self.actors[id].client = Some(client);
    }

    /// A message size, now and then close to the limit (less `room`:
    /// what will be wrapped around it).
    fn message_size(&mut self, room: usize) -> usize {
        match self.rng.below(100) {
            0..=69 => self.rng.range(20, 300),
            70..=89 => self.rng.range(300, 4000),
            90..=97 => self.rng.range(4000, 12_000),
            _ => self.rng.range(12_000, self.config.max_message_size - room),
        }
    }

    /// The open peers of `kind`, as the model knows them (not asking the
    /// relay, so the same seed picks the same peers).
    fn open_actors(&self, kind: Kind) -> Vec<usize> {
        self.actors
            .iter()
            .filter(|a| a.kind == kind && a.is_open() && !a.challenger)
            .map(|a| a.id)
            .collect()
    }

    /// The open peers of either kind.
    fn open_peers(&self) -> Vec<usize> {
        let mut peers = self.open_actors(Kind::Phone);
        peers.extend(self.open_actors(Kind::Binary));
        peers.sort_unstable();
        peers
    }

    /// One of `candidates` at random — if the relay is reading it now
    /// (an action whose effect the model must know at once is skipped
    /// for a peer held back by backpressure).
    fn pick_read(&mut self, candidates: &[usize]) -> Option<usize> {
        let id = self.rng.pick(candidates)?;
        let client = self.actors[id].client.as_ref()?;
        (client.relay_reads(&self.relay) == Some(true)).then_some(id)
    }

    fn phone_sends(&mut self) {
        // Also phones the relay has closed that have not read it yet: what
        // they send must reach nobody.
        let phones: Vec<usize> = self
            .actors
            .iter()
            .filter(|a| a.kind == Kind::Phone && a.client.is_some())
            .filter(|a| matches!(a.fate, Fate::Open | Fate::Closed(..)))
            .filter(|a| !a.close_seen && !a.eof_seen)
            .map(|a| a.id)
            .collect();
        if let Some(id) = self.rng.pick(&phones) {
            // Now and then a burst: backpressure if the binary is slow.
            let count = match self.rng.chance(15) {
                true => self.rng.range(8, 24),
                false => self.rng.range(1, 4),
            };
            for _ in 0..count {
                self.send_from_phone(id);
            }
        }
    }

    /// A message from phone `id`: whole or in fragments (a ping between
    /// them at times), text or binary opcode, written in random pieces.
    fn send_from_phone(&mut self, id: usize) {
        self.finish_hanging(id);
        let size = self.message_size(64);
        let k = self.actors[id].up.len();
        let payload = message(&mut self.rng, "p", id, k, size);
        let opcode = if self.rng.chance(15) { 0x2 } else { 0x1 };
        let mut bytes = Vec::new();
        let fragments = if self.rng.chance(20) {
            self.rng.range(2, 4)
        } else {
            1
        };
        let mut at = 0;
        for index in 0..fragments {
            let end = if index + 1 == fragments {
                payload.len()
            } else {
                at + self.rng.below(payload.len() - at + 1)
            };
            let code = if index == 0 { opcode } else { 0x0 };
            bytes.extend(masked_frame(
                code,
                index + 1 == fragments,
                &payload[at..end],
            ));
            if index + 1 < fragments && self.rng.chance(30) {
                let ping = format!("mid-{k}").into_bytes();
                bytes.extend(masked_frame(0x9, true, &ping));
                self.actors[id].pings.push_back(ping);
            }
            at = end;
        }
        trace(format!(
            "phone#{id} sends message {k} ({} bytes, {fragments} fragments)",
            payload.len()
        ));
        self.expect_up(id, payload);
        self.write_split_for(id, &bytes);
    }

    /// Phone `id`'s message `payload` (its next in sequence) reaches its
    /// binary if that binary serves its server-id and the phone is
    /// joined; otherwise it goes nowhere.
    fn expect_up(&mut self, id: usize, payload: Vec<u8>) {
        let serving = self.slots[self.actors[id].sid]
            .as_ref()
            .and_then(Slot::holder);
        let actor = &mut self.actors[id];
        let reaches = actor.fate == Fate::Open && actor.registered && actor.holder.is_some();
        if reaches && actor.holder == serving {
            actor.up.push(payload);
        } else {
            actor.up.push(Vec::new()); // nowhere: keeps the sequence numbers
        }
    }

    fn binary_sends(&mut self) {
        let binaries = self.open_actors(Kind::Binary);
        let Some(id) = self.pick_read(&binaries) else {
            return;
        };
        self.finish_hanging(id);
        let mut known: Vec<(String, usize)> = self.actors[id]
            .phones_known
            .iter()
            .map(|(conn_id, &phone)| (conn_id.clone(), phone))
            .collect();
        known.sort();
        match self.rng.below(100) {
            0..=9 => self.malformed_envelope(id, &known),
            10..=13 => self.foreign_envelope(id),
            _ => {
                // Now and then a burst: a slow phone's backlog fills.
                let count = match self.rng.chance(15) {
                    true => self.rng.range(6, 20),
                    false => self.rng.range(1, 3),
                };
                for _ in 0..count {
                    // Mostly phones still open; now and then one that is
                    // gone (the envelope must reach nobody).
                    let any = self.rng.chance(10);
                    let live: Vec<&(String, usize)> = known
                        .iter()
                        .filter(|(_, phone)| any || self.actors[*phone].is_open())
                        .collect();
                    if live.is_empty() {
                        return;
                    }
                    let (conn_id, phone) = live[self.rng.below(live.len())].clone();
                    self.envelope_to(id, phone, &conn_id);
                }
            }
        }
    }

    /// Binary `id` sends phone `phone` a frame, maybe with a close
    /// directive. The model predicts delivery, the phone backlog's
    /// refusal, or nothing (the phone is no longer there).
    fn envelope_to(&mut self, id: usize, phone: usize, conn_id: &str) {
        let k = *self.actors[id].down_count.entry(phone).or_default();
        self.actors[id].down_count.insert(phone, k + 1);
        // The envelope adds the conn_id and the keys around the frame.
        let size = self.message_size(256);
        let frame = message(&mut self.rng, "b", id, k, size);
        let directive = self
            .rng
            .chance(8)
            .then(|| [4401, 4421, 4426, 1000, 3000][self.rng.below(5)]);
        let with_frame = directive.is_none() || self.rng.chance(70);
        let bytes = match directive {
            Some(code) => close_directive(conn_id, with_frame.then_some(&frame[..]), code),
            None => envelope(conn_id, &frame),
        };
        trace(format!(
            "binary#{id} sends phone#{phone} frame {k} ({} bytes, directive {directive:?})",
            frame.len()
        ));
        self.predict_delivery(phone, id, with_frame.then_some(frame), directive);
        self.write_split_for(id, &masked_frame(0x1, true, &bytes));
    }

    fn predict_delivery(
        &mut self,
        phone: usize,
        binary: usize,
        frame: Option<Vec<u8>>,
        directive: Option<u16>,
    ) {
        self.relay.settle();
        let p = &self.actors[phone];
        let reachable = p.fate == Fate::Open && p.registered && p.holder == Some(binary);
        if !reachable {
            return;
        }
        let queued = p
            .client
            .as_ref()
            .and_then(|c| c.relay_queued(&self.relay))
            .unwrap_or(0);
        if let Some(frame) = frame {
            if queued + frame.len() > self.config.phone_backlog {
                trace(format!("phone#{phone} backlog full ({queued} queued)"));
                self.departed(phone, Some(1011));
                self.close_expected(phone, 1011, "phone backlog full");
                return;
            }
            self.actors[phone].down.push_back(frame);
        }
        if let Some(code) = directive {
            self.departed(phone, None);
            self.actors[binary].notices_due.remove(&phone);
            self.close_expected(phone, code, "");
        }
    }

    fn malformed_envelope(&mut self, id: usize, known: &[(String, usize)]) {
        let conn_id = self
            .rng
            .pick(&known.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
            .map(str::to_string);
        let bytes = malformed_envelope(&mut self.rng, conn_id.as_deref());
        tally("malformed envelopes");
        trace(format!(
            "binary#{id} sends a malformed envelope {:?}",
            String::from_utf8_lossy(&bytes)
        ));
        self.write_split_for(id, &masked_frame(0x1, true, &bytes));
    }

    /// An envelope to a phone of another server-id: dropped.
    fn foreign_envelope(&mut self, id: usize) {
        let sid = self.actors[id].sid;
        let foreign: Vec<String> = self
            .actors
            .iter()
            .filter(|a| a.kind == Kind::Phone && a.sid != sid)
            .filter_map(|a| a.conn_id.clone())
            .collect();
        if let Some(conn_id) = self
            .rng
            .pick(&foreign.iter().map(String::as_str).collect::<Vec<_>>())
        {
            let bytes = envelope(conn_id, br#"{"foreign":true}"#);
            trace(format!("binary#{id} sends to a foreign conn_id"));
            self.write_split_for(id, &masked_frame(0x1, true, &bytes));
        }
    }

    // -----------------------------------------------------------------
    // Leaving, pinging, reading slowly
    // -----------------------------------------------------------------

    fn leave(&mut self) {
        let candidates = self.open_peers();
        let Some(id) = self.pick_read(&candidates) else {
            return;
        };
        match self.rng.below(10) {
            0..=5 => {
                let code = [
                    Some(1000),
                    Some(1001),
                    Some(3000),
                    Some(4000),
                    Some(4999),
                    None,
                ][self.rng.below(6)];
                self.leave_with_close(id, code);
            }
            6..=8 => {
                trace(format!("{} hangs up", self.actors[id].name()));
                self.actors[id].fate = Fate::Gone;
                self.departed(id, Some(1001));
                let mut client = self.actors[id].client.take().unwrap();
                client.hang_up(&mut self.relay);
                self.actors[id].client = Some(client);
            }
            _ => {
                trace(format!("{} resets", self.actors[id].name()));
                self.actors[id].fate = Fate::Gone;
                self.departed(id, Some(1001));
                let client = self.actors[id].client.take().unwrap();
                client.reset(&mut self.relay);
            }
        }
    }

    /// `id` sends a close frame with `code` (or an empty one).
    pub fn leave_with_close(&mut self, id: usize, code: Option<u16>) {
        if self.finish_hanging(id) {
            // Its message may have put its binary over high water: leave
            // on a later step, when the relay reads it again.
            return;
        }
        trace(format!(
            "{} leaves with close {code:?}",
            self.actors[id].name()
        ));
        let payload = code.map(u16::to_be_bytes);
        let payload = payload.as_ref().map_or(&[][..], |p| &p[..]);
        self.departed(id, Some(code.unwrap_or(1001)));
        self.actors[id].fate = Fate::Echo(code);
        let frame = masked_frame(0x8, true, payload);
        self.write_split_for(id, &frame);
    }

    /// A peer pings (the relay answers with the same payload); now and
    /// then a challenger waiting on its probe, which the relay does not
    /// read until it is promoted; now and then a slow peer floods pings
    /// without reading its pongs, until the relay stops reading it.
    fn ping(&mut self) {
        let challengers: Vec<usize> = self
            .actors
            .iter()
            .filter(|a| a.challenger && a.is_open())
            .map(|a| a.id)
            .collect();
        let id = match self.rng.below(10) {
            0 => self.rng.pick(&challengers),
            1 => return self.ping_flood(),
            _ => {
                let candidates = self.open_peers();
                self.pick_read(&candidates)
            }
        };
        let Some(id) = id else {
            return;
        };
        if self.finish_hanging(id) {
            return;
        }
        let payload = format!("sim-ping-{}", self.rng.below(1_000_000)).into_bytes();
        trace(format!("{} pings", self.actors[id].name()));
        self.actors[id].pings.push_back(payload.clone());
        self.write_split_for(id, &masked_frame(0x9, true, &payload));
    }

    /// A peer that does not read sends a thousand pings: their pongs pile
    /// up until its output passes the read limit, and the relay stops
    /// reading it (its queue stays bounded) until it reads again.
    fn ping_flood(&mut self) {
        let slow: Vec<usize> = self
            .actors
            .iter()
            .filter(|a| a.slow && a.is_open() && !a.challenger && a.hanging.is_none())
            .map(|a| a.id)
            .collect();
        let Some(id) = self.pick_read(&slow) else {
            return;
        };
        trace(format!("{} floods pings", self.actors[id].name()));
        tally("ping floods");
        let mut bytes = Vec::new();
        for n in 0..1000 {
            let payload = format!("flood-{n:04}-{}", "x".repeat(100)).into_bytes();
            bytes.extend(masked_frame(0x9, true, &payload));
            self.actors[id].pings.push_back(payload);
        }
        self.actors[id].client().push_raw(&bytes);
    }

    fn toggle_slow(&mut self) {
        let candidates: Vec<usize> = self
            .actors
            .iter()
            .filter(|a| a.is_open())
            .map(|a| a.id)
            .collect();
        let Some(id) = self.rng.pick(&candidates) else {
            return;
        };
        let now = self.now();
        let actor = &mut self.actors[id];
        actor.slow = !actor.slow;
        if !actor.slow {
            actor.slow_until = Some(now);
        }
        let reading = !actor.slow;
        trace(format!("{} reads: {reading}", actor.name()));
        actor.client().set_reading(reading);
    }

    fn bad_phone_message(&mut self) {
        let phones = self.open_actors(Kind::Phone);
        let Some(id) = self.pick_read(&phones) else {
            return;
        };
        if self.finish_hanging(id) || !self.actors[id].is_open() {
            return;
        }
        let (bytes, code) = if self.rng.chance(60) {
            (masked_frame(0x1, true, &not_json(&mut self.rng)), 1007)
        } else {
            let big = vec![b' '; self.config.max_message_size + 1 + self.rng.below(2000)];
            (masked_frame(0x1, true, &big), 1009)
        };
        trace(format!("phone#{id} breaks the rules ({code})"));
        self.departed(id, Some(code));
        self.close_expected(id, code, "");
        self.write_split_for(id, &bytes);
    }

    /// A peer begins a message and stops in the middle (cut anywhere, a
    /// frame header included), or one that did so finishes it.
    fn hang(&mut self) {
        let hanging: Vec<usize> = self
            .actors
            .iter()
            .filter(|a| a.hanging.is_some() && a.is_open())
            .map(|a| a.id)
            .collect();
        if let Some(id) = self.rng.pick(&hanging).filter(|_| self.rng.chance(50)) {
            self.finish_hanging(id);
            return;
        }
        let mut candidates = self.open_peers();
        candidates.retain(|&id| self.actors[id].hanging.is_none());
        let Some(id) = self.pick_read(&candidates) else {
            return;
        };
        let size = self.message_size(256);
        let (payload, wire) = match self.actors[id].kind {
            Kind::Phone => {
                let k = self.actors[id].up.len();
                let payload = message(&mut self.rng, "p", id, k, size);
                (payload.clone(), payload)
            }
            Kind::Binary => {
                // To a conn_id nobody has: dropped once complete.
                let frame = message(&mut self.rng, "b", id, 0, size);
                (Vec::new(), envelope("client-nobody-0", &frame))
            }
        };
        let split = self.rng.below(wire.len());
        let mut bytes = masked_frame(0x1, false, &wire[..split]);
        bytes.extend(masked_frame(0x0, true, &wire[split..]));
        let cut = self.rng.range(1, bytes.len() - 1);
        trace(format!(
            "{} stops {cut} bytes into a {}-byte message",
            self.actors[id].name(),
            bytes.len()
        ));
        self.write_split_for(id, &bytes[..cut]);
        let since = self.now();
        self.actors[id].hanging = Some(Hanging {
            since,
            rest: bytes[cut..].to_vec(),
            payload,
            pongs: Vec::new(),
        });
    }

    /// Sends the rest of `id`'s unfinished message, if it has one;
    /// returns whether it had one.
    fn finish_hanging(&mut self, id: usize) -> bool {
        let Some(hanging) = self.actors[id].hanging.take() else {
            return false;
        };
        trace(format!("{} finishes its message", self.actors[id].name()));
        if self.actors[id].kind == Kind::Phone {
            self.expect_up(id, hanging.payload);
        }
        let mut bytes = hanging.rest;
        for pong in &hanging.pongs {
            bytes.extend(masked_frame(0xA, true, pong));
            self.pong_sent(id, pong);
        }
        self.write_split_for(id, &bytes);
        true
    }

    /// A connection that sends part of a request head (maybe nothing) and
    /// no more: 408 at the handshake deadline.
    fn loiter(&mut self) {
        let ip = self.rng.below(IPS.len());
        let mut client = self.relay.connect_tuned(IPS[ip], Some(SOCKET_BUFFER));
        let head = upgrade_head("/v1/client", &phone_headers(SERVER_IDS[0]));
        let cut = self.rng.below(head.len());
        if cut > 0 {
            self.write_split(&mut client, &head.as_bytes()[..cut]);
        }
        let deadline = self.now() + self.config.handshake_timeout;
        trace(format!(
            "a loiterer sends {cut} bytes of a head, deadline {deadline:?}"
        ));
        self.loiterers.push(Loiterer { client, deadline });
    }

    // -----------------------------------------------------------------
    // Time
    // -----------------------------------------------------------------

    fn pick_advance(&mut self) -> Duration {
        let ms = |ms: usize| Duration::from_millis(ms as u64 / TICK * TICK);
        let now = self.now();
        match self.rng.below(100) {
            0..=34 => ms(self.rng.range(10, 3_000)),
            35..=59 => match self
                .model_next_deadline()
                .or_else(|| self.relay.next_deadline())
            {
                Some(at) if at > now => {
                    let exact = at - now;
                    let nudge = Duration::from_millis(TICK);
                    match self.rng.below(3) {
                        0 => exact.saturating_sub(nudge),
                        1 => exact,
                        _ => exact + nudge,
                    }
                }
                _ => ms(self.rng.range(10, 3_000)),
            },
            60..=84 => ms(self.rng.range(5_000, 15_000)),
            _ => ms(self.rng.range(25_000, 70_000)),
        }
    }

    /// Moves relay time by `by`, stopping at every deadline of the relay
    /// on the way so that each deadline's effects are seen at its instant
    /// and responsive peers answer pings as they come.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now() + by;
        trace(format!("advance {by:?} to {target:?}"));
        let mut still = 0;
        while self.now() < target {
            let now = self.now();
            let next = self
                .relay
                .next_deadline()
                .unwrap_or(target)
                .clamp(now, target);
            self.note_paused();
            // The world is still (the last step ended with a sync), and
            // the next observation syncs again: no settling around it.
            let advanced = self.relay.relay_mut().advance(next - now);
            assert_eq!(advanced, Ok(next));
            still = if next == now { still + 1 } else { 0 };
            assert!(still < 100, "time does not move at {now:?}");
            self.model_deadlines();
            self.observe();
        }
    }
}
