//! The `pyrycode-relay` executable: flags, logging, signals, exit codes
//! (SPEC §9: 0 after a graceful shutdown, 1 when a listener fails, 2 for a
//! bad flag or configuration).

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use pyrycode_relay::cli::{normalize_args, Args, Settings};
use pyrycode_relay::{Clock, ManualClock, Relay, SystemClock};

fn main() -> ExitCode {
    let settings = match parse_settings() {
        Ok(settings) => settings,
        Err(reason) => {
            eprintln!("pyrycode-relay: {reason}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_level);
    note_environment();
    raise_fd_limit();
    serve(settings)
}

/// Flags to settings. `--help` and `--version` print and exit 0 here; a
/// bad flag or configuration is one line of reason (SPEC §9: exit 2),
/// without clap's usage hints.
fn parse_settings() -> Result<Settings, String> {
    let args = match Args::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let text = err.to_string();
            let reason = text.lines().next().unwrap_or("invalid arguments");
            return Err(reason.trim_start_matches("error: ").to_string());
        }
    };
    let settings = args.into_settings()?;
    settings.refuse_test_features_in(std::env::var_os("PYRYCODE_RELAY_PRODUCTION").as_deref())?;
    Ok(settings)
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
    let listen = settings.config.listen;
    let clock: Box<dyn Clock> = if settings.manual_clock {
        Box::new(ManualClock::new())
    } else {
        Box::new(SystemClock)
    };
    let mut relay = match Relay::new(settings.config, clock) {
        Ok(relay) => relay,
        Err(err) => {
            error!("listen_failed addr={listen} error={err}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = settings.metrics_listen {
        match relay.listen_metrics(addr) {
            Ok(bound) if settings.manual_clock => warn!(
                "manual_clock_enabled control=http://{bound}/clock/advance note=\"relay time moves only when told to: for tests, never production\""
            ),
            Ok(_) => {}
            Err(err) => {
                error!("listen_failed addr={addr} error={err}");
                return ExitCode::from(1);
            }
        }
    }
    if let Err(err) = relay.handle_signals() {
        error!("signals_failed error={err}");
        return ExitCode::from(1);
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
