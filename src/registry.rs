//! The server-id registry (SPEC §4): who holds each server-id, which phones
//! hang off it, and the grace window after the holder leaves.
//!
//! This is bookkeeping only. Each method changes the state and returns what
//! the caller must now do to sockets (close these phones, probe that
//! holder); the relay loop does the I/O (`relay/slot.rs`). Connections are
//! named by `K`, whatever the caller uses: the relay's connection handles,
//! plain numbers in the tests below.
//!
//! ```text
//!            claim                 holder leaves            timer fires
//!  (none) ─────────▶ Held ───────────────────────▶ Grace ────────────────▶ (none)
//!                     │ ▲   ◀──── reclaim (phones closed 4404) ──┘   phones closed 4404 "binary gone"
//!          2nd claim  │ │ holder answers (challenger 4409)
//!                     ▼ │ or challenger leaves
//!                   Probing ──── probe times out: challenger takes over ───▶ Held
//! ```

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

/// Who holds a server-id right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState<K> {
    /// A binary is connected and serving.
    Held { binary: K },
    /// A second binary claimed the id; the holder is being pinged.
    Probing { binary: K, challenger: K },
    /// The binary left; the id is reserved until the grace timer of this
    /// generation fires.
    Grace,
}

/// One server-id's entry.
#[derive(Debug)]
pub struct Slot<K> {
    pub state: SlotState<K>,
    pub phones: Vec<K>,
    /// Bumped whenever a grace window opens, so an old timer can tell it
    /// is stale.
    pub generation: u64,
    /// The binary's output is over its high-water mark: its phones are not
    /// read until it drains.
    pub backpressured: bool,
    /// When the grace window ends (meaningful in `Grace` only; the relay
    /// notes it, so that an upgrade can move the window).
    pub grace_until: Option<Instant>,
}

/// What a claim of `/v1/server` leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<K> {
    /// Nobody held the id: the claimant holds it now.
    Fresh,
    /// The id was in grace: the claimant holds it; these phones belonged
    /// to the previous binary and must be closed.
    Reclaimed { phones: Vec<K> },
    /// The id is held: ping this holder; the claimant waits.
    Probe { holder: K },
    /// A probe for this id is already running: refuse the claimant.
    Busy,
}

/// What happens to a slot when its binary's connection ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Release<K> {
    /// The slot is in grace; its timer must be armed for this generation.
    Grace { generation: u64 },
    /// A waiting challenger holds the slot now; these phones must be closed.
    HandedOver { challenger: K, phones: Vec<K> },
    /// The connection did not hold the slot (already replaced).
    NotHolder,
}

/// Whether a phone may join a server-id.
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    Joined,
    NoServer,
    Full,
}

