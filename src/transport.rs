//! The byte transport under a connection's HTTP and WebSocket layers.
//!
//! Today it is plain TCP. TLS (rustls) and a PROXY-protocol reader slot in
//! here as further variants: everything above sees only `Read`, `Write`
//! and a mio `Source`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// One connection's byte stream.
pub enum Transport {
    /// Plain TCP (`--insecure-listen`).
    Plain(TcpStream),
}

impl Transport {
    /// The remote socket address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(stream) => stream.peer_addr(),
        }
    }

    /// Sends FIN after the queued bytes; reading stays possible.
    pub fn shutdown_write(&self) {
        match self {
            Transport::Plain(stream) => {
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
        }
    }
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.deregister(registry),
        }
    }
}
