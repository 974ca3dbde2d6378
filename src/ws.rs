//! RFC 6455 framing over buffers the caller owns (SPEC §6).
//!
//! `tungstenite` parses frame headers and formats them; this module adds
//! what an endpoint must enforce on top: masked frames from clients only
//! and unmasked frames from servers only, no reserved bits, control frames
//! final and short, continuation rules, and the message size cap checked
//! *before* the payload is buffered.
//!
//! Reading a byte stream is [`Reader`]'s job (`ws/reader.rs`): bytes in,
//! events out. It is the only WebSocket decoder of the workspace: the
//! relay, the test clients, the property tests, the fuzzers and
//! `relay-bench` all read through it. Writing is the `write_*` functions:
//! every frame the relay writes is unmasked and final; clients (tests and
//! the benchmark's simulated peers) write masked frames with
//! [`write_client_frame`].

mod reader;

use std::io::Cursor;
use std::ops::Range;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

pub use reader::{Batch, Event, OwnedEvent, Reader, ReaderParts};

/// Close codes the relay sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const NOT_FOUND: u16 = 4404;
    pub const CONFLICT: u16 = 4409;
    pub const TOO_MANY: u16 = 4429;
}

/// Whether `code` may be sent in a close frame (1000–1003, 1007–1014,
/// 3000–4999).
pub fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a peer's bytes end its connection, with the close code to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// RFC 6455 violation: close 1002.
    Protocol(&'static str),
    /// Message over the size limit: close 1009.
    TooBig,
    /// Invalid UTF-8 where text is required: close 1007.
    InvalidUtf8,
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL_ERROR,
            FrameError::TooBig => close::TOO_BIG,
            FrameError::InvalidUtf8 => close::INVALID_PAYLOAD,
        }
    }

    /// A short name for logs.
    pub fn describe(self) -> &'static str {
        match self {
            FrameError::Protocol(what) => what,
            FrameError::TooBig => "message too big",
            FrameError::InvalidUtf8 => "invalid utf-8",
        }
    }
}

/// The kind of a complete frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close,
}

/// One complete, unmasked frame at the start of a buffer.
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub is_final: bool,
    /// Where the payload lies in the buffer.
    pub payload: Range<usize>,
    /// Header plus payload length.
    pub len: usize,
}

/// Which end of a connection is reading: a server reads masked client
/// frames, a client reads unmasked server frames (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The relay (or the benchmark's echo server): every frame must be masked.
    Server,
    /// A test client or the benchmark's peers: no frame may be masked.
    Client,
}

/// Parses the frame at the start of `buf`, unmasking its payload in place.
///
/// `open_message` is `Some(bytes held)` while a fragmented message is being
/// reassembled. `Ok(None)` means more bytes are needed. Size and protocol
/// rules are checked as soon as the header is complete, so an oversized or
/// invalid frame is refused before its payload is waited for.
pub fn parse_frame(
    buf: &mut [u8],
    role: Role,
    open_message: Option<usize>,
    max_message: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut cursor = Cursor::new(&*buf);
    let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    let header_len = cursor.position() as usize;
    let kind = check_header(&header, payload_len, role, open_message, max_message)?;
    let total = header_len + payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if let Some(mask) = header.mask {
        apply_mask(&mut buf[header_len..total], mask);
    }
    Ok(Some(Frame {
        kind,
        is_final: header.is_final,
        payload: header_len..total,
        len: total,
    }))
}

fn check_header(
    header: &FrameHeader,
    payload_len: u64,
    role: Role,
    open_message: Option<usize>,
    max_message: usize,
) -> Result<FrameKind, FrameError> {
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    match (role, header.mask.is_some()) {
        (Role::Server, false) => return Err(FrameError::Protocol("unmasked client frame")),
        (Role::Client, true) => return Err(FrameError::Protocol("masked server frame")),
        _ => {}
    }
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => FrameKind::Text,
        OpCode::Data(Data::Binary) => FrameKind::Binary,
        OpCode::Data(Data::Continue) => FrameKind::Continuation,
        OpCode::Control(Control::Ping) => FrameKind::Ping,
        OpCode::Control(Control::Pong) => FrameKind::Pong,
        OpCode::Control(Control::Close) => FrameKind::Close,
        _ => return Err(FrameError::Protocol("reserved opcode")),
    };
    match kind {
        FrameKind::Ping | FrameKind::Pong | FrameKind::Close => {
            if !header.is_final || payload_len > 125 {
                return Err(FrameError::Protocol("bad control frame"));
            }
        }
        FrameKind::Continuation if open_message.is_none() => {
            return Err(FrameError::Protocol("continuation without a message"));
        }
        FrameKind::Text | FrameKind::Binary if open_message.is_some() => {
            return Err(FrameError::Protocol("new message inside a fragmented one"));
        }
        _ => {
            let held = open_message.unwrap_or(0) as u64;
            if payload_len.saturating_add(held) > max_message as u64 {
                return Err(FrameError::TooBig);
            }
        }
    }
    Ok(kind)
}

