//! pyrycode-relay: a WebSocket relay between the `pyry` daemon (one
//! "binary" per server-id) and its phones, routing frames by a small JSON
//! envelope without ever reading the end-to-end encrypted frames inside.
//!
//! The wire contract is `SPEC.md` (shared with the project); the shape of
//! the code is in `docs/ARCHITECTURE.md`. In short: one [`Relay`] owns a
//! `mio` poll loop, every socket, the [`registry`] of server-ids and one
//! [`timer`] wheel, and takes its time from a [`clock`] it is given.

pub mod acme;
pub mod boot;
pub mod buffer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod envelope;
pub mod fixture;
pub mod handover;
pub mod heap;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod proxy_protocol;
pub mod push;
pub mod registry;
mod relay;
pub mod settings;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod ws;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use relay::{
    AdvanceError, Census, Listen, Memory, Origin, Relay, Stats, MAX_ADVANCE, MAX_LISTENERS,
};
