//! The operating-system side of the benchmark: file-descriptor limits, CPU
//! pinning, `/proc` samples of a process, and sockets bound to a chosen
//! loopback source address before they connect.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit. Children spawned afterwards inherit it.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let set = cpu_set(cpu);
    // SAFETY: a valid cpu_set_t of the right size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `cmd`'s process start pinned to `cpu`.
pub fn pin_command(cmd: &mut Command, cpu: usize) {
    let set = cpu_set(cpu);
    // SAFETY: sched_setaffinity is async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            // A CPU outside this process's cpuset: run unpinned.
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
            Ok(())
        });
    }
}

/// Lets timers fire as close to their deadline as the kernel can.
pub fn tighten_timer_slack() {
    // SAFETY: a plain prctl on the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Memory and CPU time of one process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// Resident set, bytes.
    pub rss: u64,
    /// Peak resident set, bytes.
    pub hwm: u64,
    /// utime + stime, microseconds (clock-tick resolution).
    pub cpu_us: u64,
    /// Time on CPU from schedstat, summed over threads, nanoseconds.
    pub sched_ns: u64,
}

impl ProcSample {
    /// A sample of no process, only the time (a `--url` target).
    pub fn unmeasured() -> ProcSample {
        ProcSample {
            at: Instant::now(),
            rss: 0,
            hwm: 0,
            cpu_us: 0,
            sched_ns: 0,
        }
    }
}

/// Samples process `pid` from `/proc`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let (rss, hwm) = (kb("VmRSS:"), kb("VmHWM:"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let cpu_us = ticks * 1_000_000 / clock_ticks();
    let mut sched_ns = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched_ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(ProcSample {
        at,
        rss,
        hwm,
        cpu_us,
        sched_ns,
    })
}

/// The ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<usize>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_232)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Starts a non-blocking connect from `source` (port chosen at connect
/// time, so each source address has its own port space per destination)
/// to `dest`.
pub fn connect_from(source: Ipv4Addr, dest: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let SocketAddr::V4(dest) = dest else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    // SAFETY: socket syscalls on a descriptor this function owns; it is
    // closed on every error path by the OwnedFd below.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let setopt = |level, name| {
            cvt(libc::setsockopt(
                fd,
                level,
                name,
                &one as *const _ as *const libc::c_void,
                optlen,
            ))
        };
        setopt(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)?;
        setopt(libc::IPPROTO_TCP, libc::TCP_NODELAY)?;
        let src = sockaddr_in(SocketAddrV4::new(source, 0));
        let salen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        cvt(libc::bind(
            fd,
            &src as *const _ as *const libc::sockaddr,
            salen,
        ))?;
        let dst = sockaddr_in(dest);
        let rc = libc::connect(fd, &dst as *const _ as *const libc::sockaddr, salen);
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
        }
        let std_stream = std::net::TcpStream::from(owned);
        Ok(mio::net::TcpStream::from_std(std_stream))
    }
}

/// Makes closing `stream` send a reset instead of a FIN (no TIME_WAIT).
pub fn set_linger_zero(stream: &mio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a correctly sized option.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A non-blocking timerfd for sub-millisecond wake-ups of the generator.
pub struct TimerFd {
    fd: std::os::fd::OwnedFd,
}

impl TimerFd {
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: fd is a fresh descriptor we own.
        Ok(TimerFd {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Fires once after `nanos` (at least 1 ns).
    pub fn arm(&self, nanos: u64) {
        let nanos = nanos.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (nanos / 1_000_000_000) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid descriptor and struct.
        unsafe {
            libc::timerfd_settime(self.raw(), 0, &spec, std::ptr::null_mut());
        }
    }

    /// Consumes the expiration count so the next one wakes us again.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer.
        unsafe {
            libc::read(self.raw(), buf.as_mut_ptr() as *mut libc::c_void, 8);
        }
    }
}
