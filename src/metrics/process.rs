//! The standard `process_*` metrics, read from `/proc/self` at scrape time
//! the way the Prometheus Go client reads them: CPU time, start time and
//! memory from `/proc/self/stat`, boot time from `/proc/stat`, the number
//! of open descriptors and their limit.
//!
//! Counting the descriptors is the one part whose cost grows with the
//! connections. Since Linux 6.2 the size `stat(2)` reports for
//! `/proc/self/fd` is that number, read in constant time; on older kernels
//! (size 0) the directory is listed instead, as the Go client always does.

use std::sync::OnceLock;

/// One reading of the process figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors, if they could be counted.
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`, if it could be read.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no such thing.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let system = System::get()?;
        let mut stats = parse_stat(&stat, system)?;
        stats.open_fds = count_open_fds();
        stats.max_fds = soft_fd_limit();
        Some(stats)
    }
}

/// What does not change while the process runs.
#[derive(Clone, Copy, Debug)]
struct System {
    /// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc` times.
    ticks_per_second: f64,
    /// Bytes per page, the unit of the resident set size.
    page_size: u64,
    /// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
    boot_time: f64,
}

impl System {
    fn get() -> Option<System> {
        static SYSTEM: OnceLock<Option<System>> = OnceLock::new();
        *SYSTEM.get_or_init(|| {
            // SAFETY: sysconf only reads a configuration value.
            let (ticks, page) = unsafe {
                (
                    libc::sysconf(libc::_SC_CLK_TCK),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let boot_time = stat
                .lines()
                .find_map(|line| line.strip_prefix("btime "))?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some(System {
                ticks_per_second: (ticks > 0).then_some(ticks as f64)?,
                page_size: u64::try_from(page).ok().filter(|&p| p > 0)?,
                boot_time: boot_time as f64,
            })
        })
    }
}

/// Parses `/proc/self/stat` (proc(5)): the fields after the command name,
/// which is in parentheses and may itself contain spaces and parentheses.
fn parse_stat(stat: &str, system: System) -> Option<ProcessStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 of proc(5) (`state`), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    let start_ticks = field(22)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / system.ticks_per_second,
        resident_bytes: field(24)? * system.page_size,
        virtual_bytes: field(23)?,
        start_time_seconds: system.boot_time + start_ticks as f64 / system.ticks_per_second,
        open_fds: None,
        max_fds: None,
    })
}

/// The number of open descriptors: the size of `/proc/self/fd` (Linux 6.2
/// and later), else the number of its entries.
fn count_open_fds() -> Option<u64> {
    let size = std::fs::metadata("/proc/self/fd").ok()?.len();
    if size > 0 {
        return Some(size);
    }
    // The listing holds a descriptor of its own, which it lists: leave it out.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// The soft descriptor limit, as `/proc/self/limits` shows it.
fn soft_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: System = System {
        ticks_per_second: 100.0,
        page_size: 4096,
        boot_time: 1_700_000_000.0,
    };

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may
        // give itself.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 104857600 300 18446744073709551615";
        let stats = parse_stat(stat, SYSTEM).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.virtual_bytes, 104_857_600);
        assert_eq!(stats.resident_bytes, 300 * 4096);
        assert_eq!(stats.start_time_seconds, 1_700_000_123.45);
    }

    #[test]
    fn a_truncated_stat_is_no_reading() {
        assert_eq!(parse_stat("4242 (relay) S 1 2 3", SYSTEM), None);
        assert_eq!(parse_stat("no parenthesis", SYSTEM), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let stats = ProcessStats::read().expect("/proc/self");
        assert!(stats.resident_bytes > 0);
        assert!(stats.virtual_bytes >= stats.resident_bytes);
        let before = stats.open_fds.expect("open descriptors");
        let extra: Vec<std::fs::File> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let after = count_open_fds().unwrap();
        drop(extra);
        // Other test threads open and close files too: at least ours.
        assert!(after >= 5, "{before} then {after}");
        assert!(stats.max_fds.unwrap() >= after);
    }
}
