//! The byte stream under a connection's HTTP and WebSocket layers.
//!
//! A listener's [`Recipe`] says which layers sit between the socket and
//! HTTP; every connection it accepts gets a [`Transport`] built from it:
//!
//! ```text
//! socket ─▶ [PROXY v2 header] ─▶ [TLS (rustls, unbuffered)] ─▶ plaintext to the loop
//!           proxy.rs: optional     tls.rs: optional
//! ```
//!
//! The loop calls one `Transport` for every read and write and asks it only
//! layer-neutral questions: is there output it owes the peer
//! ([`Transport::pending_output`]), have its handshakes finished
//! ([`Transport::is_established`]), did it learn the client's address
//! ([`Transport::take_source`]). Nothing above knows which layers exist.
//!
//! Reads land in the loop's one shared scratch buffer, as for plain TCP:
//! [`Transport::read`] returns the plaintext at the front of it. A layer
//! keeps bytes between reads only while something is partial (a PROXY
//! header cut by the network, a TLS record not yet complete), in a buffer
//! from the loop's pool that goes back as soon as it is empty; ciphertext
//! it owes the peer (a handshake flight, one record being written, an
//! alert, `close_notify`) likewise. An idle connection holds no buffer:
//! a plain one is its socket, a TLS one its socket and rustls's
//! `UnbufferedServerConnection`.
//!
//! The plain path is the socket itself: one `match` on the layers, then
//! `read(2)` or `write(2)` — no copy, no allocation.

mod proxy;
mod tls;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConfig;

use crate::buffer::BufferPool;
use proxy::HeaderStage;
use tls::TlsLayer;

/// Which layers a listener puts under HTTP.
#[derive(Clone, Default)]
pub struct Recipe {
    /// Every connection starts with a PROXY protocol v2 header
    /// (`--proxy-protocol`, `--https-proxy-protocol`).
    pub proxy_protocol: bool,
    /// TLS with this config (`--https-listen`); plain TCP without.
    pub tls: Option<Arc<ServerConfig>>,
}

impl Recipe {
    /// Plain TCP, nothing under HTTP.
    pub fn plain() -> Recipe {
        Recipe::default()
    }

    /// The transport of a connection this listener accepted.
    pub fn start(&self, stream: TcpStream) -> io::Result<Transport> {
        let layer = match (self.proxy_protocol, &self.tls) {
            (false, None) => None,
            (true, tls) => Some(Layer::Proxy(HeaderStage::new(tls.clone()))),
            (false, Some(config)) => Some(Layer::Tls(TlsLayer::new(config.clone(), None)?)),
        };
        Ok(Transport {
            stream,
            layer: layer.map(Box::new),
        })
    }
}

impl std::fmt::Debug for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipe")
            .field("proxy_protocol", &self.proxy_protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One connection's byte stream: the socket and the layer on it, if any
/// (one pointer: a plain connection pays 8 bytes for the layers it does
/// not have).
pub struct Transport {
    stream: TcpStream,
    layer: Option<Box<Layer>>,
}

/// The layer between the socket and HTTP, as it is now. The PROXY stage
/// gives way to TLS (in the same box) or to nothing once its header is in.
// Boxed whole: the PROXY stage lives for one header, and its box then
// holds the TLS layer, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Layer {
    /// Waiting for the PROXY header (or holding the source it named until
    /// the loop takes it).
    Proxy(HeaderStage),
    /// TLS.
    Tls(TlsLayer),
}

/// What one [`Transport::read`] gave.
#[derive(Debug)]
pub enum Input {
    /// `len` bytes of plaintext at the front of the buffer. `more`: the
    /// socket read filled all the room it was given, so the socket may
    /// hold more (a short read drained it).
    Data { len: usize, more: bool },
    /// Bytes were taken from the socket, none of them for the layers above
    /// (a handshake in progress, a partial record): read again.
    Again,
    /// The socket has nothing now.
    WouldBlock,
    /// The peer closed (FIN, or TLS `close_notify`).
    Closed,
    /// The socket failed.
    Failed(io::Error),
    /// A layer ends the connection: close it, writing nothing but what the
    /// transport itself owes the peer ([`Transport::pending_output`]: a
    /// TLS alert, `close_notify`).
    Refused(Refusal),
}

/// Why a layer ends a connection.
#[derive(Debug)]
pub enum Refusal {
    /// The PROXY header is missing, malformed or not one the relay takes.
    ProxyHeader(crate::proxy_protocol::Refusal),
    /// The TLS handshake or a record failed (the alert is owed).
    Tls(rustls::Error),
    /// A TLS handshake message larger than the relay buffers.
    TlsHandshakeTooLarge,
    /// A CA's TLS-ALPN-01 validation handshake finished (RFC 8737: no
    /// application data follows; `close_notify` is owed).
    AcmeValidationDone,
}

