//! One simulated client connection of the scale test: a blocking
//! WebSocket (tungstenite's client, an implementation independent of the
//! relay's) dialled from its own loopback source address, and the real
//! clients' reconnect back-off.
//!
//! Each simulated peer has an address of its own (127.10.x.y): with the
//! PROXY protocol on, the relays see one client per address and their
//! per-IP limits count each peer, as they would count real phones.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

use tungstenite::client::ClientRequestBuilder;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocket;
use tungstenite::{Error, Message};

/// The response header the test's balancers add (`%[srv_name]`), naming
/// the relay a connection went to. Only the test adds it.
pub const RELAY_HEADER: &str = "x-pyrycode-relay";

/// How long a read waits before the peer looks at its orders again.
pub const READ_TICK: Duration = Duration::from_millis(25);

/// An open WebSocket and the relay the balancer sent it to.
pub struct Open {
    pub ws: WebSocket<TcpStream>,
    pub relay: String,
}

/// Why a dial did not give an open WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// TCP connect failed (the balancer is down).
    Connect(String),
    /// An HTTP status instead of 101 (400 at the balancer, 503 without a
    /// relay, 429 from a relay's limits).
    Status(u16),
    /// Anything else during the handshake.
    Handshake(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Connect(e) => write!(f, "connect: {e}"),
            DialError::Status(s) => write!(f, "HTTP {s}"),
            DialError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

/// The loopback source address of simulated peer number `n` (from 0).
pub fn source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 10, (n / 250) as u8, (n % 250) as u8 + 1)
}

/// A blocking TCP connection from `source` to `dest`.
pub fn connect_from(source: Ipv4Addr, dest: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(dest) = dest else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // closed on every error path and handed to TcpStream on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let local = sockaddr(source, 0);
        let remote = sockaddr(*dest.ip(), dest.port());
        let failed = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0;
        if failed {
            let err = io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Dials `path` on the balancer at `lb` from `source` with `headers`,
/// and completes the WebSocket handshake.
pub fn dial(
    lb: SocketAddr,
    source: Ipv4Addr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Open, DialError> {
    let stream = connect_from(source, lb).map_err(|e| DialError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    // The handshake may wait for a relay that the balancer retries.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let uri = format!("ws://{lb}{path}")
        .parse()
        .map_err(|e| DialError::Handshake(format!("uri: {e}")))?;
    let mut request = ClientRequestBuilder::new(uri);
    for (name, value) in headers {
        request = request.with_header(*name, value.clone());
    }
    let (ws, response) = match tungstenite::client(request, stream) {
        Ok(done) => done,
        Err(HandshakeError::Failure(Error::Http(response))) => {
            return Err(DialError::Status(response.status().as_u16()))
        }
        Err(HandshakeError::Failure(e)) => return Err(DialError::Handshake(e.to_string())),
        Err(HandshakeError::Interrupted(_)) => {
            return Err(DialError::Handshake("timed out".into()))
        }
    };
    let relay = response
        .headers()
        .get(RELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let _ = ws.get_ref().set_read_timeout(Some(READ_TICK));
    Ok(Open { ws, relay })
}

/// What one read gave.
pub enum Read {
    Text(String),
    /// The peer's close frame (1005 when it carried no code).
    Closed(u16),
    /// Nothing within the read tick.
    Idle,
    /// The connection broke without a close frame.
    Broken(String),
}

/// One read with the short tick; pings are answered by tungstenite.
pub fn read(ws: &mut WebSocket<TcpStream>) -> Read {
    match ws.read() {
        Ok(Message::Text(text)) => Read::Text(text.to_string()),
        Ok(Message::Binary(_)) => Read::Broken("binary frame from the relay".into()),
        Ok(Message::Close(frame)) => {
            // Our answering close frame is queued: send it, then let go.
            let _ = ws.flush();
            Read::Closed(frame.map_or(1005, |f| u16::from(f.code)))
        }
        Ok(_) => Read::Idle,
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            // A pong queued by the read is written here.
            let _ = ws.flush();
            Read::Idle
        }
        Err(e) => Read::Broken(e.to_string()),
    }
}

/// Sends one text message; false when the connection is broken.
pub fn send(ws: &mut WebSocket<TcpStream>, text: String) -> bool {
    ws.send(Message::text(text)).is_ok()
}

/// Closes with 1000 and lets go at once.
pub fn close(mut ws: WebSocket<TcpStream>) {
    let _ = ws.close(None);
    let _ = ws.flush();
}

/// The real clients' reconnect back-off: 1, 2, 4 … s (at most 30 s), each
/// ±20 % at random; back to 1 s after a connection that worked.
pub struct Backoff {
    attempt: u32,
    rng: u64,
}

/// The back-off's longest wait, seconds.
const BACKOFF_CAP_S: f64 = 30.0;
/// The jitter, a fraction either way.
const JITTER: f64 = 0.2;

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let base = 2f64.powi(self.attempt.min(16) as i32).min(BACKOFF_CAP_S);
        self.attempt += 1;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(base * (1.0 - JITTER + 2.0 * JITTER * unit))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest the first `attempts` waits can add up to.
    pub fn bound(attempts: u32) -> Duration {
        let total: f64 = (0..attempts)
            .map(|i| 2f64.powi(i as i32).min(BACKOFF_CAP_S))
            .sum();
        Duration::from_secs_f64(total * (1.0 + JITTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_resets() {
        let mut b = Backoff::new(7);
        for base in [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0] {
            let w = b.next_wait().as_secs_f64();
            assert!((base * 0.8..=base * 1.2).contains(&w), "{w} for {base}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(1200));
        assert_eq!(Backoff::bound(3), Duration::from_secs_f64(7.0 * 1.2));
    }

    #[test]
    fn every_peer_has_its_own_source_address() {
        assert_eq!(source(0), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(source(249), Ipv4Addr::new(127, 10, 0, 250));
        assert_eq!(source(250), Ipv4Addr::new(127, 10, 1, 1));
    }
}
