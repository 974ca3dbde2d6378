//! The WebSocket reader: bytes in, events out.
//!
//! A [`Reader`] is the decoding state of one connection: the bytes of a
//! frame that has not fully arrived, and a fragmented message being
//! reassembled. Each read's bytes go through a [`Batch`]:
//!
//! ```text
//! reader.batch(bytes) ──▶ batch.next() ─▶ Event ─▶ batch.next() ─▶ … ─▶ None
//!                                                        batch.finish() keeps the rest
//! ```
//!
//! Complete frames are decoded *in place*: their payload is unmasked in
//! the caller's buffer and the event borrows it, so the common case (a
//! whole frame inside one read) copies nothing. Only what must outlive the
//! read is copied into a buffer from the caller's [`Buffers`]: the tail of
//! a partial frame, and the fragments of a message. Both go back as soon
//! as they are used up, so an idle connection's reader holds no buffer.
//!
//! The caller may stop taking events at any point (the relay does when a
//! phone's binary is backpressured): `finish` keeps the undecoded rest for
//! the next batch. After a close frame or the first protocol error the
//! reader is done and yields nothing more.

use crate::buffer::Buffers;

use super::{parse_close_payload, parse_frame, FrameError, FrameKind, Role};

/// What a peer's bytes amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message (text or binary opcode), reassembled if it
    /// came in fragments.
    Message { text: bool, payload: &'a [u8] },
    /// A ping, with its payload.
    Ping(&'a [u8]),
    /// A pong, with its payload.
    Pong(&'a [u8]),
    /// The peer's close frame. The reader is done.
    Close { code: Option<u16>, reason: &'a str },
    /// The bytes broke the protocol; close with `error.close_code()`. The
    /// reader is done.
    Error(FrameError),
}

/// An [`Event`] with its bytes copied out, for callers that keep events
/// (tests, fuzzers, tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEvent {
    Message { text: bool, payload: Vec<u8> },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close { code: Option<u16>, reason: String },
    Error(FrameError),
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(event: &Event<'_>) -> OwnedEvent {
        match *event {
            Event::Message { text, payload } => OwnedEvent::Message {
                text,
                payload: payload.to_vec(),
            },
            Event::Ping(payload) => OwnedEvent::Ping(payload.to_vec()),
            Event::Pong(payload) => OwnedEvent::Pong(payload.to_vec()),
            Event::Close { code, reason } => OwnedEvent::Close {
                code,
                reason: reason.to_string(),
            },
            Event::Error(error) => OwnedEvent::Error(error),
        }
    }
}

/// Whether the reader still decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    /// The peer's close frame was read.
    Closed,
    /// A protocol error was reported.
    Failed,
}

/// The decoding state of one connection. (Every connection of the relay
/// has one, so it is kept small: two optional buffers and four flags.)
pub struct Reader {
    role: Role,
    state: State,
    /// Whether the fragmented message is text.
    fragments_text: bool,
    /// The fragmented message was completed and handed out: its buffer
    /// goes back on the next call.
    fragments_done: bool,
    /// Bytes received but not yet decoded: the start of a partial frame,
    /// or frames the caller did not take.
    pending: Option<Vec<u8>>,
    /// The payload so far of a fragmented message.
    fragments: Option<Vec<u8>>,
}

impl Reader {
    /// A reader for `role`'s end of a connection.
    pub fn new(role: Role) -> Reader {
        Reader {
            role,
            state: State::Reading,
            fragments_text: false,
            fragments_done: false,
            pending: None,
            fragments: None,
        }
    }

    /// A reader that starts with `bytes` already received (what followed
    /// the HTTP request head in the same read).
    pub fn with_pending(role: Role, bytes: Vec<u8>) -> Reader {
        Reader {
            pending: Some(bytes),
            ..Reader::new(role)
        }
    }

    /// Decodes `input`, the bytes of one read, after whatever was pending.
    /// Messages over `max_message` bytes are refused (1009).
    pub fn batch<'r>(&'r mut self, input: &'r mut [u8], max_message: usize) -> Batch<'r> {
        let from_pending = match self.pending.as_mut() {
            Some(pending) => {
                pending.extend_from_slice(input);
                true
            }
            None => false,
        };
        Batch {
            reader: self,
            input,
            from_pending,
            at: 0,
            max_message,
        }
    }

    /// Decodes `bytes` to the end and returns copies of the events; for
    /// callers that keep events rather than act on them in place.
    pub fn read_all(
        &mut self,
        bytes: &[u8],
        max_message: usize,
        buffers: &mut impl Buffers,
    ) -> Vec<OwnedEvent> {
        let mut input = bytes.to_vec();
        let mut batch = self.batch(&mut input, max_message);
        let mut events = Vec::new();
        while let Some(event) = batch.next(buffers) {
            events.push(OwnedEvent::from(&event));
        }
        batch.finish(buffers);
        events
    }

    /// Whether bytes are waiting to be decoded.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a message has begun and not ended: a partial frame, or an
    /// unfinished fragmented message.
    pub fn is_mid_message(&self) -> bool {
        self.pending.is_some() || (self.fragments.is_some() && !self.fragments_done)
    }

    /// Whether the peer's close or a protocol error ended decoding.
    pub fn is_done(&self) -> bool {
        self.state != State::Reading
    }

    /// Bytes received and not yet decoded.
    pub fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, Vec::len)
    }

    /// Bytes of a fragmented message held for reassembly.
    pub fn fragments_len(&self) -> usize {
        self.fragments.as_ref().map_or(0, Vec::len)
    }

    /// Bytes allocated by the reader's buffers.
    pub fn allocated(&self) -> usize {
        self.pending.as_ref().map_or(0, Vec::capacity)
            + self.fragments.as_ref().map_or(0, Vec::capacity)
    }

    /// Whether the reader holds a buffer.
    pub fn holds_buffers(&self) -> bool {
        self.pending.is_some() || self.fragments.is_some()
    }

    /// Gives every buffer back; the reader holds nothing afterwards.
    pub fn release(&mut self, buffers: &mut impl Buffers) {
        if let Some(pending) = self.pending.take() {
            buffers.put(pending);
        }
        if let Some(fragments) = self.fragments.take() {
            buffers.put(fragments);
        }
    }

    /// Gives back the buffer of a reassembled message already handed out.
    fn recycle(&mut self, buffers: &mut impl Buffers) {
        if self.fragments_done {
            self.fragments_done = false;
            if let Some(fragments) = self.fragments.take() {
                buffers.put(fragments);
            }
        }
    }
}

