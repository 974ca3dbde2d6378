//! The load generator: simulated binaries and phones on one `mio` loop in
//! one thread (pinned to its own CPU by the caller).
//!
//! * A **binary** dials `/v1/server` with the real headers, answers pings,
//!   and answers each phone message `{"conn_id":…,"frame":…}` with an
//!   envelope for the same `conn_id` carrying the same frame (like a daemon
//!   answering); in the fanout scenario it pushes frames to its phones.
//! * A **phone** dials `/v1/client`, sends `noise_msg` frames and times
//!   each answer: per-phone order is preserved end to end, so a FIFO of
//!   send times per phone gives every message's round trip.
//!
//! Every frame a simulated peer sends is masked. Reads land in one shared
//! scratch buffer; output is queued per connection and flushed once per
//! loop turn, so a busy connection sends many frames per `write`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use pyrycode_relay::buffer::BufferPool;
use pyrycode_relay::ws::{self as codec, write_client_frame, Event, Reader};

use crate::sys::{self, TimerFd};
use crate::tls;
use crate::transport::Transport;
use crate::wsproto::{self as ws, Rng};

const TIMER: Token = Token(usize::MAX - 1);
const SCRATCH: usize = 256 * 1024;
/// Connection attempts in progress at once while a population is built,
/// kept under the relay's listen backlog (128: mio's `TcpListener::bind`)
/// so that no SYN is dropped and no connect waits for a retransmit.
const MAX_PENDING_CONNECTS: usize = 100;

/// What the generator does with open connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Connections only hold (pings answered).
    Idle,
    /// Phones send, binaries (or the echo server) answer.
    Echo,
    /// Binaries push to their phones; phones only receive.
    Fanout,
    /// Phones connect, exchange one message, close; over and over.
    Churn,
}

/// Where a phone sends its first bytes.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    /// Whether the target is the relay (binaries needed, envelopes) or a
    /// plain echo endpoint (through HAProxy).
    pub relay: bool,
    /// TLS client of every connection (`None`: plain TCP).
    pub tls: Option<tls::Client>,
}

#[derive(Debug)]
enum State {
    Connecting,
    Upgrading,
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Close frames exchanged; waiting for the peer's FIN (so that the
    /// server side holds TIME_WAIT, not our ports).
    AwaitEof,
}

#[derive(Debug)]
enum Role {
    Binary {
        index: usize,
    },
    Phone {
        /// Slab key of the binary of this phone's server-id (relay only).
        binary: Option<usize>,
        index: usize,
        /// Send times of the messages in flight, oldest first.
        fifo: VecDeque<Instant>,
        /// Learnt by the binary from the phone's hello (fanout only).
        conn_id: Option<Box<str>>,
        churn: bool,
    },
}

struct Conn {
    stream: Transport,
    role: Role,
    state: State,
    key: Box<str>,
    started: Instant,
    request: Vec<u8>,
    /// The response head while it is partial (upgrading only).
    head: Vec<u8>,
    /// The target's frames: the library's WebSocket reader, client side.
    reader: Reader,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
}

/// Error counts by kind, with the first few messages kept.
#[derive(Default, Debug, Clone)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < 8 && !self.samples.contains(&what) {
            self.samples.push(what);
        }
    }
}

struct OpenLoop {
    rate: f64,
    start: Instant,
    sent: u64,
    rr: usize,
    /// The first this many phones take turns sending.
    phones: usize,
}

/// Churn paced to a rate of new lifecycles.
struct ChurnPace {
    rate: f64,
    start: Instant,
    started: u64,
}

/// Figures collected since the last [`Gen::reset_stats`].
pub struct Stats {
    /// Round trips (echo), deliveries (fanout), or complete cycles (churn).
    pub completed: u64,
    /// Messages sent by phones (echo) or pushes by binaries (fanout).
    pub sent: u64,
    /// Latency of each completed message, nanoseconds.
    pub latency: Histogram<u64>,
    /// Connect start to `101` received, nanoseconds.
    pub upgrade: Histogram<u64>,
    pub upgrades: u64,
    pub close_notices: u64,
    /// Churning phones whose close handshake completed (also in `completed`).
    pub churn_cycles: u64,
}

