//! What each peer does with what the relay sends it, and what it checks:
//! envelopes byte-exact, exactly once, in order; frames to phones in the
//! order their binary sent them; pongs echoing pings; every close with
//! the code and reason the model expects; nothing after a close.

use std::time::Duration;

use pyrycode_relay::fixture::{conn_id_of, Frame};

use super::model::{Actor, Fate, Kind, SlotState, SERVER_IDS};
use super::payload::tag_of;
use super::world::World;
use super::{tally, trace};

/// The conflict probe's ping payload (relay/slot.rs).
const PROBE: &[u8] = b"conflict-probe";

impl World {
    /// Handles every frame every peer has received; returns whether any
    /// arrived (answers may have been queued).
    pub fn handle_all_frames(&mut self) -> bool {
        let mut moved = false;
        for id in 0..self.actors.len() {
            moved |= self.handle_frames(id);
        }
        moved
    }

    fn handle_frames(&mut self, id: usize) -> bool {
        let Some(client) = self.actors[id].client.as_mut() else {
            return false;
        };
        if !client.is_reading() {
            return false;
        }
        let frames = client.take_frames();
        let eof = client.is_eof();
        let mut moved = !frames.is_empty();
        for frame in frames {
            self.handle_frame(id, frame);
        }
        if eof && !self.actors[id].eof_seen {
            self.on_eof(id);
            moved = true;
        }
        moved
    }

    fn handle_frame(&mut self, id: usize, frame: Frame) {
        let actor = &mut self.actors[id];
        if actor.close_seen {
            panic!("{}: {frame:?} after the relay's close", actor.name());
        }
        match frame {
            Frame::Ping(payload) => self.on_ping(id, payload),
            Frame::Pong(payload) => {
                tally("pongs");
                let due = actor.pings.pop_front();
                assert_eq!(
                    due,
                    Some(payload),
                    "{}: a pong that answers no ping",
                    actor.name()
                );
            }
            Frame::Text(bytes) if actor.kind == Kind::Binary => self.on_envelope(id, &bytes),
            Frame::Text(bytes) => self.on_down(id, &bytes),
            Frame::Binary(bytes) => panic!("{}: a binary frame {bytes:?}", actor.name()),
            Frame::Close(code, reason) => self.on_close(id, code, reason),
        }
    }

    fn on_ping(&mut self, id: usize, payload: Vec<u8>) {
        let actor = &mut self.actors[id];
        if actor.mute {
            return;
        }
        // Stuck in the middle of a frame of its own, it answers once it
        // has finished that frame.
        if let Some(hanging) = actor.hanging.as_mut() {
            hanging.pongs.push(payload);
            return;
        }
        actor.client().push_frame(0xA, true, &payload);
        self.pong_sent(id, &payload);
    }

    /// `id` sent a pong with `payload`: if it echoes the conflict probe
    /// of the server-id `id` holds, the holder keeps it and the
    /// challenger is refused 4409.
    pub fn pong_sent(&mut self, id: usize, payload: &[u8]) {
        let actor = &self.actors[id];
        if payload != PROBE || actor.fate != Fate::Open {
            return;
        }
        let sid = actor.sid;
        let Some(slot) = self.slots[sid].as_mut() else {
            return;
        };
        if let SlotState::Probing {
            holder, challenger, ..
        } = slot.state
        {
            if holder == id {
                trace(format!("{} holder answered the probe", SERVER_IDS[sid]));
                slot.state = SlotState::Held(holder);
                self.close_expected(challenger, 4409, "server-id already claimed");
            }
        }
    }

