//! The operating-system side of an upgrade: re-executing in place.
//!
//! ```text
//! old image                                          new image (same PID)
//!  SIGUSR2
//!  open(exe, O_PATH)  ── the file checked is the file executed
//!  spawn /proc/self/fd/N --handover-check ARGS ─▶ prints {"state_formats":[1],…}, exits 0
//!  … serving on while it runs (deadline 5 s) …
//!  snapshot ─▶ sealed memfd (no CLOEXEC)
//!  clear FD_CLOEXEC on every listener and connection
//!  block SIGTERM, SIGINT, SIGUSR2
//!  fexecve(N, ARGS, ENV + PYRYCODE_RELAY_HANDOVER=<memfd>) ─▶ main: read the memfd,
//!                                                              validate, restore,
//!                                                              install handlers,
//!                                                              unblock the signals
//! ```
//!
//! The same PID serves before and after, so systemd's `MainPID`, a
//! container's PID 1 and any `kill` keep working. Descriptors without
//! `FD_CLOEXEC` survive `execve`, and so do the signal mask and pending
//! signals, while handlers are reset to their default (which, for
//! SIGTERM, SIGINT and SIGUSR2, is to die): the signals stay blocked from
//! before the exec until the new image has installed its handlers, and a
//! signal sent meanwhile is delivered then. If `fexecve` fails, the old
//! image undoes all of it and serves on.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::check::CHECK_FLAG;

/// The environment variable naming the memfd that holds the state.
pub const STATE_ENV: &str = "PYRYCODE_RELAY_HANDOVER";

/// The signals the relay handles: blocked across the exec (SIGHUP too:
/// `systemctl reload` during an upgrade must not hit the new image before
/// it ignores or handles SIGHUP, whose default action ends the process).
pub const SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2, libc::SIGHUP];

/// What to execute on SIGUSR2: the path the relay was started from (read
/// again at each upgrade, so it is the file there now) and its arguments.
#[derive(Clone, Debug)]
pub struct UpgradePlan {
    pub exe: PathBuf,
    /// The whole argument vector, `argv[0]` included.
    pub args: Vec<OsString>,
}

impl UpgradePlan {
    /// This process's own: `argv` as given, and the executable's path as
    /// started — `argv[0]` when it holds a slash (made absolute against
    /// the working directory, which the relay never changes), so that a
    /// deploy that repoints a symlink is followed; otherwise the
    /// executable the kernel resolved.
    pub fn from_process() -> io::Result<UpgradePlan> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let exe = match args.first() {
            Some(argv0) if argv0.as_bytes().contains(&b'/') => {
                std::env::current_dir()?.join(Path::new(argv0))
            }
            _ => std::env::current_exe()?,
        };
        Ok(UpgradePlan { exe, args })
    }
}

/// The new executable, held open from its check to its exec: the file
/// that passed the check is the file that runs, whatever lands at the
/// path in between.
pub struct Executable {
    fd: OwnedFd,
    pub path: PathBuf,
}

