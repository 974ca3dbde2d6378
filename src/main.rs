//! The `pyrycode-relay` executable: flags, logging, signals, exit codes
//! (SPEC §9: 0 after a graceful shutdown, 1 when a listener fails, 2 for a
//! bad flag or configuration).

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use pyrycode_relay::cli::{normalize_args, Args, Settings};
use pyrycode_relay::{handover, Relay, SystemClock};

fn main() -> ExitCode {
    let (check_mode, args) = handover::take_check_flag(std::env::args_os().collect());
    let settings = match parse_settings(args) {
        Ok(settings) => settings,
        Err(reason) => {
            eprintln!("pyrycode-relay: {reason}");
            return ExitCode::from(2);
        }
    };
    if check_mode {
        // An upgrading relay asks what this build is (src/handover/check.rs).
        println!("{}", handover::check::report_line());
        return ExitCode::SUCCESS;
    }
    init_logging(settings.log_level);
    note_environment();
    raise_fd_limit();
    serve(settings)
}

/// Flags to settings. `--help` and `--version` print and exit 0 here; a
/// bad flag or configuration is one line of reason (SPEC §9: exit 2),
/// without clap's usage hints.
fn parse_settings(args: Vec<std::ffi::OsString>) -> Result<Settings, String> {
    let args = match Args::try_parse_from(normalize_args(args)) {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let text = err.to_string();
            let reason = text.lines().next().unwrap_or("invalid arguments");
            return Err(reason.trim_start_matches("error: ").to_string());
        }
    };
    args.into_settings()
}

/// Logs go to stderr, one line per event. Dependencies' own trace output
/// would print frame headers and readiness details: keep them at warnings
/// whatever `--log-level` says.
fn init_logging(level: log::LevelFilter) {
    let _ = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("tungstenite", log::LevelFilter::Warn)
        .with_module_level("mio", log::LevelFilter::Warn)
        .with_utc_timestamps()
        .init();
}

/// The Go relay's environment variables: accepted, and said what they do
/// in this version.
fn note_environment() {
    for (name, meaning) in [
        (
            "PYRYCODE_RELAY_FCM_CREDENTIALS",
            "push is not built yet: push_wake envelopes are dropped",
        ),
        ("PYRYCODE_RELAY_PRODUCTION", "noted; TLS is not built yet"),
        (
            "PYRYCODE_RELAY_SINGLE_INSTANCE",
            "noted; every relay process is a single instance",
        ),
    ] {
        if std::env::var_os(name).is_some() {
            info!("environment name={name} note={meaning:?}");
        }
    }
}

/// Binds the listeners and runs the loop until a graceful shutdown (0);
/// a listener that cannot be bound or fails is exit code 1.
fn serve(settings: Settings) -> ExitCode {
    let relay = match handover::take_inherited_state() {
        Some(state) => restore(settings, state),
        None => bind(settings),
    };
    let Some(mut relay) = relay else {
        return ExitCode::from(1);
    };
    if let Err(err) = relay.handle_signals() {
        error!("signals_failed error={err}");
        return ExitCode::from(1);
    }
    // Blocked by the previous image across its exec: delivered from here.
    handover::unblock_signals();
    match handover::UpgradePlan::from_process() {
        Ok(plan) => relay.enable_upgrades(plan),
        Err(err) => warn!("upgrade_unavailable error={err}"),
    }
    info!(
        "listening addr={} version={}",
        relay.local_addr(),
        env!("CARGO_PKG_VERSION")
    );
    match relay.run() {
        Ok(()) => {
            info!("shutdown_complete");
            ExitCode::SUCCESS
        }
        Err(err) => {
            error!("loop_failed error={err}");
            ExitCode::from(1)
        }
    }
}

/// A fresh start: binds the listeners (exit 1 if one cannot be bound).
fn bind(settings: Settings) -> Option<Relay> {
    let listen = settings.config.listen;
    let mut relay = match Relay::new(settings.config, Box::new(SystemClock)) {
        Ok(relay) => relay,
        Err(err) => {
            error!("listen_failed addr={listen} error={err}");
            return None;
        }
    };
    if let Some(addr) = settings.metrics_listen {
        if let Err(err) = relay.listen_metrics(addr) {
            error!("listen_failed addr={addr} error={err}");
            return None;
        }
    }
    Some(relay)
}

/// The new image of an upgrade (SIGUSR2, src/handover): the listeners and
/// connections of the previous image, from the state it left in a memfd.
fn restore(settings: Settings, state: std::io::Result<Vec<u8>>) -> Option<Relay> {
    handover::exec::rename_process();
    let restored = state
        .map_err(|err| err.to_string())
        .and_then(|bytes| handover::Snapshot::decode(&bytes).map_err(|err| err.to_string()))
        .and_then(|snapshot| {
            Relay::restore(settings.config, Box::new(SystemClock), snapshot)
                .map_err(|err| err.to_string())
        });
    match restored {
        Ok(relay) => Some(relay),
        Err(why) => {
            error!("handover_failed reason={why:?}");
            None
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both: every
/// connection is a descriptor, and distributions start services with a
/// soft limit of 1024 that a relay reaches long before `--max-connections`.
/// (Running out anyway is handled: accepting pauses and resumes.)
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!("fd_limit error={}", std::io::Error::last_os_error());
        return;
    }
    let soft = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    info!(
        "fd_limit soft={} hard={} was={soft}",
        limit.rlim_cur, limit.rlim_max
    );
}
