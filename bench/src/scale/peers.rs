//! The simulated peers of the scale test: per server-id one binary and
//! three phones, each a thread with a blocking WebSocket through the
//! balancer, reconnecting with the real clients' back-off.
//!
//! * A **binary** dials `/v1/server`, checks that every phone frame it gets
//!   is of its own server-id and in order per `conn_id`, and echoes it
//!   back in an envelope for that `conn_id`.
//! * A **phone** dials `/v1/client`; while traffic is on it keeps one
//!   frame in flight (at most five a second) and checks that each echo is
//!   its own frame, in order. A phone closed 4404 (its binary is not on
//!   that relay yet) redials with the back-off, like the app.
//!
//! Each peer writes what happens to it in its [`PeerLog`]: connections
//! with the relay they went to, how each ended, and the first echo of each
//! connection. The test reads the logs to decide and to measure; the
//! peers never decide anything themselves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{self, Backoff, DialError, Read};

/// Phones per server-id (the three).
pub const PHONES_PER_ID: usize = 3;
/// The phone index of one-shot probes.
pub const PROBE_PHONE: usize = PHONES_PER_ID;
/// Steady traffic: a phone sends at most this often.
const SEND_EVERY: Duration = Duration::from_millis(200);
/// Padding of the steady frames, bytes.
const PAD: usize = 160;
const USER_AGENT: &str = "relay-bench-scale-test";

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The relay's close frame and its code.
    Closed(u16),
    /// Gone without a close frame (the relay died, or the socket broke).
    Broken(String),
    /// The test stopped the peer.
    Stopped,
}

/// One thing that happened to a peer.
#[derive(Clone, Debug)]
pub enum Event {
    /// An upgrade went through, to this relay.
    Connected(String),
    /// A dial that gave no WebSocket.
    Failed(DialError),
    /// The first echo of a connection (phones): frames flow again.
    Exchanging,
    Ended(End),
}

/// What a peer has done so far, written by its thread.
#[derive(Default)]
pub struct PeerLog {
    pub events: Vec<(Instant, Event)>,
    /// The relay of the open connection, if any.
    pub relay: Option<String>,
    /// Phone: echoes received; binary: phone frames received.
    pub frames: u64,
    /// Burst frames received on the current connection.
    pub burst: u64,
    /// Burst frames the last connection received before it ended.
    pub last_burst: u64,
    /// The code of the close that ended the last connection.
    pub last_close: Option<u16>,
    /// Phone: a steady frame waits for its echo.
    pub in_flight: bool,
    /// Misrouted frames, broken order: each one fails the test.
    pub errors: Vec<String>,
}

impl PeerLog {
    fn note(&mut self, event: Event) {
        self.events.push((Instant::now(), event));
    }

    fn error(&mut self, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(what);
        }
    }

    /// Endings of connections after `t`, the test's own stops left out.
    pub fn drops_since(&self, t: Instant) -> Vec<End> {
        self.events
            .iter()
            .filter(|(at, _)| *at >= t)
            .filter_map(|(_, e)| match e {
                Event::Ended(End::Stopped) => None,
                Event::Ended(end) => Some(end.clone()),
                _ => None,
            })
            .collect()
    }

    /// When the first event matching `want` happened after `t`.
    pub fn first_since(&self, t: Instant, want: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(at, e)| *at >= t && want(e))
            .map(|(at, _)| *at)
    }

    /// How many events matching `want` happened after `t`.
    pub fn count_since(&self, t: Instant, want: impl Fn(&Event) -> bool) -> usize {
        self.events
            .iter()
            .filter(|(at, e)| *at >= t && want(e))
            .count()
    }
}

/// A burst of frames a peer is told to send (the rolling-restart check).
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    pub frames: usize,
    pub size: usize,
}

/// One simulated peer: its log and its orders.
#[derive(Default)]
pub struct Peer {
    log: Mutex<PeerLog>,
    /// Stop reading (the socket fills; the relay queues).
    pub paused: AtomicBool,
    burst: Mutex<Option<Burst>>,
}

