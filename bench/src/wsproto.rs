//! The WebSocket opening handshake for the load generator and the echo
//! server (requests, `101` checks, `Sec-WebSocket-Accept`), the opcodes
//! the simulated peers send, and the generator's cheap random numbers.
//!
//! Frames are not here: the simulated peers and the echo server read with
//! the relay library's `ws::Reader` and write with its `ws::write_*`
//! functions, so the workspace has one WebSocket codec.

/// Opcodes the simulated peers send (`ws::write_client_frame`).
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

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
    fn the_handshake_follows_rfc_6455() {
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
