//! A WebSocket byte-stream decoder that reassembles messages the way the
//! relay does (`src/relay/io.rs: consume` and `src/relay/session.rs`): the
//! bytes of each read are appended to what is left of a partial frame,
//! complete frames are decoded by `ws::parse_frame` and unmasked in place,
//! fragments are collected in a `ws::Assembler`, and the stream stops at
//! the first error or at the peer's close frame.
//!
//! Shared by the property tests (`tests/properties.rs`) and the fuzz
//! targets (`fuzz/fuzz_targets/ws_frames.rs`), which both check that the
//! events do not depend on where the stream was split.
#![allow(dead_code)]

use pyrycode_relay::ws::{self, Assembler, FrameKind};

/// Largest frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// What the relay would act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete data message (text or binary opcode).
    Message {
        text: bool,
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close frame, with its code.
    Close(Option<u16>),
    /// The stream broke the protocol: the relay closes with this code.
    Error(u16),
}

/// The decoding state of one connection.
pub struct Decoder {
    max_message: usize,
    inbuf: Vec<u8>,
    assembler: Assembler,
    done: bool,
    pub events: Vec<Event>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            inbuf: Vec::new(),
            assembler: Assembler::default(),
            done: false,
            events: Vec::new(),
        }
    }

    /// Feeds the bytes of one read; panics if a bound is broken.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        self.inbuf.extend_from_slice(chunk);
        let mut at = 0;
        while at < self.inbuf.len() && !self.done {
            match ws::parse_frame(&mut self.inbuf[at..], &self.assembler, self.max_message) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    assert!(frame.len > 0 && at + frame.len <= self.inbuf.len());
                    let payload =
                        self.inbuf[at + frame.payload.start..at + frame.payload.end].to_vec();
                    at += frame.len;
                    self.on_frame(frame.kind, frame.is_final, payload);
                }
                Err(err) => {
                    self.events.push(Event::Error(err.close_code()));
                    self.done = true;
                }
            }
        }
        self.inbuf.drain(..at.min(self.inbuf.len()));
        if self.done {
            self.inbuf.clear();
        }
        // What the relay keeps between reads is bounded by the limits.
        assert!(
            self.inbuf.len() < MAX_HEADER + self.max_message,
            "partial frame of {} bytes kept with a {} byte limit",
            self.inbuf.len(),
            self.max_message
        );
        assert!(self.assembler.held() <= self.max_message);
    }

    fn on_frame(&mut self, kind: FrameKind, is_final: bool, payload: Vec<u8>) {
        match kind {
            FrameKind::Ping => self.events.push(Event::Ping(payload)),
            FrameKind::Pong => self.events.push(Event::Pong(payload)),
            FrameKind::Close => {
                self.done = true;
                self.events.push(match ws::parse_close_payload(&payload) {
                    Ok(code) => Event::Close(code),
                    Err(err) => Event::Error(err.close_code()),
                });
            }
            FrameKind::Text | FrameKind::Binary if is_final => {
                self.message(kind == FrameKind::Text, payload)
            }
            FrameKind::Text | FrameKind::Binary => {
                self.assembler
                    .open(kind == FrameKind::Text, Vec::new(), &payload)
            }
            FrameKind::Continuation => {
                self.assembler.append(&payload);
                if is_final {
                    let (text, message) = self.assembler.finish();
                    self.message(text, message);
                }
            }
        }
    }

    fn message(&mut self, text: bool, payload: Vec<u8>) {
        assert!(payload.len() <= self.max_message);
        self.events.push(Event::Message { text, payload });
    }

    /// The events, and how many bytes of a partial frame were left over.
    pub fn finish(self) -> (Vec<Event>, usize) {
        (self.events, self.inbuf.len())
    }
}

/// Decodes `stream` cut into chunks of the given lengths (the rest of
/// the stream is the last chunk).
pub fn decode_split(stream: &[u8], cuts: &[usize], max_message: usize) -> (Vec<Event>, usize) {
    let mut decoder = Decoder::new(max_message);
    let mut at = 0;
    for &len in cuts {
        let end = (at + len).min(stream.len());
        decoder.feed(&stream[at..end]);
        at = end;
    }
    decoder.feed(&stream[at..]);
    decoder.finish()
}

/// A client frame, masked with `mask`.
pub fn client_frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65_536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
