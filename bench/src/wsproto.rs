//! A minimal RFC 6455 codec for the load generator and the echo server.
//!
//! Clients (simulated phones and binaries) mask every frame they send, as
//! the RFC requires; the echo server sends unmasked frames and accepts only
//! masked ones. Messages are never fragmented by anything in this benchmark,
//! so a non-final data frame is reported as an error instead of reassembled.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One complete frame at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload starts in the buffer.
    pub start: usize,
    /// Where the payload ends (and the next frame begins).
    pub end: usize,
    pub mask: Option<[u8; 4]>,
}

/// Parses the frame at the start of `buf`: `Ok(None)` when incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err("reserved bits set");
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let mut pos = 2;
    let len = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            pos = 4;
            u16::from_be_bytes([buf[2], buf[3]]) as u64
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            pos = 10;
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > (64 << 20) {
        return Err("frame over 64 MiB");
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    let end = pos + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        start: pos,
        end,
        mask,
    }))
}

fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the 4-byte `mask`, eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let m32 = u32::from_ne_bytes(mask) as u64;
    let m64 = m32 | (m32 << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(b) ^ m64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, byte) in rest.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends a masked (client) frame made of `parts` concatenated.
pub fn write_client_frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]], mask: [u8; 4]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    write_header(out, opcode, len, Some(mask));
    let start = out.len();
    for part in parts {
        out.extend_from_slice(part);
    }
    apply_mask(&mut out[start..], mask);
}

/// Appends an unmasked (server) frame.
pub fn write_server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    write_header(out, opcode, payload.len(), None);
    out.extend_from_slice(payload);
}

/// The close code of a close frame's payload (1005 when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// A cheap xorshift generator for mask keys and payload bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// A random 16-byte Sec-WebSocket-Key.
pub fn new_key(rng: &mut Rng) -> String {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    data_encoding::BASE64.encode(&nonce)
}

/// The Sec-WebSocket-Accept value for `key`.
pub fn accept_for(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// The upgrade request of a client.
pub fn upgrade_request(path: &str, host: &str, key: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The end of an HTTP head (after the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The value of header `name` (case-insensitive) in an HTTP head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Checks a `101` answer to a request sent with `key`; the error is the
/// status line (or what is wrong).
pub fn check_upgrade_response(head: &[u8], key: &str) -> Result<(), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let status = text.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("upgrade refused: {status}"));
    }
    match header(text, "sec-websocket-accept") {
        Some(accept) if accept == accept_for(key) => Ok(()),
        _ => Err("bad Sec-WebSocket-Accept".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_round_trip() {
        let mut out = Vec::new();
        let payload = vec![7u8; 300];
        write_client_frame(
            &mut out,
            OP_TEXT,
            &[&payload[..100], &payload[100..]],
            [1, 2, 3, 4],
        );
        let frame = parse_frame(&out).unwrap().unwrap();
        assert!(frame.fin);
        assert_eq!(frame.opcode, OP_TEXT);
        assert_eq!(frame.end, out.len());
        let mut body = out[frame.start..frame.end].to_vec();
        apply_mask(&mut body, frame.mask.unwrap());
        assert_eq!(body, payload);
        assert!(parse_frame(&out[..out.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn server_frames_and_handshake() {
        let mut out = Vec::new();
        write_server_frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        // RFC 6455 section 1.3 example.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        assert!(check_upgrade_response(head, "dGhlIHNhbXBsZSBub25jZQ==").is_ok());
        assert!(check_upgrade_response(b"HTTP/1.1 429 Too Many\r\n\r\n", "x").is_err());
    }
}