/// The bytes of one read being decoded by a [`Reader`].
#[must_use = "call finish() to keep the undecoded rest"]
pub struct Batch<'r> {
    reader: &'r mut Reader,
    input: &'r mut [u8],
    /// The input was appended to the reader's pending bytes, and decoding
    /// runs over those.
    from_pending: bool,
    /// How far decoding has come.
    at: usize,
    max_message: usize,
}

/// What decoding up to the next event found.
enum Found {
    /// A frame to hand out as it is, at this payload range.
    Frame(FrameKind, std::ops::Range<usize>),
    /// The last fragment of a message arrived.
    Reassembled,
}

impl Batch<'_> {
    /// The next event, or `None` when the bytes so far hold no complete
    /// frame (or the reader is done).
    pub fn next(&mut self, buffers: &mut impl Buffers) -> Option<Event<'_>> {
        let Batch {
            reader,
            input,
            from_pending,
            at,
            max_message,
        } = self;
        reader.recycle(buffers);
        if reader.state != State::Reading {
            return None;
        }
        let Reader {
            role,
            state,
            fragments_text,
            fragments_done,
            pending,
            fragments,
        } = &mut **reader;
        let bytes: &mut [u8] = match (*from_pending, pending.as_mut()) {
            (true, Some(pending)) => pending,
            _ => input,
        };
        let found = loop {
            let open = fragments.as_ref().map(Vec::len);
            let frame = match parse_frame(&mut bytes[*at..], *role, open, *max_message) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(error) => {
                    *state = State::Failed;
                    return Some(Event::Error(error));
                }
            };
            let payload = *at + frame.payload.start..*at + frame.payload.end;
            *at += frame.len;
            match (frame.kind, frame.is_final) {
                (FrameKind::Text | FrameKind::Binary, false) => {
                    let mut buffer = buffers.get();
                    buffer.extend_from_slice(&bytes[payload]);
                    *fragments = Some(buffer);
                    *fragments_text = frame.kind == FrameKind::Text;
                }
                (FrameKind::Continuation, is_final) => {
                    // parse_frame refuses a continuation without a message.
                    let open = fragments.as_mut().expect("a fragmented message is open");
                    open.extend_from_slice(&bytes[payload]);
                    if is_final {
                        *fragments_done = true;
                        break Found::Reassembled;
                    }
                }
                (kind, _) => break Found::Frame(kind, payload),
            }
        };
        Some(match found {
            Found::Reassembled => Event::Message {
                text: *fragments_text,
                payload: fragments.as_deref().expect("just completed"),
            },
            Found::Frame(kind, range) => frame_event(kind, &bytes[range], state),
        })
    }

    /// Ends the batch: the undecoded rest is kept for the next one (in a
    /// buffer from `buffers`), or dropped when the reader is done.
    pub fn finish(self, buffers: &mut impl Buffers) {
        let Batch {
            reader,
            input,
            from_pending,
            at,
            ..
        } = self;
        reader.recycle(buffers);
        if reader.state != State::Reading {
            reader.release(buffers);
        } else if from_pending {
            if let Some(mut pending) = reader.pending.take() {
                pending.drain(..at.min(pending.len()));
                if pending.is_empty() {
                    buffers.put(pending);
                } else {
                    reader.pending = Some(pending);
                }
            }
        } else if at < input.len() {
            let mut rest = buffers.get();
            rest.extend_from_slice(&input[at..]);
            reader.pending = Some(rest);
        }
    }
}