impl Executable {
    /// Opens `path` with `O_PATH` (execute permission is what counts, not
    /// read). Not close-on-exec yet, so that the check can run it through
    /// `/proc/self/fd` even when it is a script.
    pub fn open(path: &Path) -> io::Result<Executable> {
        let cpath = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: open(2) with a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Executable {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Runs it in check mode with `args[1..]`; its report comes on
    /// stdout, its complaints go to our stderr.
    pub fn spawn_check(&self, args: &[OsString]) -> io::Result<Child> {
        let mut command = Command::new(self.proc_path());
        if let Some(argv0) = args.first() {
            command.arg0(argv0);
        }
        command
            .arg(CHECK_FLAG)
            .args(args.iter().skip(1))
            .env_remove(STATE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    }

    /// Replaces this process with the executable: same PID, `args`, this
    /// environment plus [`STATE_ENV`]` = state_fd`. Returns only if the
    /// exec failed.
    pub fn exec(&self, args: &[OsString], state_fd: RawFd) -> io::Error {
        if let Err(err) = set_inherited(&[self.fd.as_raw_fd()], false) {
            return err;
        }
        let argv: Vec<CString> = match args.iter().map(|a| c_string(a)).collect() {
            Ok(argv) => argv,
            Err(err) => return err,
        };
        let mut envp = Vec::new();
        for (name, value) in std::env::vars_os() {
            if name == STATE_ENV {
                continue;
            }
            let mut pair = name;
            pair.push("=");
            pair.push(value);
            match c_string(&pair) {
                Ok(pair) => envp.push(pair),
                Err(err) => return err,
            }
        }
        envp.push(CString::new(format!("{STATE_ENV}={state_fd}")).expect("no NUL"));
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        // SAFETY: both arrays are NUL-terminated lists of pointers to
        // C strings that outlive the call; fexecve returns only on error.
        unsafe { libc::fexecve(self.fd.as_raw_fd(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        io::Error::last_os_error()
    }
}

fn c_string(text: &OsStr) -> io::Result<CString> {
    CString::new(text.as_bytes()).map_err(io::Error::other)
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Writes the state into a sealed memfd that survives `execve` (see
/// [`state_file`] and [`seal_state`]).
pub fn write_state(bytes: &[u8]) -> io::Result<OwnedFd> {
    seal_state(state_file(0)?, bytes)
}

/// A memfd for the state that survives `execve` (no `MFD_CLOEXEC`), made
/// ahead of the pause: `size_hint` bytes of it are allocated now
/// (`fallocate`, best effort), so that writing the state costs the pause
/// no page allocation.
pub fn state_file(size_hint: usize) -> io::Result<File> {
    let name = c"pyrycode-relay-handover";
    // SAFETY: memfd_create with a static name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Ok(len) = libc::off_t::try_from(size_hint) {
        if len > 0 {
            // SAFETY: fallocate on the descriptor just created; a failure
            // only means the pages are allocated when written.
            unsafe { libc::fallocate(fd, 0, 0, len) };
        }
    }
    // SAFETY: a descriptor we just created and own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Writes `bytes` at the start of `file` (from [`state_file`]), cuts it to
/// their length and seals it against writing, growing and shrinking, so
/// the new image reads exactly what was written.
pub fn seal_state(mut file: File, bytes: &[u8]) -> io::Result<OwnedFd> {
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The state the previous image left, if this process is the new image of
/// an upgrade: the memfd named by [`STATE_ENV`], which must be sealed
/// against writing. The variable is removed and the memfd closed.
pub fn take_inherited_state() -> Option<io::Result<Vec<u8>>> {
    let value = std::env::var_os(STATE_ENV)?;
    ARRIVED.store(monotonic_ns(), std::sync::atomic::Ordering::Relaxed);
    // Single-threaded still: nothing else reads the environment now.
    std::env::remove_var(STATE_ENV);
    Some(read_state(&value))
}

fn read_state(value: &OsStr) -> io::Result<Vec<u8>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{STATE_ENV}={value:?}"),
        )
    };
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    if fd < 3 {
        return Err(bad());
    }
    // SAFETY: fcntl only reads the seals; it fails on a bad descriptor.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_WRITE == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("descriptor {fd} is not a sealed hand-over memfd"),
        ));
    }
    // SAFETY: the descriptor is open (F_GET_SEALS succeeded), is ours by
    // inheritance, and nothing else in this process uses it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    // The writer left the shared offset at the end.
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Sets (`true`) or clears close-on-exec on every descriptor of `fds`:
/// `true` lets them survive `execve`.
pub fn set_inherited(fds: &[RawFd], inherited: bool) -> io::Result<()> {
    for &fd in fds {
        let flags = if inherited { 0 } else { libc::FD_CLOEXEC };
        // SAFETY: fcntl on descriptors the relay owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal mask before [`block_signals`], to put back if the exec fails.
pub struct SavedMask(libc::sigset_t);

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigemptyset(&mut set) };
    for signal in SIGNALS {
        // SAFETY: adds a valid signal number to an initialized set.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Blocks [`SIGNALS`]: from here a signal waits, pending, instead of
/// running a handler that `execve` is about to reset to "die".
pub fn block_signals() -> SavedMask {
    let set = handled_set();
    // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialized sets.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    SavedMask(old)
}

/// Puts the mask back as it was (the exec failed).
pub fn restore_signals(saved: SavedMask) {
    // SAFETY: a mask pthread_sigmask gave us.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved.0, std::ptr::null_mut()) };
}

/// Unblocks [`SIGNALS`] once their handlers are installed: a signal sent
/// during the exec is delivered now.
pub fn unblock_signals() {
    let set = handled_set();
    // SAFETY: a valid pointer to an initialized set.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// When this image found an inherited state ([`monotonic_ns`]; 0 if it
/// did not): the end of the exec, for the pause's breakdown in the log.
pub static ARRIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `Instant` reads, and the
/// same in the old and the new image, so the pause can be measured
/// across the exec.
pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data, filled in by clock_gettime.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// This process's CPU time in nanoseconds (user and system, every
/// thread; not reset by `execve`).
pub fn process_cpu_ns() -> u64 {
    // SAFETY: timespec is plain data, filled in by clock_gettime.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// After `fexecve` the kernel names the process after the descriptor
/// (`/proc/PID/comm` would be the fd number): name it after `argv[0]`
/// again, so `ps`, `top` and `pgrep` see the relay.
pub fn rename_process() {
    let Some(argv0) = std::env::args_os().next() else {
        return;
    };
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let mut name: Vec<u8> = name.into_iter().filter(|&b| b != 0).take(15).collect();
    name.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_memfd_is_sealed_and_reads_back() {
        let fd = write_state(b"PYRYHOV1 some state").unwrap();
        let raw = fd.as_raw_fd();
        let mut file = File::from(fd);
        assert!(file.write_all(b"more").is_err(), "sealed against writes");
        let value = OsString::from(raw.to_string());
        std::mem::forget(file); // read_state takes the descriptor over
        assert_eq!(read_state(&value).unwrap(), b"PYRYHOV1 some state");
    }

    #[test]
    fn a_state_file_made_larger_ahead_holds_exactly_the_state() {
        let fd = seal_state(state_file(1 << 20).unwrap(), b"PYRYHOV1 short").unwrap();
        let value = OsString::from(fd.as_raw_fd().to_string());
        std::mem::forget(fd); // read_state takes the descriptor over
        assert_eq!(read_state(&value).unwrap(), b"PYRYHOV1 short");
    }

    #[test]
    fn an_unsealed_or_bad_descriptor_is_refused() {
        let file = tempfile_like();
        let value = OsString::from(file.as_raw_fd().to_string());
        assert!(read_state(&value).is_err());
        assert!(read_state(OsStr::new("1")).is_err());
        assert!(read_state(OsStr::new("seven")).is_err());
    }

    fn tempfile_like() -> File {
        let name = c"not-sealed";
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a descriptor we just created.
        unsafe { File::from_raw_fd(fd) }
    }
}
