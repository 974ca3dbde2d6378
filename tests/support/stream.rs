//! Feeding a client byte stream, cut into reads, through the library's
//! WebSocket reader (`ws::Reader`, the one the relay reads with) and
//! checking what it may hold between reads.
//!
//! Shared by the property tests (`tests/properties.rs`) and the fuzz
//! target `fuzz/fuzz_targets/ws_frames.rs`, which both check that the
//! events do not depend on where the stream was split.
#![allow(dead_code)]

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::ws::{self, Reader, Role};

pub use pyrycode_relay::ws::OwnedEvent as Event;

/// Largest frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// Decodes `stream` cut into reads of the given lengths (the rest of the
/// stream is the last read); returns the events and how many bytes of a
/// partial frame were left over. Panics if the reader ever holds more
/// than the limits allow.
pub fn decode_split(stream: &[u8], cuts: &[usize], max_message: usize) -> (Vec<Event>, usize) {
    let mut reader = Reader::new(Role::Server);
    let mut events = Vec::new();
    let mut at = 0;
    let ends = cuts
        .iter()
        .scan(0, |end, len| {
            *end = (*end + len).min(stream.len());
            Some(*end)
        })
        .chain([stream.len()]);
    for end in ends {
        events.extend(reader.read_all(&stream[at..end], max_message, &mut Unpooled));
        at = end;
        assert!(
            reader.pending_len() < MAX_HEADER + max_message,
            "partial frame of {} bytes kept with a {max_message} byte limit",
            reader.pending_len()
        );
        assert!(reader.fragments_len() <= max_message);
    }
    (events, reader.pending_len())
}

/// A client frame, masked with `mask`.
pub fn client_frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ws::write_client_frame(&mut out, opcode, fin, &[payload], mask);
    out
}
