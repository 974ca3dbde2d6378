//! RFC 6455 framing over buffers the relay owns (SPEC §6, issue point 4).
//!
//! `tungstenite` parses frame headers, masks and formats; this module adds
//! what a server must enforce on top: masked client frames only, no
//! reserved bits, control frames final and short, continuation rules, the
//! message size cap checked *before* the payload is buffered, and message
//! reassembly across fragments. Every frame the relay writes is unmasked
//! and final.

use std::io::Cursor;
use std::ops::Range;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

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

/// Reassembly state of a connection: a fragmented message in progress.
#[derive(Default)]
pub struct Assembler {
    /// `Some(is_text)` while a fragmented message is open.
    open: Option<bool>,
    /// The payload received so far of the open message.
    pub buffer: Option<Vec<u8>>,
}

impl Assembler {
    /// Whether a fragmented message is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Payload bytes held for the open message.
    pub fn held(&self) -> usize {
        self.buffer.as_ref().map_or(0, Vec::len)
    }

    /// Starts a fragmented message with its first payload.
    pub fn open(&mut self, is_text: bool, mut buffer: Vec<u8>, first: &[u8]) {
        buffer.extend_from_slice(first);
        self.open = Some(is_text);
        self.buffer = Some(buffer);
    }

    /// Appends a continuation payload.
    pub fn append(&mut self, payload: &[u8]) {
        if let Some(buffer) = self.buffer.as_mut() {
            buffer.extend_from_slice(payload);
        }
    }

    /// Ends the open message: whether it was text, and its payload.
    pub fn finish(&mut self) -> (bool, Vec<u8>) {
        (
            self.open.take().unwrap_or(false),
            self.buffer.take().unwrap_or_default(),
        )
    }
}

/// Parses the frame at the start of `buf`, unmasking its payload in place.
///
/// `Ok(None)` means more bytes are needed. Size and protocol rules are
/// checked as soon as the header is complete, so an oversized or invalid
/// frame is refused before its payload is waited for.
pub fn parse_frame(
    buf: &mut [u8],
    assembler: &Assembler,
    max_message: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut cursor = Cursor::new(&*buf);
    let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    let header_len = cursor.position() as usize;
    let kind = check_header(&header, payload_len, assembler, max_message)?;
    let total = header_len + payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mask = header
        .mask
        .ok_or(FrameError::Protocol("unmasked client frame"))?;
    apply_mask(&mut buf[header_len..total], mask);
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
    assembler: &Assembler,
    max_message: usize,
) -> Result<FrameKind, FrameError> {
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    if header.mask.is_none() {
        return Err(FrameError::Protocol("unmasked client frame"));
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
        FrameKind::Continuation if !assembler.is_open() => {
            return Err(FrameError::Protocol("continuation without a message"));
        }
        FrameKind::Text | FrameKind::Binary if assembler.is_open() => {
            return Err(FrameError::Protocol("new message inside a fragmented one"));
        }
        _ => {
            let total = payload_len.saturating_add(assembler.held() as u64);
            if total > max_message as u64 {
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

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
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

    #[test]
    fn a_masked_text_frame_is_unmasked_in_place() {
        let mut buf = masked(0x81, b"{\"a\":1}");
        let frame = parse_frame(&mut buf, &Assembler::default(), 1024)
            .unwrap()
            .unwrap();
        assert_eq!(frame.kind, FrameKind::Text);
        assert_eq!(&buf[frame.payload.clone()], b"{\"a\":1}");
        assert_eq!(frame.len, buf.len());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = masked(0x81, &[b'x'; 300]);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert!(parse_frame(&mut part, &Assembler::default(), 1024)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn protocol_violations_are_refused() {
        let assembler = Assembler::default();
        let mut unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            parse_frame(&mut unmasked, &assembler, 1024).unwrap_err(),
            FrameError::Protocol("unmasked client frame")
        );
        let mut rsv = masked(0xC1, b"x");
        assert!(matches!(
            parse_frame(&mut rsv, &assembler, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut reserved_opcode = masked(0x83, b"x");
        assert!(matches!(
            parse_frame(&mut reserved_opcode, &assembler, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut fragmented_ping = masked(0x09, b"x");
        assert!(matches!(
            parse_frame(&mut fragmented_ping, &assembler, 1024),
            Err(FrameError::Protocol(_))
        ));
        let mut lone_continuation = masked(0x80, b"x");
        assert!(matches!(
            parse_frame(&mut lone_continuation, &assembler, 1024),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header_alone() {
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_frame(&mut huge, &Assembler::default(), 1024).unwrap_err(),
            FrameError::TooBig
        );
        let mut assembler = Assembler::default();
        assembler.open(true, Vec::new(), &[b'x'; 1000]);
        let mut more = masked(0x00, &[b'x'; 25]);
        assert_eq!(
            parse_frame(&mut more, &assembler, 1024).unwrap_err(),
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
}