impl Transport {
    /// Plain TCP.
    pub fn plain(stream: TcpStream) -> Transport {
        Transport {
            stream,
            layer: None,
        }
    }

    /// Reads into `buf` (the loop's scratch buffer) and returns the
    /// plaintext at its front. `pool` lends buffers for what must wait for
    /// the next read.
    pub fn read(&mut self, buf: &mut [u8], pool: &mut BufferPool) -> Input {
        let Some(layer) = self.layer.as_deref_mut() else {
            return read_plain(&mut self.stream, buf);
        };
        match layer {
            Layer::Tls(tls) => tls.read(&mut self.stream, buf, pool),
            Layer::Proxy(stage) if stage.is_done() => read_plain(&mut self.stream, buf),
            Layer::Proxy(stage) => match stage.read(&mut self.stream, buf, pool) {
                proxy::Step::Input(input) => input,
                proxy::Step::StartTls(mut tls) => {
                    let input = tls.read(&mut self.stream, buf, pool);
                    *layer = Layer::Tls(tls);
                    input
                }
            },
        }
    }

    /// Writes plaintext; returns how much of it was taken. TLS encrypts
    /// one record at a time and only once the previous one is written, so
    /// the ciphertext kept here stays bounded by one record.
    pub fn write(&mut self, plaintext: &[u8], pool: &mut BufferPool) -> io::Result<usize> {
        match self.layer.as_deref_mut() {
            Some(Layer::Tls(tls)) => tls.write(&mut self.stream, plaintext, pool),
            _ => self.stream.write(plaintext),
        }
    }

    /// Writes what the transport owes the peer without plaintext from above
    /// (a handshake flight, the rest of a record, an alert, `close_notify`)
    /// until done or the socket is full; returns the bytes written.
    pub fn flush_pending(&mut self, pool: &mut BufferPool) -> io::Result<usize> {
        match self.layer.as_deref_mut() {
            Some(Layer::Tls(tls)) => tls.flush(&mut self.stream, pool),
            _ => Ok(0),
        }
    }

    /// Bytes the transport owes the peer and has not written yet.
    pub fn pending_output(&self) -> usize {
        match self.layer.as_deref() {
            Some(Layer::Tls(tls)) => tls.pending_output(),
            _ => 0,
        }
    }

    /// Ends our side: TLS sends `close_notify` first; FIN follows once
    /// everything owed is written. Reading stays possible.
    pub fn shutdown_write(&mut self, pool: &mut BufferPool) {
        match self.layer.as_deref_mut() {
            Some(Layer::Tls(tls)) => tls.shutdown_write(&mut self.stream, pool),
            _ => {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
    }

    /// The client's address from the PROXY header, once, when it is in.
    pub fn take_source(&mut self) -> Option<SocketAddr> {
        match self.layer.as_deref_mut()? {
            Layer::Proxy(stage) if stage.is_done() => {
                let source = stage.source();
                self.layer = None;
                source
            }
            Layer::Tls(tls) => tls.take_source(),
            Layer::Proxy(_) => None,
        }
    }

    /// Whether every layer under HTTP has finished its handshake: the
    /// PROXY header is in, the TLS handshake complete. Before that, the
    /// peer has not spoken HTTP and gets no HTTP answer (no 408).
    pub fn is_established(&self) -> bool {
        match self.layer.as_deref() {
            None => true,
            Some(Layer::Proxy(stage)) => stage.is_done(),
            Some(Layer::Tls(tls)) => tls.is_established(),
        }
    }

    /// The handshake a connection is still in, for logs.
    pub fn stage(&self) -> &'static str {
        match self.layer.as_deref() {
            Some(Layer::Proxy(stage)) if !stage.is_done() => "proxy_header",
            Some(Layer::Tls(tls)) if !tls.is_established() => "tls_handshake",
            _ => "http",
        }
    }

    /// Whether the connection is plain TCP (possibly after a PROXY header,
    /// whose source the loop keeps): its whole state is the socket, so it
    /// can be handed to another process. A TLS connection's keys live in
    /// rustls and cannot.
    pub fn is_movable(&self) -> bool {
        self.layer.is_none()
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        matches!(self.layer.as_deref(), Some(Layer::Tls(_)))
    }

    /// Received bytes kept for the next read (a partial header or record).
    pub fn partial_input(&self) -> usize {
        match self.layer.as_deref() {
            None => 0,
            Some(Layer::Proxy(stage)) => stage.partial_len(),
            Some(Layer::Tls(tls)) => tls.partial_input(),
        }
    }

    /// Whether the transport holds a pooled buffer now.
    pub fn holds_buffers(&self) -> bool {
        match self.layer.as_deref() {
            None => false,
            Some(Layer::Proxy(stage)) => stage.holds_buffer(),
            Some(Layer::Tls(tls)) => tls.holds_buffers(),
        }
    }

    /// Heap the layers hold for this connection, as far as the relay can
    /// count it: its boxes and buffers (rustls's own allocations inside the
    /// connection are not visible; about 2 KB after a handshake).
    pub fn bytes_held(&self) -> usize {
        let buffers = match self.layer.as_deref() {
            None => return 0,
            Some(Layer::Proxy(stage)) => stage.buffer_capacity(),
            Some(Layer::Tls(tls)) => tls.buffer_capacity(),
        };
        std::mem::size_of::<Layer>() + buffers
    }

    /// Gives every pooled buffer back (the connection is being dropped).
    pub fn release(&mut self, pool: &mut BufferPool) {
        match self.layer.as_deref_mut() {
            None => {}
            Some(Layer::Proxy(stage)) => stage.release(pool),
            Some(Layer::Tls(tls)) => tls.release(pool),
        }
    }

    /// The remote socket address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Lets go of the socket without closing it (its descriptor now
    /// belongs to someone else: a relay restored from a snapshot). A
    /// TLS session's state is dropped with it.
    pub fn into_raw_fd(self) -> RawFd {
        self.stream.into_raw_fd()
    }
}

impl AsRawFd for Transport {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// One `read(2)`; the plain path of every connection.
fn read_plain(stream: &mut TcpStream, buf: &mut [u8]) -> Input {
    loop {
        return match stream.read(buf) {
            Ok(0) => Input::Closed,
            Ok(len) => Input::Data {
                len,
                more: len == buf.len(),
            },
            Err(err) if err.kind() == ErrorKind::WouldBlock => Input::WouldBlock,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => Input::Failed(err),
        };
    }
}

/// Reads into `buf` as a layer does: `Ok(None)` at EOF.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        return match stream.read(buf) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => Err(err),
        };
    }
}

