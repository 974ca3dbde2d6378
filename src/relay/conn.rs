//! One socket of the loop and the state machine it moves through.
//!
//! ```text
//! accept ─▶ Head ──(healthz / 404 / 4xx / 503)──────────────▶ Draining ─▶ gone
//!            │ 101
//!            ▼
//!          Open(Peer) ──(relay closes: code sent)──▶ Closing ─(peer's close)─▶ Draining ─▶ gone
//!            │  └──────(peer closes: echo sent)─────────────────────────────────▶ Draining
//!            └─(EOF, error, stall)──────────────────────────────────────────────────────────▶ gone
//! ```
//!
//! A connection owns no buffer while it is idle: `inbuf` exists only while
//! a frame or request head is partial, `out` only while output is unsent.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use crate::buffer::OutQueue;
use crate::transport::Transport;
use crate::ws::Assembler;

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The public WebSocket listener.
    Public,
    /// The loopback `/metrics` listener.
    Metrics,
}

/// What the far end of an open WebSocket is.
#[derive(Debug)]
pub enum Peer {
    /// A binary holding `server_id`.
    Binary(Rc<str>),
    /// A binary claiming a held server-id, waiting for the conflict probe.
    /// Nothing is read from it meanwhile.
    Challenger(Rc<str>),
    /// A phone of `server_id`.
    Phone {
        server_id: Rc<str>,
        conn_id: Rc<str>,
    },
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head.
    Head,
    /// An open WebSocket.
    Open(Peer),
    /// The relay sent a close frame and waits for the peer's.
    Closing,
    /// The last bytes are queued; once written, FIN is sent and the
    /// socket is read until EOF (a lingering close, so the peer sees our
    /// last bytes rather than a reset).
    Draining { fin_sent: bool },
}

/// Every deadline a connection can have; the earliest is in the wheel.
#[derive(Default, Debug)]
pub struct Deadlines {
    pub handshake: Option<Instant>,
    pub next_ping: Option<Instant>,
    pub pong: Option<Instant>,
    pub message: Option<Instant>,
    pub stall: Option<Instant>,
    pub close: Option<Instant>,
    pub probe: Option<Instant>,
}

impl Deadlines {
    /// The earliest deadline set.
    pub fn earliest(&self) -> Option<Instant> {
        [
            self.handshake,
            self.next_ping,
            self.pong,
            self.message,
            self.stall,
            self.close,
            self.probe,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// One accepted socket.
pub struct Conn {
    /// Unique for the life of the process (slab keys are reused).
    pub id: u64,
    pub transport: Transport,
    pub origin: Origin,
    pub remote: SocketAddr,
    /// The address limits apply to (the peer, or `X-Forwarded-For`).
    pub client_ip: IpAddr,
    pub phase: Phase,
    /// Bytes read but not yet consumed (a partial head or frame).
    pub inbuf: Option<Vec<u8>>,
    /// Bytes queued for the socket.
    pub out: Option<OutQueue>,
    pub assembler: Assembler,
    pub deadlines: Deadlines,
    /// The deadline the wheel holds for this connection, if any.
    pub armed: Option<Instant>,
    /// Whether WRITABLE interest is registered.
    pub wants_write: bool,
    /// Whether the connection is on the flush list of this turn.
    pub dirty: bool,
    /// Whether this connection counts against the connection caps.
    pub counted: bool,
}

impl Conn {
    /// Bytes queued and not yet written.
    pub fn pending_output(&self) -> usize {
        self.out.as_ref().map_or(0, OutQueue::pending)
    }

    /// The open peer, if any.
    pub fn peer(&self) -> Option<&Peer> {
        match &self.phase {
            Phase::Open(peer) => Some(peer),
            _ => None,
        }
    }
}
