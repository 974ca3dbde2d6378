//! Socket-buffer helpers for tests whose clients stop reading.
#![allow(dead_code)]

use crate::common::Client;

/// Caps the send buffer of the relay's end of `client` (the relay runs in
/// this process, so its socket is one of ours): output the relay cannot
/// write to a client that does not read then shows in the relay's own
/// queue after kilobytes instead of megabytes. (Shrinking the client's
/// receive buffer instead would leave the relay on TCP's real-time
/// persist timer once the client reads again: silly-window avoidance
/// with loopback's 64 KiB segments.)
pub fn small_relay_send_buffer(client: &Client) {
    let (local, peer) = (
        client.stream.local_addr().unwrap(),
        client.stream.peer_addr().unwrap(),
    );
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if sock_addr(fd, libc::getpeername) == Some(local)
            && sock_addr(fd, libc::getsockname) == Some(peer)
        {
            let value: libc::c_int = 4096;
            // SAFETY: a socket descriptor and a pointer to a live c_int.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            return;
        }
    }
    panic!("the relay's end of {local} was not found");
}

type GetName =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn sock_addr(fd: i32, get: GetName) -> Option<std::net::SocketAddr> {
    // SAFETY: sockaddr_in is plain data; the length tells the kernel its size.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid pointers to `addr` and `len`; a non-socket fd just fails.
    let rc = unsafe { get(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some((ip, u16::from_be(addr.sin_port)).into())
}