/// The event of a complete single frame (not a fragment).
fn frame_event<'a>(kind: FrameKind, payload: &'a [u8], state: &mut State) -> Event<'a> {
    match kind {
        FrameKind::Text | FrameKind::Binary => Event::Message {
            text: kind == FrameKind::Text,
            payload,
        },
        FrameKind::Ping => Event::Ping(payload),
        FrameKind::Pong => Event::Pong(payload),
        FrameKind::Close => match parse_close_payload(payload) {
            Ok(code) => {
                *state = State::Closed;
                let reason = payload.get(2..).unwrap_or_default();
                Event::Close {
                    code,
                    // parse_close_payload checked it is UTF-8.
                    reason: std::str::from_utf8(reason).unwrap_or_default(),
                }
            }
            Err(error) => {
                *state = State::Failed;
                Event::Error(error)
            }
        },
        FrameKind::Continuation => unreachable!("fragments are reassembled"),
    }
}

/// A reader's whole state as plain parts (for the hand-over of an upgrade,
/// `handover/snapshot.rs`): whether it still decodes, the bytes of a
/// partial frame, and a fragmented message being reassembled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderParts {
    /// The peer's close or a protocol error ended decoding.
    pub done: bool,
    /// It ended with a protocol error.
    pub failed: bool,
    pub pending: Option<Vec<u8>>,
    pub fragments: Option<Vec<u8>>,
    pub fragments_text: bool,
}

impl Reader {
    /// A copy of the reader's state. A reassembled message already handed
    /// out is not part of it.
    pub fn to_parts(&self) -> ReaderParts {
        ReaderParts {
            done: self.state != State::Reading,
            failed: self.state == State::Failed,
            pending: self.pending.clone(),
            fragments: self.fragments.clone().filter(|_| !self.fragments_done),
            fragments_text: self.fragments_text,
        }
    }