impl Peer {
    pub fn log(&self) -> MutexGuard<'_, PeerLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn order_burst(&self, burst: Burst) {
        *self.burst.lock().unwrap_or_else(|e| e.into_inner()) = Some(burst);
    }

    fn take_burst(&self) -> Option<Burst> {
        self.burst.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A server-id with its binary and phones.
pub struct ServerId {
    pub sid: String,
    pub binary: Peer,
    pub phones: Vec<Peer>,
}

/// What every peer thread shares.
pub struct Shared {
    pub lb: SocketAddr,
    pub ids: Vec<ServerId>,
    pub stop: AtomicBool,
    /// Phones keep steady traffic going.
    pub sending: AtomicBool,
}

/// Peer numbers (and so source addresses): binaries first, then phones,
/// then probes.
fn binary_number(id: usize) -> usize {
    id
}

fn phone_number(ids: usize, id: usize, phone: usize) -> usize {
    ids + id * PHONES_PER_ID + phone
}

/// The first peer number of the probes.
pub fn first_probe_number(ids: usize) -> usize {
    ids * (1 + PHONES_PER_ID)
}

/// The running peers; dropping it stops and joins every thread.
pub struct Fleet {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn new(lb: SocketAddr, count: usize) -> Fleet {
        let ids = (0..count)
            .map(|i| ServerId {
                sid: format!("scale-{i:03}"),
                binary: Peer::default(),
                phones: (0..PHONES_PER_ID).map(|_| Peer::default()).collect(),
            })
            .collect();
        Fleet {
            shared: Arc::new(Shared {
                lb,
                ids,
                stop: AtomicBool::new(false),
                sending: AtomicBool::new(true),
            }),
            threads: Vec::new(),
        }
    }

    fn spawn(&mut self, name: String, body: impl FnOnce() + Send + 'static) {
        let handle = std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(body)
            .expect("spawn a peer thread");
        self.threads.push(handle);
    }

    pub fn start_binaries(&mut self) {
        for id in 0..self.shared.ids.len() {
            let shared = self.shared.clone();
            self.spawn(format!("binary-{id}"), move || run_binary(&shared, id));
        }
    }

    pub fn start_phones(&mut self) {
        for id in 0..self.shared.ids.len() {
            for phone in 0..PHONES_PER_ID {
                let shared = self.shared.clone();
                self.spawn(format!("phone-{id}-{phone}"), move || {
                    run_phone(&shared, id, phone)
                });
            }
        }
    }

    /// Stops every peer (each closes with 1000) and joins the threads.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `wait`, waking early when the test stops.
    fn sleep(&self, wait: Duration) {
        let end = Instant::now() + wait;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Every peer of the fleet, binaries and phones.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.ids
            .iter()
            .flat_map(|s| std::iter::once(&s.binary).chain(&s.phones))
    }
}

/// A binary: dial, serve, and on any ending redial after the back-off.
fn run_binary(shared: &Shared, id: usize) {
    let me = &shared.ids[id];
    let headers = [
        ("X-Pyrycode-Server", me.sid.clone()),
        ("X-Pyrycode-Version", "0.0.0-scale-test".to_string()),
        ("User-Agent", USER_AGENT.to_string()),
    ];
    let source = client::source(binary_number(id));
    let mut backoff = Backoff::new(id as u64 + 1);
    while !shared.stopped() {
        match client::dial(shared.lb, source, "/v1/server", &headers) {
            Ok(open) => {
                backoff.reset();
                {
                    let mut log = me.binary.log();
                    log.relay = Some(open.relay.clone());
                    log.burst = 0;
                    log.note(Event::Connected(open.relay));
                }
                let end = serve_binary(shared, me, open.ws);
                let mut log = me.binary.log();
                log.relay = None;
                log.last_burst = std::mem::take(&mut log.burst);
                if let End::Closed(code) = end {
                    log.last_close = Some(code);
                }
                log.note(Event::Ended(end));
            }
            Err(e) => me.binary.log().note(Event::Failed(e)),
        }
        shared.sleep(backoff.next_wait());
    }
}

/// What a binary knows of its phones on one connection.
#[derive(Default)]
struct BinarySession {
    /// The latest conn_id of each phone index.
    latest: HashMap<u64, String>,
    /// The last steady seq per conn_id.
    seq: HashMap<String, u64>,
    /// Burst frames per conn_id.
    burst: HashMap<String, u64>,
}

fn serve_binary(
    shared: &Shared,
    me: &ServerId,
    mut ws: tungstenite::WebSocket<std::net::TcpStream>,
) -> End {
    let mut session = BinarySession::default();
    loop {
        if shared.stopped() {
            client::close(ws);
            return End::Stopped;
        }
        if let Some(burst) = me.binary.take_burst() {
            for conn_id in session.latest_phones() {
                for k in 0..burst.frames {
                    let frame = json!({"sid": me.sid, "burst": k, "pad": "b".repeat(burst.size)});
                    let envelope = json!({"conn_id": conn_id, "frame": frame}).to_string();
                    if !client::send(&mut ws, envelope) {
                        return End::Broken("write failed".into());
                    }
                }
            }
        }
        if me.binary.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match client::read(&mut ws) {
            Read::Text(text) => {
                if let Some(echo) = session.on_message(me, &text) {
                    if !client::send(&mut ws, echo) {
                        return End::Broken("write failed".into());
                    }
                }
            }
            Read::Closed(code) => return End::Closed(code),
            Read::Broken(why) => return End::Broken(why),
            Read::Idle => {}
        }
    }
}

impl BinarySession {
    /// The conn_ids of the three phones (not probes) last seen.
    fn latest_phones(&self) -> Vec<String> {
        (0..PHONES_PER_ID as u64)
            .filter_map(|ph| self.latest.get(&ph).cloned())
            .collect()
    }

    /// Checks one envelope from the relay; the echo to send, if any.
    fn on_message(&mut self, me: &ServerId, text: &str) -> Option<String> {
        let mut log = me.binary.log();
        let Ok(envelope) = serde_json::from_str::<Value>(text) else {
            log.error(format!("binary {}: not JSON from the relay", me.sid));
            return None;
        };
        let conn_id = envelope["conn_id"].as_str().unwrap_or_default().to_string();
        let frame = &envelope["frame"];
        if frame.is_null() {
            // A close notice {"conn_id","close_code"}: nothing to check.
            return None;
        }
        if frame["sid"] != me.sid || !conn_id.starts_with(&format!("client-{}-", me.sid)) {
            log.error(format!(
                "binary {} got a frame of {} (conn_id {conn_id})",
                me.sid, frame["sid"]
            ));
            return None;
        }
        if let Some(k) = frame["burst"].as_u64() {
            let seen = self.burst.entry(conn_id.clone()).or_default();
            if *seen != k {
                log.error(format!("binary {}: burst frame {k} after {seen}", me.sid));
            }
            *seen = k + 1;
            log.burst += 1;
            return None;
        }
        let (Some(ph), Some(seq)) = (frame["ph"].as_u64(), frame["seq"].as_u64()) else {
            log.error(format!("binary {}: a frame without ph/seq", me.sid));
            return None;
        };
        if let Some(last) = self.seq.insert(conn_id.clone(), seq) {
            if seq != last + 1 {
                log.error(format!(
                    "binary {}: phone {ph} frame {seq} after {last} on one connection",
                    me.sid
                ));
            }
        }
        self.latest.insert(ph, conn_id.clone());
        log.frames += 1;
        Some(json!({"conn_id": conn_id, "frame": frame}).to_string())
    }
}

/// A phone: dial, exchange, and on any ending redial after the back-off.
fn run_phone(shared: &Shared, id: usize, phone: usize) {
    let me = &shared.ids[id];
    let peer = &me.phones[phone];
    let source = client::source(phone_number(shared.ids.len(), id, phone));
    let mut backoff = Backoff::new(((id as u64) << 8) + phone as u64 + 1_000);
    let mut seq = 0u64;
    while !shared.stopped() {
        match client::dial(shared.lb, source, "/v1/client", &phone_headers(me, phone)) {
            Ok(open) => {
                {
                    let mut log = peer.log();
                    log.relay = Some(open.relay.clone());
                    log.burst = 0;
                    log.in_flight = false;
                    log.note(Event::Connected(open.relay));
                }
                let end = serve_phone(shared, me, phone, open.ws, &mut seq, &mut backoff);
                let mut log = peer.log();
                log.relay = None;
                log.last_burst = std::mem::take(&mut log.burst);
                log.in_flight = false;
                if let End::Closed(code) = end {
                    log.last_close = Some(code);
                }
                log.note(Event::Ended(end));
            }
            Err(e) => peer.log().note(Event::Failed(e)),
        }
        shared.sleep(backoff.next_wait());
    }
}

fn phone_headers(me: &ServerId, phone: usize) -> [(&'static str, String); 4] {
    [
        ("X-Pyrycode-Server", me.sid.clone()),
        ("X-Pyrycode-Token", "scale-test-token".to_string()),
        ("User-Agent", USER_AGENT.to_string()),
        ("X-Pyrycode-Device-Name", format!("phone-{phone}")),
    ]
}

fn steady_frame(sid: &str, phone: usize, seq: u64) -> String {
    json!({"sid": sid, "ph": phone, "seq": seq, "pad": "p".repeat(PAD)}).to_string()
}

/// One phone connection: steady frames out, echoes and bursts in.
fn serve_phone(
    shared: &Shared,
    me: &ServerId,
    phone: usize,
    mut ws: tungstenite::WebSocket<std::net::TcpStream>,
    seq: &mut u64,
    backoff: &mut Backoff,
) -> End {
    let peer = &me.phones[phone];
    let mut session = PhoneSession {
        me,
        phone,
        awaiting: None,
        last_send: Instant::now() - SEND_EVERY,
        exchanged: false,
        burst_next: 0,
    };
    loop {
        if shared.stopped() {
            client::close(ws);
            return End::Stopped;
        }
        if let Some(burst) = peer.take_burst() {
            if !session.send_burst(&mut ws, burst) {
                return End::Broken("write failed".into());
            }
        }
        if peer.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if shared.sending.load(Ordering::SeqCst) && !session.send_due(&mut ws, seq) {
            return End::Broken("write failed".into());
        }
        match client::read(&mut ws) {
            Read::Text(text) => session.on_text(&text, backoff),
            Read::Closed(code) => return End::Closed(code),
            Read::Broken(why) => return End::Broken(why),
            Read::Idle => {}
        }
    }
}

/// What a phone keeps about one connection.
struct PhoneSession<'a> {
    me: &'a ServerId,
    phone: usize,
    /// The steady frame waiting for its echo.
    awaiting: Option<u64>,
    last_send: Instant,
    /// An echo came back on this connection.
    exchanged: bool,
    /// The next burst frame expected from the binary.
    burst_next: u64,
}

impl PhoneSession<'_> {
    fn peer(&self) -> &Peer {
        &self.me.phones[self.phone]
    }

    fn send_burst(
        &self,
        ws: &mut tungstenite::WebSocket<std::net::TcpStream>,
        burst: Burst,
    ) -> bool {
        (0..burst.frames).all(|k| {
            let frame = json!({"sid": self.me.sid, "ph": self.phone, "burst": k, "pad": "q".repeat(burst.size)});
            client::send(ws, frame.to_string())
        })
    }

    /// The next steady frame, if none is in flight and it is time; false
    /// when the write failed.
    fn send_due(
        &mut self,
        ws: &mut tungstenite::WebSocket<std::net::TcpStream>,
        seq: &mut u64,
    ) -> bool {
        if self.awaiting.is_some() || self.last_send.elapsed() < SEND_EVERY {
            return true;
        }
        *seq += 1;
        if !client::send(ws, steady_frame(&self.me.sid, self.phone, *seq)) {
            return false;
        }
        self.awaiting = Some(*seq);
        self.last_send = Instant::now();
        self.peer().log().in_flight = true;
        true
    }

    /// Checks a frame from the relay: an echo of our frame in flight, or
    /// the binary's next burst frame; anything else is an error.
    fn on_text(&mut self, text: &str, backoff: &mut Backoff) {
        let (me, phone) = (self.me, self.phone);
        let sid = &me.sid;
        let mut log = me.phones[phone].log();
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return log.error(format!("phone {sid}/{phone}: not JSON"));
        };
        if frame["sid"] != *sid {
            return log.error(format!(
                "phone {sid}/{phone} got a frame of {}",
                frame["sid"]
            ));
        }
        if let Some(k) = frame["burst"].as_u64() {
            if k != self.burst_next {
                log.error(format!(
                    "phone {sid}/{phone}: burst frame {k} after {}",
                    self.burst_next
                ));
            }
            self.burst_next = k + 1;
            log.burst += 1;
            return;
        }
        let echoed = (frame["ph"].as_u64(), frame["seq"].as_u64());
        if echoed != (Some(phone as u64), self.awaiting) {
            return log.error(format!(
                "phone {sid}/{phone}: echo {echoed:?}, awaiting {:?}",
                self.awaiting
            ));
        }
        self.awaiting = None;
        log.in_flight = false;
        log.frames += 1;
        if !self.exchanged {
            self.exchanged = true;
            backoff.reset();
            log.note(Event::Exchanging);
        }
    }
}