impl Stats {
    pub fn new() -> Stats {
        let hist = || Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds");
        Stats {
            completed: 0,
            sent: 0,
            latency: hist(),
            upgrade: hist(),
            upgrades: 0,
            close_notices: 0,
            churn_cycles: 0,
        }
    }
}

/// The generator: every simulated peer on one poll loop.
pub struct Gen {
    poll: Poll,
    events: Events,
    conns: slab::Slab<Conn>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    /// Ciphertext of one read (TLS only; empty otherwise).
    tls_scratch: Vec<u8>,
    /// Buffers the readers borrow for partial frames.
    buffers: BufferPool,
    rng: Rng,
    target: Target,
    mode: Mode,
    sources: Vec<Ipv4Addr>,
    next_source: usize,
    /// The phone's message: `{"v":2,"type":"noise_msg","data":"…"}`.
    payload: Vec<u8>,
    run_tag: String,
    timer: TimerFd,
    timer_armed: bool,
    /// Slab keys of binaries by index.
    binaries: Vec<usize>,
    /// Slab keys of phones by index (usize::MAX while not open).
    phones: Vec<usize>,
    /// Phones waiting to be dialled: (index, binary index).
    connect_queue: VecDeque<(usize, Option<usize>)>,
    pending_connects: usize,
    pub open_binaries: usize,
    pub open_phones: usize,
    /// Phones whose conn_id the binary has learnt (fanout).
    pub known_phones: usize,
    /// Messages each phone keeps in flight while `sending` (closed loop).
    in_flight: usize,
    sending: bool,
    open_loop: Option<OpenLoop>,
    churn_concurrency: usize,
    churn_pace: Option<ChurnPace>,
    churn_active: usize,
    next_phone_index: usize,
    pub stats: Stats,
    pub errors: Errors,
}

fn server_id(tag: &str, index: usize) -> String {
    format!("bench-{tag}-{index}")
}

/// A `noise_msg` frame of exactly `size` bytes (at least 40): base64 data,
/// padded with JSON whitespace to the exact size.
pub fn noise_payload(size: usize, rng: &mut Rng) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"v":2,"type":"noise_msg","data":""#;
    const TAIL: &[u8] = br#""}"#;
    let room = size.saturating_sub(HEAD.len() + TAIL.len());
    let raw_len = room / 4 * 3;
    let raw: Vec<u8> = (0..raw_len).map(|_| rng.next_u64() as u8).collect();
    let mut out = HEAD.to_vec();
    out.extend_from_slice(data_encoding::BASE64.encode(&raw).as_bytes());
    out.extend_from_slice(TAIL);
    while out.len() < size {
        out.push(b' ');
    }
    out
}

