//! The descriptors a snapshot names, checked before any of them is used:
//! each must be open, a socket, listening if
//! the snapshot says it is a listener and not listening otherwise. A
//! restore that passes this check and [`super::Snapshot::validate`] wraps
//! the descriptors; one that fails touches none of them.

use std::io;
use std::os::fd::RawFd;

use super::snapshot::{Snapshot, SnapshotError};

/// Whether `fd` is an open socket, listening or not: one `getsockopt`
/// (`SO_ACCEPTCONN` fails on a closed descriptor and on anything that is
/// not a socket), so that 10,000 connections cost 10,000 system calls
/// inside the pause, not 40,000. A listener is also checked to be a
/// stream socket.
pub fn check_tcp_socket(fd: RawFd, listening: bool) -> Result<(), String> {
    if (sockopt(fd, libc::SO_ACCEPTCONN)? != 0) != listening {
        let what = if listening {
            "not listening"
        } else {
            "listening"
        };
        return Err(format!("descriptor {fd} is {what}"));
    }
    if listening && sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(format!("descriptor {fd} is not a stream socket"));
    }
    Ok(())
}

fn sockopt(fd: RawFd, option: libc::c_int) -> Result<libc::c_int, String> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("descriptor {fd}: {}", io::Error::last_os_error()));
    }
    Ok(value)
}

/// Checks every descriptor of `snapshot`.
pub fn check_all(snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let listeners = snapshot.listeners.iter().map(|l| (l.fd, true));
    let conns = snapshot.conns.iter().map(|c| (c.fd, false));
    for (fd, listening) in listeners.chain(conns) {
        check_tcp_socket(fd, listening).map_err(SnapshotError::Invalid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn sockets_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(check_tcp_socket(listener.as_raw_fd(), true), Ok(()));
        assert_eq!(check_tcp_socket(stream.as_raw_fd(), false), Ok(()));
        assert!(check_tcp_socket(listener.as_raw_fd(), false).is_err());
        assert!(check_tcp_socket(stream.as_raw_fd(), true).is_err());
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(check_tcp_socket(file.as_raw_fd(), false).is_err());
        assert!(check_tcp_socket(9999, false).is_err());
    }
}