/// What a one-shot phone got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Its frame came back, from this relay.
    Echo(String),
    /// The relay closed it with this code.
    Closed(String, u16),
    Failed(String),
}

/// A one-shot phone: dial `lb` for server-id `sid`, send one frame, and
/// wait for its echo (or a close) up to `patience`.
pub fn probe(lb: SocketAddr, number: usize, sid: &str, patience: Duration) -> Probe {
    let me = ServerId {
        sid: sid.to_string(),
        binary: Peer::default(),
        phones: Vec::new(),
    };
    let headers = phone_headers(&me, PROBE_PHONE);
    let mut open = match client::dial(lb, client::source(number), "/v1/client", &headers) {
        Ok(open) => open,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    if !client::send(&mut open.ws, steady_frame(sid, PROBE_PHONE, 1)) {
        return Probe::Failed("write failed".into());
    }
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match client::read(&mut open.ws) {
            Read::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                if frame["sid"] == sid && frame["seq"] == 1 {
                    client::close(open.ws);
                    return Probe::Echo(open.relay);
                }
                return Probe::Failed(format!("unexpected frame {text}"));
            }
            Read::Closed(code) => return Probe::Closed(open.relay, code),
            Read::Broken(why) => return Probe::Failed(why),
            Read::Idle => {}
        }
    }
    Probe::Failed(format!("no echo within {patience:?}"))
}