impl Gen {
    pub fn new(
        target: Target,
        mode: Mode,
        size: usize,
        sources: Vec<Ipv4Addr>,
    ) -> std::io::Result<Gen> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.raw()), TIMER, Interest::READABLE)?;
        let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let payload = noise_payload(size, &mut rng);
        let run_tag = format!("{:08x}", rng.next_u64() as u32);
        let tls_scratch = match target.tls {
            Some(_) => vec![0; SCRATCH],
            None => Vec::new(),
        };
        Ok(Gen {
            poll,
            events: Events::with_capacity(1024),
            conns: slab::Slab::new(),
            dirty: Vec::new(),
            scratch: vec![0; SCRATCH],
            tls_scratch,
            buffers: BufferPool::default(),
            rng,
            target,
            mode,
            sources,
            next_source: 0,
            payload,
            run_tag,
            timer,
            timer_armed: false,
            binaries: Vec::new(),
            phones: Vec::new(),
            connect_queue: VecDeque::new(),
            pending_connects: 0,
            open_binaries: 0,
            open_phones: 0,
            known_phones: 0,
            in_flight: 0,
            sending: false,
            open_loop: None,
            churn_concurrency: 0,
            churn_pace: None,
            churn_active: 0,
            next_phone_index: 0,
            stats: Stats::new(),
            errors: Errors::default(),
        })
    }

    /// The exact phone message used.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    pub fn reset_stats(&mut self) {
        self.stats = Stats::new();
    }

    fn dial(&mut self, role: Role) -> Option<usize> {
        let source = self.sources[self.next_source % self.sources.len()];
        self.next_source += 1;
        let mut stream = match sys::connect_from(source, self.target.addr) {
            Ok(s) => s,
            Err(err) => {
                self.errors.add(format!("connect from {source}: {err}"));
                return None;
            }
        };
        let ws_key = ws::new_key(&mut self.rng);
        let request = match &role {
            Role::Binary { index } => {
                let sid = server_id(&self.run_tag, *index);
                ws::upgrade_request(
                    "/v1/server",
                    &self.target.host,
                    &ws_key,
                    &[
                        ("X-Pyrycode-Server", &sid),
                        ("X-Pyrycode-Version", "relay-bench/0.1"),
                        ("User-Agent", "pyry/relay-bench"),
                    ],
                )
            }
            Role::Phone { binary, index, .. } => {
                let sid = match binary {
                    Some(b) => match &self.conns[*b].role {
                        Role::Binary { index } => server_id(&self.run_tag, *index),
                        Role::Phone { .. } => unreachable!("a phone's binary is a binary"),
                    },
                    None => "echo".to_string(),
                };
                let token = format!("bench-token-{index}");
                ws::upgrade_request(
                    "/v1/client",
                    &self.target.host,
                    &ws_key,
                    &[
                        ("X-Pyrycode-Server", &sid),
                        ("X-Pyrycode-Token", &token),
                        ("User-Agent", "relay-bench-phone/0.1"),
                    ],
                )
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.errors.add(format!("register: {err}"));
            return None;
        }
        let stream = match Transport::new(stream, self.target.tls.as_ref()) {
            Ok(s) => s,
            Err(err) => {
                self.errors.add(format!("TLS client: {err}"));
                return None;
            }
        };
        entry.insert(Conn {
            stream,
            role,
            state: State::Connecting,
            key: ws_key.into_boxed_str(),
            started: Instant::now(),
            request,
            head: Vec::new(),
            reader: Reader::new(codec::Role::Client),
            out: Vec::new(),
            out_pos: 0,
            dirty: false,
        });
        self.pending_connects += 1;
        Some(key)
    }

    /// Dials `count` binaries (relay only).
    pub fn add_binaries(&mut self, count: usize) {
        for _ in 0..count {
            let index = self.binaries.len();
            let key = self.dial(Role::Binary { index }).unwrap_or(usize::MAX);
            self.binaries.push(key);
        }
    }

    /// Queues `count` phones, spread round-robin over the binaries.
    pub fn add_phones(&mut self, count: usize) {
        for _ in 0..count {
            let index = self.phones.len();
            let binary = if self.target.relay {
                Some(index % self.binaries.len().max(1))
            } else {
                None
            };
            self.phones.push(usize::MAX);
            self.connect_queue.push_back((index, binary));
        }
    }

    /// Dials `binaries` binaries, then `phones` phones, running the loop
    /// until each batch has connected (or an error came) for at most
    /// `within` in all; fails unless every one opened, naming what did.
    pub fn connect_all(
        &mut self,
        binaries: usize,
        phones: usize,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        self.add_binaries(binaries);
        self.run_until(deadline, |g| !g.connecting() || g.errors.count > 0);
        self.add_phones(phones);
        self.run_until(deadline, |g| !g.connecting() || g.errors.count > 0);
        if self.open_binaries != binaries || self.open_phones != phones {
            return Err(format!(
                "only {} of {binaries} binaries and {} of {phones} phones connected: {}",
                self.open_binaries,
                self.open_phones,
                self.errors.samples.join("; ")
            ));
        }
        Ok(())
    }

    fn start_queued_connects(&mut self) {
        while self.pending_connects < MAX_PENDING_CONNECTS {
            let Some((index, binary)) = self.connect_queue.pop_front() else {
                return;
            };
            let binary = match binary {
                Some(b) => match self.binaries.get(b) {
                    Some(&key) if self.conns.contains(key) => Some(key),
                    _ => {
                        self.errors.add("phone's binary is not connected".into());
                        continue;
                    }
                },
                None => None,
            };
            if let Some(key) = self.dial(Role::Phone {
                binary,
                index,
                fifo: VecDeque::new(),
                conn_id: None,
                churn: false,
            }) {
                self.phones[index] = key;
            }
        }
    }

    /// Closed loop: every open phone keeps `k` messages in flight.
    pub fn start_closed_loop(&mut self, k: usize) {
        self.in_flight = k;
        self.sending = true;
        let now = Instant::now();
        for i in 0..self.phones.len() {
            let key = self.phones[i];
            if self.is_open(key) {
                for _ in 0..k {
                    match self.mode {
                        Mode::Fanout => self.push_to_phone(key, now),
                        _ => self.phone_send(key, now),
                    }
                }
            }
        }
        self.flush_dirty();
    }

    /// Open loop: phones send `rate` messages per second in total, each
    /// timed from its scheduled send time (no coordinated omission).
    pub fn start_open_loop(&mut self, rate: f64) {
        self.start_open_loop_on(rate, self.phones.len());
    }

    /// Open loop over the first `phones` phones only (the others idle).
    pub fn start_open_loop_on(&mut self, rate: f64, phones: usize) {
        self.sending = true;
        self.in_flight = 0;
        self.open_loop = Some(OpenLoop {
            rate,
            start: Instant::now(),
            sent: 0,
            rr: 0,
            phones: phones.min(self.phones.len()),
        });
        sys::tighten_timer_slack();
    }

    /// Churn: keep `concurrency` phone lifecycles going.
    pub fn start_churn(&mut self, concurrency: usize) {
        self.churn_concurrency = concurrency;
        self.sending = true;
    }

    /// Churn, starting at most `rate` lifecycles a second.
    pub fn start_paced_churn(&mut self, concurrency: usize, rate: f64) {
        self.churn_pace = Some(ChurnPace {
            rate,
            start: Instant::now(),
            started: 0,
        });
        self.start_churn(concurrency);
    }

    /// Stops sending new messages and starting new lifecycles.
    pub fn stop_sending(&mut self) {
        self.sending = false;
        self.open_loop = None;
        self.churn_concurrency = 0;
        self.churn_pace = None;
    }

    /// Whether the pace allows one more churn lifecycle now.
    fn churn_due(&mut self) -> bool {
        let Some(pace) = self.churn_pace.as_mut() else {
            return true;
        };
        let elapsed = pace.start.elapsed().as_secs_f64();
        if (pace.started as f64) < elapsed * pace.rate + 1.0 {
            pace.started += 1;
            true
        } else {
            false
        }
    }

    /// Fanout: every phone says hello so that its binary learns its conn_id.
    pub fn send_hellos(&mut self) {
        for i in 0..self.phones.len() {
            let key = self.phones[i];
            if !self.is_open(key) {
                continue;
            }
            let hello = format!(r#"{{"v":2,"type":"hello","phone":{i}}}"#);
            let mask = self.rng.mask();
            let conn = &mut self.conns[key];
            write_client_frame(&mut conn.out, ws::OP_TEXT, true, &[hello.as_bytes()], mask);
            self.mark_dirty(key);
        }
        self.flush_dirty();
    }

    fn is_open(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| matches!(c.state, State::Open))
    }

    /// Churning phones whose lifecycle has not ended.
    pub fn churning(&self) -> usize {
        self.churn_active
    }

    /// Setup still running: connects queued or in progress.
    pub fn connecting(&self) -> bool {
        self.pending_connects > 0 || !self.connect_queue.is_empty()
    }

    /// Turns the loop until `deadline` or until `done` says so.
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&Gen) -> bool) {
        loop {
            let now = Instant::now();
            if now >= deadline || done(self) {
                return;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            self.turn(wait);
        }
    }

    /// One turn: poll, handle events, send what is due, flush.
    pub fn turn(&mut self, wait: Duration) {
        self.start_queued_connects();
        self.spawn_churners();
        self.send_due();
        self.flush_dirty();
        if let Err(err) = self.poll.poll(&mut self.events, Some(wait)) {
            if err.kind() != ErrorKind::Interrupted {
                self.errors.add(format!("poll: {err}"));
            }
            return;
        }
        let ready: Vec<(Token, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (token, readable, writable) in ready {
            if token == TIMER {
                self.timer.drain();
                self.timer_armed = false;
                continue;
            }
            let key = token.0;
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if matches!(conn.state, State::Connecting) {
                self.on_connect_ready(key);
                continue;
            }
            if writable {
                self.flush(key);
            }
            if readable && self.conns.contains(key) {
                self.read(key);
            }
        }
        self.send_due();
        self.flush_dirty();
    }

    fn on_connect_ready(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        match conn.stream.tcp().take_error() {
            Ok(None) => {}
            Ok(Some(err)) | Err(err) => {
                let what = format!("connect: {err}");
                return self.fail(key, what);
            }
        }
        match conn.stream.tcp().peer_addr() {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::NotConnected => return,
            Err(err) => {
                let what = format!("connect: {err}");
                return self.fail(key, what);
            }
        }
        conn.state = State::Upgrading;
        let request = std::mem::take(&mut conn.request);
        conn.out.extend_from_slice(&request);
        self.mark_dirty(key);
        self.flush(key);
        // Bytes may already be there (edge-triggered: read now).
        if self.conns.contains(key) {
            self.read(key);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for key in std::mem::take(&mut self.dirty) {
                self.flush(key);
            }
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        if matches!(conn.state, State::Connecting) {
            return;
        }
        if let Err(err) = conn.stream.flush() {
            let what = format!("write: {err}");
            return self.fail(key, what);
        }
        while conn.out_pos < conn.out.len() {
            match conn.stream.write(&conn.out[conn.out_pos..]) {
                Ok(0) => return self.fail(key, "write returned 0".into()),
                Ok(n) => conn.out_pos += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    let what = format!("write: {err}");
                    return self.fail(key, what);
                }
            }
        }
        if conn.out_pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
            if conn.out.capacity() > 64 * 1024 {
                conn.out = Vec::new();
            }
        } else if conn.out_pos > 64 * 1024 {
            conn.out.drain(..conn.out_pos);
            conn.out_pos = 0;
        }
    }

    fn read(&mut self, key: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut cipher = std::mem::take(&mut self.tls_scratch);
        while let Some(conn) = self.conns.get_mut(key) {
            match conn.stream.read(&mut scratch, &mut cipher) {
                Ok(0) => {
                    self.on_eof(key);
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    if matches!(conn.state, State::Upgrading) {
                        conn.head.extend_from_slice(&scratch[..n]);
                        self.read_head(key, now);
                    } else {
                        self.decode(key, &mut scratch[..n], now);
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    let what = format!("read: {err}");
                    self.fail(key, what);
                    break;
                }
            }
        }
        self.scratch = scratch;
        self.tls_scratch = cipher;
    }

    /// The response to the upgrade request, once its head is complete:
    /// checked, and the bytes after it handed to the WebSocket reader.
    fn read_head(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let Some(end) = ws::head_end(&conn.head) else {
            return;
        };
        if let Err(what) = ws::check_upgrade_response(&conn.head[..end], &conn.key) {
            return self.fail(key, what);
        }
        let mut rest = std::mem::take(&mut conn.head);
        rest.drain(..end);
        self.on_upgraded(key, now);
        if self.conns.contains(key) && !rest.is_empty() {
            self.decode(key, &mut rest, now);
        }
    }

    /// Runs `input` through the connection's WebSocket reader and acts on
    /// each event. Frames are decoded in place; the reader keeps only a
    /// partial frame (or a fragmented message) between reads.
    fn decode(&mut self, key: usize, input: &mut [u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut reader = std::mem::replace(&mut conn.reader, Reader::new(codec::Role::Client));
        let mut buffers = std::mem::take(&mut self.buffers);
        let mut batch = reader.batch(input, usize::MAX);
        while self.conns.contains(key) {
            let Some(event) = batch.next(&mut buffers) else {
                break;
            };
            match event {
                Event::Message { text, payload } => self.on_message(key, text, payload, now),
                Event::Ping(payload) => self.on_ping(key, payload),
                Event::Pong(_) => {}
                Event::Close { code, reason } => self.on_close(key, code, reason),
                Event::Error(error) => {
                    let what = format!("bad frame from target: {}", error.describe());
                    self.fail(key, what);
                }
            }
        }
        batch.finish(&mut buffers);
        self.buffers = buffers;
        match self.conns.get_mut(key) {
            Some(conn) => conn.reader = reader,
            None => reader.release(&mut self.buffers),
        }
    }

    fn on_upgraded(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        conn.state = State::Open;
        conn.key = Box::from("");
        if let (Some(client), Some(session)) = (&self.target.tls, conn.stream.tls()) {
            client.record(session);
        }
        self.pending_connects -= 1;
        let started = conn.started;
        let is_phone = matches!(conn.role, Role::Phone { .. });
        let is_churn = matches!(conn.role, Role::Phone { churn: true, .. });
        self.stats.upgrades += 1;
        let _ = self
            .stats
            .upgrade
            .record(now.duration_since(started).as_nanos().max(1) as u64);
        if is_phone {
            self.open_phones += 1;
        } else {
            self.open_binaries += 1;
        }
        if is_churn {
            self.phone_send(key, now);
        }
    }

    fn on_message(&mut self, key: usize, text: bool, payload: &[u8], now: Instant) {
        if !matches!(self.conns[key].state, State::Open) {
            return;
        }
        if matches!(self.conns[key].role, Role::Binary { .. }) {
            self.binary_message(key, payload, now);
        } else {
            self.phone_message(key, text, payload, now);
        }
    }

    fn on_ping(&mut self, key: usize, payload: &[u8]) {
        let mask = self.rng.mask();
        let conn = &mut self.conns[key];
        write_client_frame(&mut conn.out, ws::OP_PONG, true, &[payload], mask);
        self.mark_dirty(key);
    }

    /// The target's close: the answer to ours (a churn cycle ends), or its
    /// own, which the benchmark counts as an error and echoes.
    fn on_close(&mut self, key: usize, code: Option<u16>, reason: &str) {
        let conn = &mut self.conns[key];
        match conn.state {
            State::Closing => {
                conn.state = State::AwaitEof;
                if let Role::Phone { churn: true, .. } = conn.role {
                    self.stats.completed += 1;
                    self.stats.churn_cycles += 1;
                }
            }
            State::Open => {
                let what = match conn.role {
                    Role::Binary { .. } => "binary",
                    Role::Phone { .. } => "phone",
                };
                let mask = self.rng.mask();
                let echoed = code.map(u16::to_be_bytes);
                let payload: &[u8] = echoed.as_ref().map_or(&[], |bytes| &bytes[..]);
                write_client_frame(&mut conn.out, ws::OP_CLOSE, true, &[payload], mask);
                conn.state = State::AwaitEof;
                self.mark_dirty(key);
                let code = code.unwrap_or(1005);
                self.errors
                    .add(format!("{what} closed by target: {code} {reason:?}"));
                self.count_closed(key);
            }
            _ => {}
        }
    }

    fn count_closed(&mut self, key: usize) {
        match self.conns[key].role {
            Role::Binary { .. } => self.open_binaries -= 1,
            Role::Phone { .. } => self.open_phones -= 1,
        }
    }

    fn phone_message(&mut self, key: usize, text: bool, payload: &[u8], now: Instant) {
        if !text {
            return self.fail(key, "phone got a binary frame".into());
        }
        if payload != self.payload.as_slice() {
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned();
            return self.fail(key, format!("phone got unexpected bytes: {shown}"));
        }
        let Role::Phone { fifo, churn, .. } = &mut self.conns[key].role else {
            return;
        };
        let churn = *churn;
        let Some(sent) = fifo.pop_front() else {
            return self.fail(key, "phone got a message it did not wait for".into());
        };
        let _ = self
            .stats
            .latency
            .record(now.saturating_duration_since(sent).as_nanos().max(1) as u64);
        if churn {
            // One exchange done: close, wait for the close and the FIN.
            let mask = self.rng.mask();
            let conn = &mut self.conns[key];
            write_client_frame(
                &mut conn.out,
                ws::OP_CLOSE,
                true,
                &[&1000u16.to_be_bytes()],
                mask,
            );
            conn.state = State::Closing;
            self.open_phones -= 1;
            self.mark_dirty(key);
            return;
        }
        self.stats.completed += 1;
        if self.sending && self.in_flight > 0 {
            match self.mode {
                Mode::Fanout => self.push_to_phone(key, now),
                _ => self.phone_send(key, now),
            }
        }
    }

    fn phone_send(&mut self, key: usize, sent_at: Instant) {
        let mask = self.rng.mask();
        let conn = &mut self.conns[key];
        write_client_frame(&mut conn.out, ws::OP_TEXT, true, &[&self.payload], mask);
        if let Role::Phone { fifo, .. } = &mut conn.role {
            fifo.push_back(sent_at);
        }
        self.stats.sent += 1;
        self.mark_dirty(key);
    }

    /// The binary of phone `key` pushes one frame to it.
    fn push_to_phone(&mut self, key: usize, now: Instant) {
        let Role::Phone {
            binary: Some(binary),
            conn_id: Some(conn_id),
            fifo,
            ..
        } = &mut self.conns[key].role
        else {
            return;
        };
        fifo.push_back(now);
        let (binary, conn_id) = (*binary, conn_id.clone());
        if !self.is_open(binary) {
            return;
        }
        let mask = self.rng.mask();
        let out = &mut self.conns[binary].out;
        write_client_frame(
            out,
            ws::OP_TEXT,
            true,
            &[
                br#"{"conn_id":""#,
                conn_id.as_bytes(),
                br#"","frame":"#,
                &self.payload,
                b"}",
            ],
            mask,
        );
        self.stats.sent += 1;
        self.mark_dirty(binary);
    }

    fn binary_message(&mut self, key: usize, payload: &[u8], _now: Instant) {
        const PREFIX: &[u8] = br#"{"conn_id":""#;
        let Some(rest) = payload.strip_prefix(PREFIX) else {
            return self.fail(key, "binary got a message without conn_id".into());
        };
        let Some(quote) = rest.iter().position(|&b| b == b'"') else {
            return self.fail(key, "binary got an unterminated conn_id".into());
        };
        let (conn_id, after) = rest.split_at(quote);
        if after.starts_with(br#"","frame":"#) {
            match self.mode {
                Mode::Fanout => {
                    // A hello: `{"v":2,"type":"hello","phone":N}`.
                    let frame = &after[br#"","frame":"#.len()..];
                    let index = std::str::from_utf8(frame).ok().and_then(|t| {
                        let n = t.split(r#""phone":"#).nth(1)?;
                        n.trim_end_matches('}').trim().parse::<usize>().ok()
                    });
                    let Some(&phone) = index.and_then(|i| self.phones.get(i)) else {
                        return self.fail(key, "binary got an unknown hello".into());
                    };
                    let conn_id = String::from_utf8_lossy(conn_id)
                        .into_owned()
                        .into_boxed_str();
                    if let Some(Conn {
                        role: Role::Phone { conn_id: slot, .. },
                        ..
                    }) = self.conns.get_mut(phone)
                    {
                        if slot.is_none() {
                            self.known_phones += 1;
                        }
                        *slot = Some(conn_id);
                    }
                }
                _ => {
                    // Answer like a daemon: same conn_id, same frame. The
                    // relay's envelope has exactly the shape of the answer.
                    let mask = self.rng.mask();
                    let conn = &mut self.conns[key];
                    write_client_frame(&mut conn.out, ws::OP_TEXT, true, &[payload], mask);
                    self.mark_dirty(key);
                }
            }
        } else if after.starts_with(br#"","close_code":"#) {
            self.stats.close_notices += 1;
        } else {
            self.fail(key, "binary got an envelope it does not know".into());
        }
    }

    fn on_eof(&mut self, key: usize) {
        let conn = &self.conns[key];
        match conn.state {
            State::AwaitEof => self.remove(key),
            State::Closing => {
                self.errors
                    .add("target closed without a close frame".into());
                self.remove(key);
            }
            _ => self.fail(key, "connection closed by target".into()),
        }
    }

    /// Records an error and drops the connection.
    fn fail(&mut self, key: usize, what: String) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let who = match conn.role {
            Role::Binary { .. } => "binary",
            Role::Phone { .. } => "phone",
        };
        match conn.state {
            State::Connecting | State::Upgrading => self.pending_connects -= 1,
            State::Open => self.count_closed(key),
            _ => {}
        }
        self.errors.add(format!("{who}: {what}"));
        self.remove(key);
    }

    fn remove(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        sys::set_linger_zero(conn.stream.tcp());
        let _ = self.poll.registry().deregister(conn.stream.tcp_mut());
        if let Role::Phone { churn: true, .. } = conn.role {
            self.churn_active -= 1;
        }
    }

    fn spawn_churners(&mut self) {
        while self.sending && self.churn_active < self.churn_concurrency && self.churn_due() {
            let index = self.next_phone_index;
            self.next_phone_index += 1;
            let binary = if self.target.relay {
                match self.binaries.get(index % self.binaries.len().max(1)) {
                    Some(&k) if self.is_open(k) => Some(k),
                    _ => {
                        self.errors.add("churn: binary not connected".into());
                        self.stop_sending();
                        return;
                    }
                }
            } else {
                None
            };
            if self
                .dial(Role::Phone {
                    binary,
                    index,
                    fifo: VecDeque::new(),
                    conn_id: None,
                    churn: true,
                })
                .is_some()
            {
                self.churn_active += 1;
            } else if self.errors.count > 1000 {
                self.stop_sending();
            }
        }
    }

    fn send_due(&mut self) {
        let Some(ol) = self.open_loop.as_mut() else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ol.start).as_secs_f64();
        let due = (elapsed * ol.rate) as u64 + 1;
        let phones = ol.phones;
        let mut batch = 0;
        while ol.sent < due && batch < 4096 && phones > 0 {
            let at = ol.start + Duration::from_secs_f64(ol.sent as f64 / ol.rate);
            let key = self.phones[ol.rr % phones];
            ol.rr += 1;
            ol.sent += 1;
            batch += 1;
            if let Some(Conn {
                state: State::Open,
                out,
                role: Role::Phone { fifo, .. },
                dirty,
                ..
            }) = self.conns.get_mut(key)
            {
                let mask = self.rng.mask();
                write_client_frame(out, ws::OP_TEXT, true, &[&self.payload], mask);
                fifo.push_back(at);
                self.stats.sent += 1;
                if !*dirty {
                    *dirty = true;
                    self.dirty.push(key);
                }
            }
        }
        let next = ol.start + Duration::from_secs_f64(ol.sent as f64 / ol.rate);
        let wait = next.saturating_duration_since(Instant::now());
        self.timer.arm(wait.as_nanos() as u64);
        self.timer_armed = true;
    }

    /// Sends resets on every socket (no TIME_WAIT, no lingering) and forgets
    /// them all.
    pub fn abort_all(&mut self) {
        self.stop_sending();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let mut conn = self.conns.remove(key);
            sys::set_linger_zero(conn.stream.tcp());
            let _ = self.poll.registry().deregister(conn.stream.tcp_mut());
        }
        self.churn_active = 0;
        self.pending_connects = 0;
        self.open_phones = 0;
        self.open_binaries = 0;
        self.connect_queue.clear();
    }
}