/// Splits the scratch buffer: plaintext goes to the front half, received
/// bytes for a layer to the back half. Decrypted records are never longer
/// than their ciphertext, so plaintext written to the front never catches
/// up with the ciphertext still to be read in the back.
fn split_scratch(buf: &mut [u8]) -> (&mut [u8], &mut [u8]) {
    let half = buf.len() / 2;
    buf.split_at_mut(half)
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.stream.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.stream.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the relay's end as a mio stream, and the peer's.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    /// Reads until something other than "again" or "would block" comes.
    fn read_until_data(transport: &mut Transport, buf: &mut [u8]) -> Input {
        let mut pool = BufferPool::default();
        for _ in 0..10_000 {
            match transport.read(buf, &mut pool) {
                Input::Again | Input::WouldBlock => std::thread::yield_now(),
                other => return other,
            }
        }
        panic!("nothing arrived");
    }

    #[test]
    fn a_plain_connection_is_movable_and_established_at_once() {
        let (stream, _peer) = pair();
        let transport = Recipe::plain().start(stream).unwrap();
        assert!(transport.is_movable() && transport.is_established());
        assert_eq!((transport.stage(), transport.bytes_held()), ("http", 0));
    }

    #[test]
    fn after_its_header_a_proxied_plain_connection_is_plain_again() {
        let (stream, mut peer) = pair();
        let recipe = Recipe {
            proxy_protocol: true,
            tls: None,
        };
        let mut transport = recipe.start(stream).unwrap();
        assert!(!transport.is_movable() && !transport.is_established());
        assert_eq!(transport.stage(), "proxy_header");
        let source: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let mut bytes = crate::proxy_protocol::encode(source, "10.0.0.1:80".parse().unwrap(), &[]);
        bytes.extend_from_slice(b"GET /");
        peer.write_all(&bytes).unwrap();
        let mut buf = vec![0; crate::config::READ_CHUNK];
        match read_until_data(&mut transport, &mut buf) {
            Input::Data { len, .. } => assert_eq!(&buf[..len], b"GET /"),
            other => panic!("{other:?}"),
        }
        assert!(transport.is_established());
        assert_eq!(transport.take_source(), Some(source));
        assert_eq!(transport.take_source(), None, "given once");
        assert!(transport.is_movable(), "a plain socket again");
        assert_eq!(transport.bytes_held(), 0);
    }

    #[test]
    fn a_tls_connection_is_not_movable() {
        let resolver = Arc::new(crate::tls::CertResolver::for_acme(
            Arc::new(crate::acme::Challenges::default()),
            None,
        ));
        let (stream, _peer) = pair();
        let recipe = Recipe {
            proxy_protocol: false,
            tls: Some(crate::tls::server_config(resolver)),
        };
        let transport = recipe.start(stream).unwrap();
        assert!(transport.is_tls() && !transport.is_movable() && !transport.is_established());
        assert_eq!(transport.stage(), "tls_handshake");
        assert!(
            !transport.holds_buffers(),
            "no buffer before a byte arrives"
        );
    }
}
