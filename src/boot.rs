//! The checks at boot that look at the environment and the process rather
//! than at the flags, as the Go relay makes them. Each failure is one line
//! of reason, and `main` exits 2 with it:
//!
//! - `PYRYCODE_RELAY_PRODUCTION` and `PYRYCODE_RELAY_SINGLE_INSTANCE` are
//!   unset or exactly `1` (not `""`, `true`, ` 1`, `0`): an operator who
//!   believes production mode is on must not be running without it;
//! - `FLY_APP_NAME` set (Fly.io, where scaling to two machines is one
//!   command) without `PYRYCODE_RELAY_SINGLE_INSTANCE=1`: the registry is
//!   in memory, and two replicas would route phones to the wrong one;
//! - in production, not as root and with no effective capability but
//!   `CAP_NET_BIND_SERVICE`.
//!
//! The inputs are gathered into plain structs ([`Environment`],
//! [`Privileges`]) so the rules are tested without touching the process.

use std::ffi::OsString;

/// `PYRYCODE_RELAY_PRODUCTION`.
pub const PRODUCTION: &str = "PYRYCODE_RELAY_PRODUCTION";
/// `PYRYCODE_RELAY_SINGLE_INSTANCE`.
pub const SINGLE_INSTANCE: &str = "PYRYCODE_RELAY_SINGLE_INSTANCE";
/// Set by Fly.io on every machine of an app.
pub const FLY_APP_NAME: &str = "FLY_APP_NAME";
/// The FCM service-account JSON.
pub const FCM_CREDENTIALS: &str = "PYRYCODE_RELAY_FCM_CREDENTIALS";

/// The environment variables the relay reads, as found.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub production: Option<OsString>,
    pub single_instance: Option<OsString>,
    pub fly_app_name: Option<OsString>,
    pub fcm_credentials: Option<OsString>,
    /// `HOME`, for the default `--cert-cache`.
    pub home: Option<OsString>,
}

impl Environment {
    /// Reads this process's environment.
    pub fn of_this_process() -> Environment {
        Environment::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the variables through `get` (the process's environment, or
    /// a test's list).
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Environment {
        Environment {
            production: get(PRODUCTION),
            single_instance: get(SINGLE_INSTANCE),
            fly_app_name: get(FLY_APP_NAME),
            fcm_credentials: get(FCM_CREDENTIALS),
            home: get("HOME"),
        }
    }

    /// An environment holding exactly `pairs` (for unit tests).
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_lookup(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    /// Checks the two switches and the single-instance rule; returns
    /// whether production mode is on.
    pub fn check(&self) -> Result<bool, String> {
        let production = switch(PRODUCTION, self.production.as_ref())?;
        let single_instance = switch(SINGLE_INSTANCE, self.single_instance.as_ref())?;
        let on_fly = self.fly_app_name.as_ref().is_some_and(|v| !v.is_empty());
        if on_fly && !single_instance {
            return Err(format!(
                "{FLY_APP_NAME} is set: on Fly.io a second machine would split the in-memory registry \
                 and route phones to the wrong relay; run one machine and set {SINGLE_INSTANCE}=1 to say so"
            ));
        }
        Ok(production)
    }
}

/// An on/off environment switch: unset is off, exactly `1` is on, anything
/// else is a configuration error.
fn switch(name: &str, value: Option<&OsString>) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(value) if value == "1" => Ok(true),
        Some(value) => Err(format!(
            "{name} must be unset or exactly \"1\", not {value:?}"
        )),
    }
}

/// Who the process runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// Effective user id.
    pub euid: u32,
    /// The effective capability set (`CapEff` of `/proc/self/status`).
    pub capabilities: u64,
}

/// Bit of `CAP_NET_BIND_SERVICE`, the one capability the relay may need
/// (to bind ports 80 and 443 as a non-root user).
pub const CAP_NET_BIND_SERVICE: u32 = 10;