    /// A reader for `role` that goes on from `parts`.
    pub fn from_parts(role: Role, parts: ReaderParts) -> Reader {
        let state = match (parts.done, parts.failed) {
            (false, _) => State::Reading,
            (true, false) => State::Closed,
            (true, true) => State::Failed,
        };
        Reader {
            role,
            state,
            fragments_text: parts.fragments_text,
            fragments_done: false,
            pending: parts.pending.filter(|p| !p.is_empty()),
            fragments: parts.fragments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{BufferPool, Unpooled};
    use crate::ws::{write_client_frame, write_frame};

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_client_frame(&mut out, opcode, fin, &[payload], [7, 7, 7, 7]);
        out
    }

    fn message(payload: &[u8]) -> OwnedEvent {
        OwnedEvent::Message {
            text: true,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn whole_frames_come_out_in_order_with_nothing_kept() {
        let mut bytes = frame(0x1, true, b"one");
        bytes.extend(frame(0x9, true, b"p"));
        bytes.extend(frame(0x1, true, b"two"));
        let mut reader = Reader::new(Role::Server);
        let events = reader.read_all(&bytes, 1024, &mut Unpooled);
        assert_eq!(
            events,
            vec![
                message(b"one"),
                OwnedEvent::Ping(b"p".to_vec()),
                message(b"two")
            ]
        );
        assert!(!reader.holds_buffers());
    }

    #[test]
    fn a_frame_split_across_reads_is_kept_then_completed() {
        let bytes = frame(0x1, true, &[b'x'; 300]);
        let mut pool = BufferPool::default();
        let mut reader = Reader::new(Role::Server);
        assert!(reader.read_all(&bytes[..100], 1024, &mut pool).is_empty());
        assert!(reader.is_mid_message());
        assert_eq!(reader.pending_len(), 100);
        let events = reader.read_all(&bytes[100..], 1024, &mut pool);
        assert_eq!(events, vec![message(&[b'x'; 300])]);
        assert!(!reader.holds_buffers());
        assert_eq!(pool.idle(), 1, "the pending buffer went back");
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = frame(0x2, false, b"ab");
        bytes.extend(frame(0xA, true, b""));
        bytes.extend(frame(0x0, false, b"cd"));
        bytes.extend(frame(0x0, true, b"e"));
        let mut pool = BufferPool::default();
        let mut reader = Reader::new(Role::Server);
        let events = reader.read_all(&bytes, 1024, &mut pool);
        let whole = OwnedEvent::Message {
            text: false,
            payload: b"abcde".to_vec(),
        };
        assert_eq!(events, vec![OwnedEvent::Pong(Vec::new()), whole]);
        assert!(!reader.holds_buffers(), "the message buffer went back");
    }

    #[test]
    fn a_caller_may_stop_and_the_rest_waits() {
        let mut bytes = frame(0x1, true, b"one");
        bytes.extend(frame(0x1, true, b"two"));
        let mut pool = BufferPool::default();
        let mut reader = Reader::new(Role::Server);
        let mut batch = reader.batch(&mut bytes, 1024);
        assert_eq!(
            batch.next(&mut pool),
            Some(Event::Message {
                text: true,
                payload: b"one"
            })
        );
        batch.finish(&mut pool);
        assert!(reader.has_pending());
        assert_eq!(reader.read_all(&[], 1024, &mut pool), vec![message(b"two")]);
    }

    #[test]
    fn the_first_error_ends_decoding() {
        let mut bytes = vec![0x81, 0x01, b'x']; // unmasked, from a client
        bytes.extend(frame(0x1, true, b"never"));
        let mut reader = Reader::new(Role::Server);
        let events = reader.read_all(&bytes, 1024, &mut Unpooled);
        assert_eq!(
            events,
            vec![OwnedEvent::Error(FrameError::Protocol(
                "unmasked client frame"
            ))]
        );
        assert!(reader.is_done());
        assert!(reader
            .read_all(&frame(0x1, true, b"x"), 1024, &mut Unpooled)
            .is_empty());
    }

    #[test]
    fn a_close_frame_ends_decoding() {
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let mut bytes = frame(0x8, true, &close);
        bytes.extend(frame(0x1, true, b"after"));
        let mut reader = Reader::new(Role::Server);
        let events = reader.read_all(&bytes, 1024, &mut Unpooled);
        assert_eq!(
            events,
            vec![OwnedEvent::Close {
                code: Some(1000),
                reason: "bye".into()
            }]
        );
        assert!(reader.is_done() && !reader.holds_buffers());
    }

    #[test]
    fn a_client_reads_what_a_server_writes() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, FrameKind::Text, b"{}");
        let mut reader = Reader::new(Role::Client);
        assert_eq!(
            reader.read_all(&bytes, usize::MAX, &mut Unpooled),
            vec![message(b"{}")]
        );
    }

    #[test]
    fn a_reader_goes_on_from_its_parts_mid_frame_and_mid_message() {
        let mut bytes = frame(0x1, false, b"frag-");
        bytes.extend(frame(0x0, true, b"ment"));
        bytes.extend(frame(0x1, true, b"whole"));
        let cut = frame(0x1, false, b"frag-").len() + 3;
        let mut reader = Reader::new(Role::Server);
        assert!(reader
            .read_all(&bytes[..cut], 1024, &mut Unpooled)
            .is_empty());
        let parts = reader.to_parts();
        assert_eq!(parts.fragments.as_deref(), Some(&b"frag-"[..]));
        assert_eq!(parts.pending.as_ref().map(Vec::len), Some(3));
        let mut moved = Reader::from_parts(Role::Server, parts);
        assert_eq!(
            moved.read_all(&bytes[cut..], 1024, &mut Unpooled),
            vec![message(b"frag-ment"), message(b"whole")]
        );
        let mut closed = Reader::new(Role::Server);
        closed.read_all(
            &frame(0x8, true, &1000u16.to_be_bytes()),
            1024,
            &mut Unpooled,
        );
        assert!(Reader::from_parts(Role::Server, closed.to_parts()).is_done());
    }

    #[test]
    fn bytes_after_the_request_head_are_decoded_first() {
        let mut reader = Reader::with_pending(Role::Server, frame(0x1, true, b"early"));
        assert_eq!(
            reader.read_all(&frame(0x1, true, b"late"), 1024, &mut Unpooled),
            vec![message(b"early"), message(b"late")]
        );
    }
}