/// Unmasks (or masks) `buf` in place with the client's 4-byte key.
/// (tungstenite 0.30 keeps its own `apply_mask` private.)
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Reads a close frame's payload: `None` when it carries no code.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("one-byte close payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_sendable_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends the header of an unmasked final frame of `len` payload bytes.
pub fn write_header(out: &mut Vec<u8>, kind: FrameKind, len: usize) {
    let opcode = match kind {
        FrameKind::Text => OpCode::Data(Data::Text),
        FrameKind::Binary => OpCode::Data(Data::Binary),
        FrameKind::Continuation => OpCode::Data(Data::Continue),
        FrameKind::Ping => OpCode::Control(Control::Ping),
        FrameKind::Pong => OpCode::Control(Control::Pong),
        FrameKind::Close => OpCode::Control(Control::Close),
    };
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// Appends a whole unmasked frame.
pub fn write_frame(out: &mut Vec<u8>, kind: FrameKind, payload: &[u8]) {
    write_header(out, kind, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a frame as a client sends it: masked with `mask`, payload
/// `parts` concatenated. `opcode` is the raw 4-bit opcode, so a test can
/// send a reserved one on purpose; `fin` false starts or continues a
/// fragmented message.
pub fn write_client_frame(
    out: &mut Vec<u8>,
    opcode: u8,
    fin: bool,
    parts: &[&[u8]],
    mask: [u8; 4],
) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    match len {
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
    let start = out.len();
    for part in parts {
        out.extend_from_slice(part);
    }
    apply_mask(&mut out[start..], mask);
}

/// Appends a close frame; a `None` code sends an empty payload.
pub fn write_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    match code {
        None => write_frame(out, FrameKind::Close, &[]),
        Some(code) => {
            write_header(out, FrameKind::Close, 2 + reason.len());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_client_frame(&mut out, opcode, fin, &[payload], [1, 2, 3, 4]);
        out
    }

    fn parse(buf: &mut [u8], open: Option<usize>) -> Result<Option<Frame>, FrameError> {
        parse_frame(buf, Role::Server, open, 1024)
    }

    #[test]
    fn a_masked_text_frame_is_unmasked_in_place() {
        let mut buf = masked(0x1, true, b"{\"a\":1}");
        let frame = parse(&mut buf, None).unwrap().unwrap();
        assert_eq!(frame.kind, FrameKind::Text);
        assert_eq!(&buf[frame.payload.clone()], b"{\"a\":1}");
        assert_eq!(frame.len, buf.len());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = masked(0x1, true, &[b'x'; 300]);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert!(parse(&mut part, None).unwrap().is_none());
        }
    }

    #[test]
    fn protocol_violations_are_refused() {
        let mut unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            parse(&mut unmasked, None).unwrap_err(),
            FrameError::Protocol("unmasked client frame")
        );
        let mut rsv = masked(0x1, true, b"x");
        rsv[0] |= 0x40;
        let mut reserved_opcode = masked(0x3, true, b"x");
        let mut fragmented_ping = masked(0x9, false, b"x");
        let mut lone_continuation = masked(0x0, true, b"x");
        let mut text_inside_fragments = masked(0x1, true, b"x");
        for (bytes, open) in [
            (&mut rsv, None),
            (&mut reserved_opcode, None),
            (&mut fragmented_ping, None),
            (&mut lone_continuation, None),
            (&mut text_inside_fragments, Some(3)),
        ] {
            assert!(matches!(parse(bytes, open), Err(FrameError::Protocol(_))));
        }
    }

    #[test]
    fn a_client_refuses_masked_frames_and_reads_unmasked_ones() {
        let mut masked_by_server = masked(0x1, true, b"x");
        assert_eq!(
            parse_frame(&mut masked_by_server, Role::Client, None, 1024).unwrap_err(),
            FrameError::Protocol("masked server frame")
        );
        let mut plain = Vec::new();
        write_frame(&mut plain, FrameKind::Pong, b"hi");
        let frame = parse_frame(&mut plain, Role::Client, None, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(
            (frame.kind, &plain[frame.payload]),
            (FrameKind::Pong, &b"hi"[..])
        );
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header_alone() {
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&mut huge, None).unwrap_err(), FrameError::TooBig);
        let mut more = masked(0x0, true, &[b'x'; 25]);
        assert_eq!(
            parse(&mut more, Some(1000)).unwrap_err(),
            FrameError::TooBig
        );
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[0x03, 0xE8]), Ok(Some(1000)));
        assert!(parse_close_payload(&[0x03]).is_err());
        assert!(parse_close_payload(&[0x03, 0xED]).is_err()); // 1005
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn frames_written_are_unmasked_and_final() {
        let mut out = Vec::new();
        write_close(&mut out, Some(4404), "binary gone");
        assert_eq!(&out[..4], &[0x88, 13, 0x11, 0x34]);
        assert_eq!(&out[4..], b"binary gone");
        let mut big = Vec::new();
        write_frame(&mut big, FrameKind::Text, &[b'y'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
    }

    #[test]
    fn client_frames_are_masked_with_every_length_form() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![b'z'; len];
            let mut out = Vec::new();
            write_client_frame(
                &mut out,
                0x2,
                true,
                &[&payload[..len / 2], &payload[len / 2..]],
                [9, 8, 7, 6],
            );
            let frame = parse_frame(&mut out, Role::Server, None, usize::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(frame.kind, FrameKind::Binary);
            assert_eq!(&out[frame.payload], &payload[..]);
        }
    }
}