impl Privileges {
    /// Reads the effective uid and `CapEff` of this process.
    pub fn of_this_process() -> Result<Privileges, String> {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|err| {
            format!("cannot read /proc/self/status for the capability check: {err}")
        })?;
        Ok(Privileges {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            capabilities: parse_cap_eff(&status)?,
        })
    }

    /// In production: refuses root and every effective capability but
    /// `CAP_NET_BIND_SERVICE`, naming each one.
    pub fn check_production(&self) -> Result<(), String> {
        if self.euid == 0 {
            return Err(format!(
                "{PRODUCTION}=1 refuses to run as root (euid 0): run as a non-root user \
                 (container USER, systemd DynamicUser=yes) or unset {PRODUCTION}"
            ));
        }
        let extra = self.capabilities & !(1u64 << CAP_NET_BIND_SERVICE);
        if extra != 0 {
            return Err(format!(
                "{PRODUCTION}=1 refuses effective capabilities other than CAP_NET_BIND_SERVICE: {} \
                 (drop them, e.g. --cap-drop=ALL --cap-add=NET_BIND_SERVICE, or CapabilityBoundingSet=CAP_NET_BIND_SERVICE)",
                capability_names(extra).join(", ")
            ));
        }
        Ok(())
    }
}

/// The hexadecimal mask of the `CapEff:` line.
fn parse_cap_eff(status: &str) -> Result<u64, String> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .ok_or("/proc/self/status has no CapEff line")?
        .trim();
    u64::from_str_radix(value, 16).map_err(|_| format!("/proc/self/status: bad CapEff {value:?}"))
}

/// The kernel's names of the capabilities (include/uapi/linux/capability.h),
/// indexed by bit.
const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names of the set bits of `mask`, lowest first (`bit N` for a bit
/// newer than this table).
fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match CAPABILITY_NAMES.get(bit) {
            Some(name) => (*name).to_string(),
            None => format!("bit {bit}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_pairs(pairs)
    }

    #[test]
    fn the_switches_are_unset_or_exactly_one() {
        assert_eq!(env(&[]).check(), Ok(false));
        assert_eq!(env(&[(PRODUCTION, "1")]).check(), Ok(true));
        assert_eq!(env(&[(SINGLE_INSTANCE, "1")]).check(), Ok(false));
        for name in [PRODUCTION, SINGLE_INSTANCE] {
            for bad in ["", "true", " 1", "0", "1 ", "yes"] {
                let err = env(&[(name, bad)]).check().unwrap_err();
                assert!(err.starts_with(name), "{err}");
                assert!(err.contains(&format!("{bad:?}")), "{err}");
            }
        }
    }

    #[test]
    fn fly_needs_the_single_instance_assertion() {
        let err = env(&[(FLY_APP_NAME, "pyrycode-relay")])
            .check()
            .unwrap_err();
        assert!(
            err.contains(FLY_APP_NAME) && err.contains(SINGLE_INSTANCE),
            "{err}"
        );
        assert_eq!(
            env(&[(FLY_APP_NAME, "pyrycode-relay"), (SINGLE_INSTANCE, "1")]).check(),
            Ok(false)
        );
        assert_eq!(env(&[(FLY_APP_NAME, "")]).check(), Ok(false));
        // A malformed bypass is its own error, not a silent "unset".
        let err = env(&[(FLY_APP_NAME, "x"), (SINGLE_INSTANCE, "true")])
            .check()
            .unwrap_err();
        assert!(err.starts_with(SINGLE_INSTANCE), "{err}");
    }

    #[test]
    fn production_refuses_root_and_extra_capabilities() {
        let nobody = |capabilities| Privileges {
            euid: 65534,
            capabilities,
        };
        assert_eq!(nobody(0).check_production(), Ok(()));
        assert_eq!(nobody(1 << CAP_NET_BIND_SERVICE).check_production(), Ok(()));
        let err = nobody((1 << 12) | (1 << 21) | (1 << 10) | (1 << 50))
            .check_production()
            .unwrap_err();
        assert!(
            err.contains("CAP_NET_ADMIN, CAP_SYS_ADMIN, bit 50 "),
            "{err}"
        );
        assert!(!err.contains("CAP_NET_BIND_SERVICE,"), "{err}");
        let root = Privileges {
            euid: 0,
            capabilities: 0,
        };
        assert!(root.check_production().unwrap_err().contains("root"));
    }

    #[test]
    fn cap_eff_is_read_from_the_status_text() {
        let status = "Name:\trelay\nCapInh:\t0000000000000000\nCapEff:\t0000000000000400\n";
        assert_eq!(parse_cap_eff(status), Ok(0x400));
        assert!(parse_cap_eff("Name:\trelay\n").is_err());
        assert!(parse_cap_eff("CapEff:\tzz\n").is_err());
        assert!(Privileges::of_this_process().is_ok());
    }
}