    /// A binary's text message: a phone's message in its envelope, or a
    /// close notice.
    fn on_envelope(&mut self, id: usize, bytes: &[u8]) {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|_| panic!("{}: not JSON: {}", self.actors[id].name(), show(bytes)));
        let conn_id = value["conn_id"].as_str().unwrap_or_default().to_string();
        if value.get("frame").is_none() {
            let code = value["close_code"].as_u64().expect("a close notice's code") as u16;
            return self.on_notice(id, &conn_id, code, bytes);
        }
        let frame = frame_of(bytes, &conn_id).unwrap_or_else(|| {
            panic!(
                "{}: not an envelope: {}",
                self.actors[id].name(),
                show(bytes)
            )
        });
        let (phone, k) = tag_of(frame, "p").unwrap_or_else(|| {
            panic!(
                "{}: a frame no phone sent: {}",
                self.actors[id].name(),
                show(frame)
            )
        });
        self.check_conn_id(id, phone, &conn_id);
        if self.actors[id].noticed.contains(&phone) {
            panic!(
                "{}: a message of phone#{phone} after its close notice",
                self.actors[id].name()
            );
        }
        let expected_k = self.actors[id].up_seen.get(&phone).copied().unwrap_or(0);
        let sent = self.actors[phone].up.get(k);
        if self.actors[phone].holder != Some(id)
            || k != expected_k
            || sent.map(Vec::as_slice) != Some(frame)
        {
            panic!(
                "{}: got message {k} of {} (expected message {expected_k} here): {}",
                self.actors[id].name(),
                self.actors[phone].name(),
                show(frame)
            );
        }
        self.actors[id].up_seen.insert(phone, k + 1);
        tally("phone→binary messages");
    }

    /// The conn_id a phone's message came under: the same for all its
    /// messages, never another phone's, `client-<sid>-<32 hex>`.
    fn check_conn_id(&mut self, binary: usize, phone: usize, conn_id: &str) {
        match self.actors[binary].phones_known.get(conn_id) {
            Some(&known) => assert_eq!(known, phone, "conn_id {conn_id} names two phones"),
            None => {
                let prefix = format!("client-{}-", SERVER_IDS[self.actors[phone].sid]);
                let hex = conn_id.strip_prefix(&prefix).unwrap_or("");
                assert!(
                    hex.len() == 32
                        && hex
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                    "a conn_id of the wrong shape: {conn_id}"
                );
                assert!(
                    self.conn_ids_seen.insert(conn_id.to_string()),
                    "conn_id {conn_id} repeated"
                );
                self.actors[binary]
                    .phones_known
                    .insert(conn_id.to_string(), phone);
                self.actors[phone].conn_id = Some(conn_id.to_string());
            }
        }
    }

    fn on_notice(&mut self, id: usize, conn_id: &str, code: u16, bytes: &[u8]) {
        let binary = &mut self.actors[id];
        let Some(&phone) = binary.phones_known.get(conn_id) else {
            panic!(
                "{}: a close notice for an unknown phone: {}",
                binary.name(),
                show(bytes)
            );
        };
        assert!(
            binary.noticed.insert(phone),
            "{}: a second notice for phone#{phone}",
            binary.name()
        );
        match binary.notices_due.remove(&phone) {
            Some(Some(due)) => assert_eq!(code, due, "{}: notice for phone#{phone}", binary.name()),
            None if binary.notices_allowed.remove(&phone) => assert!(
                matches!(code, 1001 | 1008 | 1011),
                "{}: notice {code} for phone#{phone} ended by the relay",
                binary.name()
            ),
            Some(None) => assert!(
                matches!(code, 1001 | 1008 | 1011),
                "{}: notice {code} for phone#{phone} ended by the relay",
                binary.name()
            ),
            None => {
                let phone = &self.actors[phone];
                panic!(
                    "{}: an unexpected notice {} for {} ({:?}, registered {})",
                    self.actors[id].name(),
                    show(bytes),
                    phone.name(),
                    phone.fate,
                    phone.registered
                )
            }
        }
    }

    /// A phone's text message: the next frame its binary sent it.
    fn on_down(&mut self, id: usize, bytes: &[u8]) {
        let phone = &mut self.actors[id];
        match phone.down.pop_front() {
            Some(due) if due == bytes => tally("binary→phone frames"),
            due => panic!(
                "{}: got {}, expected {}",
                phone.name(),
                show(bytes),
                due.as_deref().map_or("nothing".to_string(), show)
            ),
        }
    }

    /// The relay's close frame: the one the model expects (or one it
    /// excuses), after every frame queued ahead of it; echoed by a peer
    /// that is not stuck.
    fn on_close(&mut self, id: usize, code: Option<u16>, reason: String) {
        let now = self.now();
        let timeout = self.config.message_timeout;
        let actor = &mut self.actors[id];
        actor.close_seen = true;
        tally(close_kind(code, &reason, &actor.fate));
        assert!(
            actor.down.is_empty(),
            "{}: closed {code:?} before {} frames queued ahead of the close",
            actor.name(),
            actor.down.len()
        );
        if !close_expected(actor, code, &reason)
            && !close_excused(actor, code, &reason, now, timeout)
        {
            panic!(
                "{}: closed {code:?} {reason:?}, expected {:?}",
                actor.name(),
                actor.fate
            );
        }
        let relay_started = !matches!(actor.fate, Fate::Echo(_));
        if actor.fate == Fate::Open {
            self.actors[id].fate = Fate::Loose;
            self.departed(id, None);
        }
        let actor = &mut self.actors[id];
        if relay_started && !actor.mute && actor.hanging.is_none() {
            let echo = code.map(u16::to_be_bytes);
            actor
                .client()
                .push_frame(0x8, true, echo.as_ref().map_or(&[][..], |e| &e[..]));
        }
    }

    fn on_eof(&mut self, id: usize) {
        let now = self.now();
        let actor = &mut self.actors[id];
        actor.eof_seen = true;
        let fine = actor.close_seen || matches!(actor.fate, Fate::Gone | Fate::Loose);
        if !fine && !actor.may_end_loosely(now) {
            panic!(
                "{}: the relay dropped it without a close ({:?})",
                actor.name(),
                actor.fate
            );
        }
        if actor.fate == Fate::Open {
            actor.fate = Fate::Loose;
            self.departed(id, None);
        }
        let actor = &mut self.actors[id];
        if !actor.client().has_hung_up() {
            actor.client().close_write();
        }
    }
}

