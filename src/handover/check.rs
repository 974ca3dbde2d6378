//! Check mode: before the old relay hands anything over, it runs the new
//! executable with [`CHECK_FLAG`] and the same arguments. The new build
//! parses the flags as it would to serve (a bad flag is exit 2, as at any
//! start), prints one line — its version and the state formats it reads —
//! and exits 0. The old relay hands over only if that happened within
//! [`CHECK_DEADLINE`] and the list holds the version it writes; otherwise
//! it logs why and serves on as if nothing had happened.
//!
//! An older build that has no check mode refuses the unknown flag (exit
//! 2), so it is never handed a state it cannot read.

use std::ffi::OsString;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::snapshot::{FORMAT_VERSION, READABLE_VERSIONS};

/// The hidden first argument that selects check mode.
pub const CHECK_FLAG: &str = "--handover-check";
/// How long the new executable may take to answer.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// What a build says about itself in check mode.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub version: String,
    pub state_formats: Vec<u32>,
}

/// Removes [`CHECK_FLAG`] when it is the first argument; says whether it
/// was there.
pub fn take_check_flag(mut args: Vec<OsString>) -> (bool, Vec<OsString>) {
    let check = args.get(1).is_some_and(|arg| arg == CHECK_FLAG);
    if check {
        args.remove(1);
    }
    (check, args)
}

/// This build's report, as the line check mode prints.
pub fn report_line() -> String {
    let report = CheckReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        state_formats: READABLE_VERSIONS.to_vec(),
    };
    serde_json::to_string(&report).expect("plain data serializes")
}

/// Judges what the new executable printed: its report, if it reads the
/// format this build writes.
pub fn judge(stdout: &[u8]) -> Result<CheckReport, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    let report: CheckReport = serde_json::from_str(line)
        .map_err(|_| format!("no check report on stdout (got {:?})", truncate(line)))?;
    if !report.state_formats.contains(&FORMAT_VERSION) {
        return Err(format!(
            "version {} reads state formats {:?}, not {FORMAT_VERSION}",
            report.version, report.state_formats
        ));
    }
    Ok(report)
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_builds_report_passes_its_own_judgement() {
        let report = judge(report_line().as_bytes()).unwrap();
        assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn an_unknown_format_or_no_report_is_refused() {
        let older = r#"{"version":"0.0.1","state_formats":[0]}"#;
        assert!(judge(older.as_bytes()).unwrap_err().contains("not 1"));
        assert!(judge(b"").is_err());
        assert!(judge(b"pyrycode-relay 0.0.1\n").is_err());
    }

    #[test]
    fn the_flag_is_taken_only_in_first_place() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let (check, rest) = take_check_flag(args(&["relay", CHECK_FLAG, "--grace-period", "1s"]));
        assert!(check);
        assert_eq!(rest, args(&["relay", "--grace-period", "1s"]));
        let (check, rest) = take_check_flag(args(&["relay", "--x", CHECK_FLAG]));
        assert!(!check);
        assert_eq!(rest.len(), 3);
    }
}
