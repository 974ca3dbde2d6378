//! The listener table: every listening socket of the loop, what its
//! connections are for ([`Origin`]) and the transport they get
//! ([`Recipe`]: PROXY header, TLS, or plain TCP).
//!
//! Listeners take the mio tokens at the very top of the token space, one
//! each, below nothing: token `usize::MAX - index`. Connection tokens are
//! at most `usize::MAX - 16` (`conns.rs`), the signal and waker tokens sit
//! just above that (`event_loop.rs`), so at most [`MAX_LISTENERS`] fit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use mio::net::TcpListener;
use mio::{Interest, Registry, Token};

use crate::transport::Recipe;

/// At most this many listeners (WebSocket, ACME HTTP-01, metrics, ...).
pub const MAX_LISTENERS: usize = 8;

/// What a listener's connections are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `/v1/server`, `/v1/client` and `/healthz`.
    WebSocket,
    /// `/metrics` only (a loopback address).
    Metrics,
    /// ACME HTTP-01 challenges only (`/.well-known/acme-challenge/…`);
    /// 404 for anything else.
    AcmeHttp01,
}

/// A listener to open.
#[derive(Clone, Debug)]
pub struct Listen {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// What it serves.
    pub origin: Origin,
    /// The layers under HTTP of every connection it accepts.
    pub recipe: Recipe,
}

impl Listen {
    /// A plain-TCP WebSocket listener.
    pub fn plain(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            origin: Origin::WebSocket,
            recipe: Recipe::plain(),
        }
    }
}

/// One open listener.
pub(super) struct Listener {
    pub socket: TcpListener,
    pub origin: Origin,
    pub recipe: Recipe,
    pub addr: SocketAddr,
}

/// Every listener of the loop; the index is its token's offset.
#[derive(Default)]
pub(super) struct Listeners {
    table: Vec<Option<Listener>>,
}

impl Listeners {
    /// Binds `listen` and registers it with the next free token.
    pub fn open(&mut self, registry: &Registry, listen: Listen) -> io::Result<SocketAddr> {
        let socket = TcpListener::bind(listen.addr)?;
        deepen_backlog(&socket);
        self.adopt(registry, socket, listen.origin, listen.recipe)
    }

    /// Registers a listening socket bound elsewhere (handed over by the
    /// image that upgraded to this one) with the next free token.
    pub fn adopt(
        &mut self,
        registry: &Registry,
        mut socket: TcpListener,
        origin: Origin,
        recipe: Recipe,
    ) -> io::Result<SocketAddr> {
        if self.table.len() >= MAX_LISTENERS {
            return Err(io::Error::other("too many listeners"));
        }
        let token = token_of(self.table.len());
        registry.register(&mut socket, token, Interest::READABLE)?;
        let addr = socket.local_addr()?;
        self.table.push(Some(Listener {
            socket,
            origin,
            recipe,
            addr,
        }));
        Ok(addr)
    }

    /// The descriptor of the first listener serving `origin`.
    pub fn fd_of(&self, origin: Origin) -> Option<RawFd> {
        self.table
            .iter()
            .flatten()
            .find(|l| l.origin == origin)
            .map(|l| l.socket.as_raw_fd())
    }

    /// Listeners open.
    pub fn count(&self) -> usize {
        self.table.iter().flatten().count()
    }

    /// Lets go of every listening socket without closing it (a relay
    /// restored in the same process owns them now).
    pub fn forget_all(&mut self) {
        for listener in self.table.iter_mut() {
            if let Some(listener) = listener.take() {
                let _ = listener.socket.into_raw_fd();
            }
        }
    }

    /// The index of the listener `token` names, if it is a listener's.
    pub fn index_of(&self, token: Token) -> Option<usize> {
        let index = usize::MAX - token.0;
        (index < self.table.len()).then_some(index)
    }

    pub fn get(&self, index: usize) -> Option<&Listener> {
        self.table.get(index)?.as_ref()
    }

    /// Indexes of the listeners still open.
    pub fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.table.len()).filter(|&i| self.table[i].is_some())
    }

    /// The address of the first listener serving `origin`.
    pub fn addr_of(&self, origin: Origin) -> Option<SocketAddr> {
        self.table
            .iter()
            .flatten()
            .find(|l| l.origin == origin)
            .map(|l| l.addr)
    }

    /// Closes every listener (shutdown): their tokens are never reused.
    pub fn close_all(&mut self, registry: &Registry) {
        for listener in self.table.iter_mut() {
            if let Some(mut listener) = listener.take() {
                let _ = registry.deregister(&mut listener.socket);
            }
        }
    }
}

/// The token of the listener at `index`.
fn token_of(index: usize) -> Token {
    Token(usize::MAX - index)
}

/// mio listens with a backlog of 128; a burst of reconnecting phones
/// (every phone of a restarted relay at once) overflows that. Listening
/// again on a listening socket only changes its backlog (the kernel caps
/// it at `net.core.somaxconn`).
fn deepen_backlog(listener: &TcpListener) {
    // SAFETY: listen(2) on a descriptor we own; failure leaves the old backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_tokens_stay_clear_of_connections_signals_and_the_waker() {
        let lowest = token_of(MAX_LISTENERS - 1);
        assert!(lowest.0 > super::super::event_loop::SIGNALS.0);
        assert!(lowest.0 > super::super::event_loop::WAKER.0);
    }
}
