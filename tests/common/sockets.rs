//! The kernel side of a test client: delivery barriers, socket buffer
//! sizes, the relay's end of a connection, and the hang-up of `Drop`.
//!
//! A loopback write normally lands in the other socket during the write
//! call, but under load the kernel may defer that to a later softirq: a
//! `settle` can then find nothing to do, and a following `advance` moves
//! time before the relay has read a pong (or before a client sees the ping
//! it must answer). The barriers here wait on the kernel's own count of
//! unacknowledged bytes (`TIOCOUTQ`), which reaches zero only once the
//! receiving socket has the bytes. The relay runs in this process, so its
//! end of every connection is one of our descriptors too.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::{Client, Harness, PATIENCE_TURNS};

/// How long a dropped client waits for its FIN to reach the relay's
/// socket. The kernel delivers it at once unless the relay's receive
/// window is full; this is only the bound after which a test fails.
const FIN_PATIENCE: Duration = Duration::from_secs(10);

impl Client {
    /// Lets the relay turn until the relay's socket has taken (ACKed)
    /// everything this client wrote, then settles. Loopback delivery can
    /// lag behind `write` on a loaded machine; without this a test could
    /// move the clock before the relay has seen the bytes. Fails, naming
    /// the bytes still unacknowledged, if the relay's receive window stays
    /// full: a test that means the relay not to read writes with
    /// [`Client::send_some`] instead.
    pub fn wait_taken(&mut self, h: &mut Harness) {
        let fd = self.stream.as_raw_fd();
        let mut last = None;
        let mut unchanged = 0;
        while let Some(queued @ 1..) = unacknowledged(fd) {
            if last == Some(queued) {
                unchanged += 1;
                if unchanged % 200 == 0 && self.connection_is_gone() {
                    // The relay dropped the connection: nothing to take them.
                    break;
                }
                assert!(
                    unchanged < PATIENCE_TURNS,
                    "the relay's socket never took the last {queued} bytes this client wrote \
                     ({PATIENCE_TURNS} relay turns): its receive window stayed full, so the \
                     relay is not reading this client"
                );
            } else {
                unchanged = 0;
                last = Some(queued);
                // The relay's socket may be holding back its ACK (delayed
                // ACK, up to 40 ms): ask it to send the ACK now.
                if let Some(relay_fd) = self.find_relay_fd() {
                    quick_ack(relay_fd);
                }
            }
            h.turn(Duration::from_millis(1));
        }
        h.settle();
    }

    /// Waits until the relay's socket holds everything this client wrote,
    /// then lets the relay act on it.
    pub fn wait_delivered(&mut self, h: &mut Harness) {
        let fd = self.stream.as_raw_fd();
        for _ in 0..PATIENCE_TURNS {
            // Done once acknowledged, or once the relay has no socket for
            // this connection any more (nothing left to deliver to).
            if unacknowledged(fd) == Some(0) || self.find_relay_fd().is_none() {
                h.settle();
                return;
            }
            h.turn(Duration::from_millis(1));
        }
        panic!(
            "the relay's socket never took this client's last {:?} bytes ({PATIENCE_TURNS} relay turns)",
            unacknowledged(fd)
        );
    }

    /// Waits until this client's socket holds everything the relay's
    /// socket has taken for it (the client must have room to receive).
    pub fn wait_received(&mut self, h: &mut Harness) {
        h.settle();
        for _ in 0..PATIENCE_TURNS {
            match self.relay_unacknowledged() {
                None | Some(0) => return,
                Some(_) => {
                    // Take what arrived and acknowledge it now rather
                    // than after the delayed-ACK timer (up to 40 ms).
                    self.fill();
                    quick_ack(self.stream.as_raw_fd());
                    h.turn(Duration::from_millis(1));
                }
            }
        }
        panic!(
            "this client's socket never took the relay's last {:?} bytes ({PATIENCE_TURNS} relay turns)",
            self.relay_unacknowledged()
        );
    }

    /// Both directions: the relay has read what this client sent, acted on
    /// it, and this client's socket holds what the relay wrote.
    pub fn sync(&mut self, h: &mut Harness) {
        self.wait_delivered(h);
        self.wait_received(h);
    }