/// Every server-id the relay knows, and every live phone's conn_id.
pub struct Registry<K> {
    slots: HashMap<Rc<str>, Slot<K>>,
    phones_by_conn_id: HashMap<Rc<str>, K>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Registry {
            slots: HashMap::new(),
            phones_by_conn_id: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq> Registry<K> {
    /// The slot of `server_id`, if any.
    pub fn slot(&self, server_id: &str) -> Option<&Slot<K>> {
        self.slots.get(server_id)
    }

    /// The shared name of `server_id`, interned so connections and the
    /// registry hold one copy.
    pub fn intern(&self, server_id: &str) -> Rc<str> {
        match self.slots.get_key_value(server_id) {
            Some((name, _)) => name.clone(),
            None => Rc::from(server_id),
        }
    }

    /// A binary at `binary` claims `server_id` (SPEC §4).
    pub fn claim(&mut self, server_id: &Rc<str>, binary: K) -> Claim<K> {
        let Some(slot) = self.slots.get_mut(server_id) else {
            self.slots.insert(
                server_id.clone(),
                Slot {
                    state: SlotState::Held { binary },
                    phones: Vec::new(),
                    generation: 0,
                    backpressured: false,
                    grace_until: None,
                },
            );
            return Claim::Fresh;
        };
        match slot.state {
            SlotState::Grace => {
                slot.state = SlotState::Held { binary };
                slot.generation += 1;
                slot.backpressured = false;
                Claim::Reclaimed {
                    phones: std::mem::take(&mut slot.phones),
                }
            }
            SlotState::Held { binary: holder } => {
                slot.state = SlotState::Probing {
                    binary: holder,
                    challenger: binary,
                };
                Claim::Probe { holder }
            }
            SlotState::Probing { .. } => Claim::Busy,
        }
    }

    /// The holder answered the probe: it keeps the slot. Returns the
    /// challenger to refuse.
    pub fn probe_answered(&mut self, server_id: &str, holder: K) -> Option<K> {
        let slot = self.slots.get_mut(server_id)?;
        match slot.state {
            SlotState::Probing { binary, challenger } if binary == holder => {
                slot.state = SlotState::Held { binary };
                Some(challenger)
            }
            _ => None,
        }
    }

    /// The probe timed out: the challenger takes the slot. Returns the
    /// silent holder and its phones, all to be closed.
    pub fn take_over(&mut self, server_id: &str, challenger: K) -> Option<(K, Vec<K>)> {
        let slot = self.slots.get_mut(server_id)?;
        match slot.state {
            SlotState::Probing {
                binary,
                challenger: waiting,
            } if waiting == challenger => {
                slot.state = SlotState::Held { binary: challenger };
                slot.backpressured = false;
                Some((binary, std::mem::take(&mut slot.phones)))
            }
            _ => None,
        }
    }

    /// A waiting challenger's connection ended before the probe did.
    pub fn challenger_left(&mut self, server_id: &str, challenger: K) {
        if let Some(slot) = self.slots.get_mut(server_id) {
            if let SlotState::Probing {
                binary,
                challenger: waiting,
            } = slot.state
            {
                if waiting == challenger {
                    slot.state = SlotState::Held { binary };
                }
            }
        }
    }

    /// The connection of the binary at `binary` ended.
    pub fn release(&mut self, server_id: &str, binary: K) -> Release<K> {
        let Some(slot) = self.slots.get_mut(server_id) else {
            return Release::NotHolder;
        };
        match slot.state {
            SlotState::Held { binary: holder } if holder == binary => {
                slot.state = SlotState::Grace;
                slot.generation += 1;
                slot.backpressured = false;
                Release::Grace {
                    generation: slot.generation,
                }
            }
            SlotState::Probing {
                binary: holder,
                challenger,
            } if holder == binary => {
                slot.state = SlotState::Held { binary: challenger };
                slot.backpressured = false;
                Release::HandedOver {
                    challenger,
                    phones: std::mem::take(&mut slot.phones),
                }
            }
            _ => Release::NotHolder,
        }
    }

    /// The grace timer of `generation` fired. If it still stands, the slot
    /// is freed and its phones are returned to be closed.
    pub fn expire(&mut self, server_id: &str, generation: u64) -> Option<Vec<K>> {
        let slot = self.slots.get(server_id)?;
        if slot.state != SlotState::Grace || slot.generation != generation {
            return None;
        }
        self.slots.remove(server_id).map(|slot| slot.phones)
    }

    /// Adds a phone to `server_id`, within `cap` phones.
    pub fn join(&mut self, server_id: &str, phone: K, cap: usize) -> Join {
        let Some(slot) = self.slots.get_mut(server_id) else {
            return Join::NoServer;
        };
        if slot.phones.len() >= cap {
            return Join::Full;
        }
        slot.phones.push(phone);
        Join::Joined
    }

    /// Records a phone's conn_id for routing.
    pub fn add_conn_id(&mut self, conn_id: Rc<str>, phone: K) {
        self.phones_by_conn_id.insert(conn_id, phone);
    }

    /// Removes a phone from its slot and from the conn_id index.
    pub fn leave(&mut self, server_id: &str, conn_id: &str, phone: K) {
        if let Some(slot) = self.slots.get_mut(server_id) {
            slot.phones.retain(|key| *key != phone);
        }
        self.phones_by_conn_id.remove(conn_id);
    }

    /// The phone that has `conn_id`.
    pub fn phone(&self, conn_id: &str) -> Option<K> {
        self.phones_by_conn_id.get(conn_id).copied()
    }

    /// The binary currently serving `server_id`.
    pub fn binary(&self, server_id: &str) -> Option<K> {
        match self.slots.get(server_id)?.state {
            SlotState::Held { binary } | SlotState::Probing { binary, .. } => Some(binary),
            SlotState::Grace => None,
        }
    }

    /// Whether the phones of `server_id` may be read: not while the
    /// binary's output is over its high-water mark. During grace they are
    /// read (pings answered, departures noticed) though their messages
    /// have nowhere to go.
    pub fn phones_may_send(&self, server_id: &str) -> bool {
        self.slots
            .get(server_id)
            .is_some_and(|slot| !slot.backpressured)
    }

    /// Sets the backpressure flag; returns whether it changed.
    pub fn set_backpressured(&mut self, server_id: &str, on: bool) -> bool {
        match self.slots.get_mut(server_id) {
            Some(slot) if slot.backpressured != on => {
                slot.backpressured = on;
                true
            }
            _ => false,
        }
    }

    /// The phones of `server_id`.
    pub fn phones(&self, server_id: &str) -> &[K] {
        self.slots
            .get(server_id)
            .map_or(&[][..], |slot| &slot.phones[..])
    }

    /// Gives back the room of maps a burst left mostly empty (at most a
    /// quarter full): they keep twice their length.
    pub fn shrink(&mut self) {
        shrink_map(&mut self.slots);
        shrink_map(&mut self.phones_by_conn_id);
    }

    /// Entries the two maps have room for: (server-ids, phones).
    pub fn capacity(&self) -> (usize, usize) {
        (self.slots.capacity(), self.phones_by_conn_id.capacity())
    }
}

fn shrink_map<V>(map: &mut HashMap<Rc<str>, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// The grace window's end, and the hand-over of an upgrade
/// (`relay/snapshot.rs`, `relay/restore.rs`).
impl<K: Copy + Eq> Registry<K> {
    /// Notes when the grace window of `server_id` ends.
    pub fn set_grace_end(&mut self, server_id: &str, until: Instant) {
        if let Some(slot) = self.slots.get_mut(server_id) {
            slot.grace_until = Some(until);
        }
    }

    /// Every slot.
    pub fn slots(&self) -> impl Iterator<Item = (&Rc<str>, &Slot<K>)> {
        self.slots.iter()
    }

    /// Every conn_id the relay routes to, with its phone.
    pub fn conn_ids(&self) -> impl Iterator<Item = (&Rc<str>, K)> {
        self.phones_by_conn_id
            .iter()
            .map(|(conn_id, &phone)| (conn_id, phone))
    }

    /// Puts back a slot as it was, and its phones' conn_ids.
    pub fn restore_slot(&mut self, server_id: Rc<str>, slot: Slot<K>, conn_ids: Vec<(Rc<str>, K)>) {
        self.slots.insert(server_id, slot);
        self.phones_by_conn_id.extend(conn_ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_maps_give_back_their_room() {
        let mut registry = Registry::default();
        let sid: Rc<str> = Rc::from("s");
        registry.claim(&sid, 0);
        for phone in 1..=5000 {
            registry.add_conn_id(Rc::from(format!("c{phone}")), phone);
        }
        for phone in 1..=5000 {
            registry.leave(&sid, &format!("c{phone}"), phone);
        }
        registry.add_conn_id(Rc::from("kept"), 7);
        assert!(registry.capacity().1 >= 5000);
        registry.shrink();
        assert!(registry.capacity().1 < 16);
        assert_eq!(registry.phone("kept"), Some(7));
        assert_eq!(registry.binary("s"), Some(0));
    }

    fn id(name: &str) -> Rc<str> {
        Rc::from(name)
    }

    #[test]
    fn first_claim_wins_and_a_second_probes() {
        let mut registry = Registry::<u32>::default();
        assert_eq!(registry.claim(&id("s"), 1), Claim::Fresh);
        assert_eq!(registry.claim(&id("s"), 2), Claim::Probe { holder: 1 });
        assert_eq!(registry.claim(&id("s"), 3), Claim::Busy);
        assert_eq!(registry.probe_answered("s", 1), Some(2));
        assert_eq!(registry.binary("s"), Some(1));
    }

    #[test]
    fn a_silent_holder_is_taken_over_with_its_phones() {
        let mut registry = Registry::<u32>::default();
        registry.claim(&id("s"), 1);
        assert_eq!(registry.join("s", 10, 16), Join::Joined);
        registry.claim(&id("s"), 2);
        assert_eq!(registry.take_over("s", 2), Some((1, vec![10])));
        assert_eq!(registry.binary("s"), Some(2));
        assert_eq!(registry.release("s", 1), Release::NotHolder);
    }

    #[test]
    fn grace_then_reclaim_hands_back_the_phones_and_stales_the_timer() {
        let mut registry = Registry::<u32>::default();
        registry.claim(&id("s"), 1);
        registry.join("s", 10, 16);
        let Release::Grace { generation } = registry.release("s", 1) else {
            panic!("no grace");
        };
        assert!(registry.phones_may_send("s"));
        assert_eq!(registry.binary("s"), None);
        assert_eq!(registry.join("s", 11, 16), Join::Joined);
        assert_eq!(
            registry.claim(&id("s"), 2),
            Claim::Reclaimed {
                phones: vec![10, 11]
            }
        );
        assert_eq!(registry.expire("s", generation), None);
        assert_eq!(registry.binary("s"), Some(2));
    }

    #[test]
    fn expiry_frees_the_slot() {
        let mut registry = Registry::<u32>::default();
        registry.claim(&id("s"), 1);
        registry.join("s", 10, 16);
        let Release::Grace { generation } = registry.release("s", 1) else {
            panic!("no grace");
        };
        assert_eq!(registry.expire("s", generation), Some(vec![10]));
        assert!(registry.slot("s").is_none());
        assert_eq!(registry.join("s", 11, 16), Join::NoServer);
    }

    #[test]
    fn the_phone_cap_holds() {
        let mut registry = Registry::<u32>::default();
        registry.claim(&id("s"), 1);
        assert_eq!(registry.join("s", 10, 1), Join::Joined);
        assert_eq!(registry.join("s", 11, 1), Join::Full);
        registry.leave("s", "c", 10);
        assert_eq!(registry.join("s", 11, 1), Join::Joined);
    }
}