fn is_heartbeat(code: Option<u16>, reason: &str) -> bool {
    code == Some(1011) && reason == "heartbeat timeout"
}

fn is_message_timeout(code: Option<u16>, reason: &str) -> bool {
    code == Some(1008) && reason == "message timeout"
}

/// Whether the close is the one the model decided on.
fn close_expected(actor: &Actor, code: Option<u16>, reason: &str) -> bool {
    match &actor.fate {
        Fate::Closed(c, r) => {
            let same = |(c, r): (&u16, &String)| (Some(*c), r.as_str()) == (code, reason);
            same((c, r)) || actor.fate_or.iter().any(|(c, r)| same((c, r)))
        }
        Fate::Echo(c) => *c == code && reason.is_empty(),
        Fate::Loose => is_heartbeat(code, reason) || is_message_timeout(code, reason),
        Fate::Open | Fate::Gone => false,
    }
}

/// Whether the relay may close this peer so on its own: the heartbeat
/// of a peer that did not answer, the timeout of a message it left
/// unfinished.
fn close_excused(
    actor: &Actor,
    code: Option<u16>,
    reason: &str,
    now: Duration,
    timeout: Duration,
) -> bool {
    (is_heartbeat(code, reason) && actor.may_end_loosely(now))
        || (is_message_timeout(code, reason) && actor.may_time_out(now, timeout))
}

/// The tally a close counts under.
fn close_kind(code: Option<u16>, reason: &str, fate: &Fate) -> &'static str {
    match code {
        Some(4404) => "closes 4404",
        Some(4409) => "closes 4409",
        Some(4429) => "closes 4429",
        Some(1011) if reason == "phone backlog full" => "closes 1011 backlog",
        Some(1011) => "closes 1011 heartbeat",
        Some(1007 | 1009) => "closes 1007/1009",
        Some(1008) => "closes 1008",
        Some(1001) if reason == "shutting down" => "closes 1001 shutdown",
        _ if matches!(fate, Fate::Echo(_)) => "close echoes",
        _ => "closes by directive",
    }
}

/// The frame inside a phone→binary envelope, if `bytes` is exactly
/// `{"conn_id":"<conn_id>","frame":<frame>}`.
fn frame_of<'a>(bytes: &'a [u8], conn_id: &str) -> Option<&'a [u8]> {
    let prefix = format!("{{\"conn_id\":\"{conn_id}\",\"frame\":");
    let frame = bytes.strip_prefix(prefix.as_bytes())?.strip_suffix(b"}")?;
    conn_id_of(bytes, frame).map(|_| frame)
}

/// Bytes for a failure message: the start, as text.
fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    format!("{text:?} ({} bytes)", bytes.len())
}