    /// Closes this client's socket and waits until the relay's socket has
    /// the FIN, then lets the relay act on it.
    pub fn hang_up(mut self, h: &mut Harness) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.wait_delivered(h);
    }

    /// Bytes the relay's socket of this connection has received but the
    /// relay has not read (`FIONREAD`); `None` once the relay dropped it.
    pub fn relay_unread(&self) -> Option<usize> {
        unread(self.find_relay_fd()?)
    }

    /// Bytes the relay wrote to this connection that this client's socket
    /// has not taken yet; `None` once the relay dropped it.
    pub fn relay_unacknowledged(&self) -> Option<usize> {
        self.find_relay_fd().and_then(unacknowledged)
    }

    /// Waits until neither socket of this connection moves any bytes for
    /// a few real milliseconds (for a client that has stopped reading).
    pub fn wait_still(&mut self, h: &mut Harness) {
        let fd = self.stream.as_raw_fd();
        let state = |c: &Client| (unread(fd), c.relay_unacknowledged(), c.relay_unread());
        let mut last = state(self);
        let mut still = 0;
        for _ in 0..PATIENCE_TURNS {
            h.turn(Duration::from_millis(1));
            let now = state(self);
            if now == last {
                still += 1;
                if still >= 10 {
                    h.settle();
                    return;
                }
            } else {
                still = 0;
                last = now;
            }
        }
        panic!(
            "the connection never became still in {PATIENCE_TURNS} relay turns \
             (unread here, unacknowledged and unread at the relay: {last:?})"
        );
    }

    /// Caps this client's receive buffer (`SO_RCVBUF`): a client that stops
    /// reading pushes back after kilobytes instead of the megabytes
    /// loopback autotuning allows.
    pub fn set_recv_buffer(&self, bytes: usize) {
        set_socket_buffer(self.stream.as_raw_fd(), libc::SO_RCVBUF, bytes);
    }

    /// Caps this client's send buffer (`SO_SNDBUF`).
    pub fn set_send_buffer(&self, bytes: usize) {
        set_socket_buffer(self.stream.as_raw_fd(), libc::SO_SNDBUF, bytes);
    }

    /// Caps the send buffer of the relay's end of this connection.
    pub fn set_relay_send_buffer(&self, bytes: usize) {
        set_socket_buffer(self.relay_fd(), libc::SO_SNDBUF, bytes);
    }

    /// Caps the receive buffer of the relay's end of this connection.
    pub fn set_relay_recv_buffer(&self, bytes: usize) {
        set_socket_buffer(self.relay_fd(), libc::SO_RCVBUF, bytes);
    }

    /// The descriptor of the relay's end of this connection.
    fn relay_fd(&self) -> RawFd {
        self.find_relay_fd()
            .expect("the relay's end of this connection was not found")
    }

    /// The relay's end of this connection, if the relay still has it: the
    /// socket of this process whose peer is this client.
    fn find_relay_fd(&self) -> Option<RawFd> {
        let local = self.stream.local_addr().ok()?;
        let peer = self.stream.peer_addr().ok()?;
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .find(|&fd| {
                socket_addr(fd, libc::getpeername) == Some(local)
                    && socket_addr(fd, libc::getsockname) == Some(peer)
            })
    }

    /// Whether the connection is over at the relay's end: reset, or the
    /// relay no longer has a socket for it.
    fn connection_is_gone(&self) -> bool {
        tcp_state(self.stream.as_raw_fd()) == Some(TCP_CLOSE) || self.find_relay_fd().is_none()
    }

    /// Waits (without the relay's help: the kernel does it) until this
    /// client's FIN is in the relay's socket: the relay's socket has
    /// acknowledged it, or is in a state only a FIN leads to. (It holds its
    /// ACK of a FIN back for its delayed-ACK time, and `TCP_QUICKACK` does
    /// not hurry it while the FIN waits unread in its receive queue.)
    fn wait_fin_arrived(&self) {
        let fd = self.stream.as_raw_fd();
        let deadline = Instant::now() + FIN_PATIENCE;
        let mut relay_fd = None;
        for round in 0u64.. {
            if !matches!(
                tcp_state(fd),
                Some(TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK)
            ) {
                return;
            }
            let queued = unacknowledged(fd).unwrap_or(0);
            if self.may_leave_unread && queued > 1 {
                // Bytes the relay never took are ahead of the FIN (the
                // test made it stop reading): the FIN cannot get there.
                return;
            }
            if round == 3 {
                match self.find_relay_fd() {
                    Some(found) => relay_fd = Some(found),
                    // The relay no longer has this connection.
                    None => return,
                }
            }
            if relay_fd
                .and_then(tcp_state)
                .is_some_and(|state| state != TCP_ESTABLISHED)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the relay's socket never got this client's FIN within {FIN_PATIENCE:?} \
                 ({queued} bytes unacknowledged); a client that leaves bytes the relay does not \
                 read must write them with send_some"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Client {
    /// Hangs up (FIN) and waits until the relay's socket has the FIN: a test that counts the relay's connections right after a
    /// drop must not look before the FIN is there. Fails loudly if it never
    /// is (except while the test is already failing).
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        if !std::thread::panicking() {
            self.wait_fin_arrived();
        }
    }
}

/// TCP states of `tcp_info` (linux/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_CLOSE: u8 = 7;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// The TCP state of socket `fd`.
fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: tcp_info is plain data; the length tells the kernel its size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid pointers to `info` and `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// The IPv4 address `get` (getsockname or getpeername) gives for `fd`.
fn socket_addr(
    fd: RawFd,
    get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_in is plain data; the length tells the kernel its size.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid pointers to `addr` and `len`; a non-socket fd just fails.
    let rc = unsafe { get(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

fn set_socket_buffer(fd: RawFd, option: libc::c_int, bytes: usize) {
    let value = bytes as libc::c_int;
    // SAFETY: a socket descriptor and a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Makes socket `fd` acknowledge what it has received at once.
fn quick_ack(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a socket descriptor and a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Bytes written to socket `fd` that its peer has not acknowledged yet.
fn unacknowledged(fd: RawFd) -> Option<usize> {
    ioctl_count(fd, libc::TIOCOUTQ)
}

/// Bytes socket `fd` has received that nobody has read yet.
fn unread(fd: RawFd) -> Option<usize> {
    ioctl_count(fd, libc::FIONREAD)
}

fn ioctl_count(fd: RawFd, request: libc::c_ulong) -> Option<usize> {
    let mut value: libc::c_int = 0;
    // SAFETY: TIOCOUTQ and FIONREAD write one c_int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd, request, &mut value as *mut libc::c_int) };
    (rc == 0).then_some(value as usize)
}
