//! The `pyrycode-relay` executable: flags, logging, signals, exit codes
//! (SPEC §9: 0 after a graceful shutdown, 1 when a listener fails, 2 for a
//! bad flag or configuration).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use pyrycode_relay::boot::{Environment, Privileges};
use pyrycode_relay::cli::{normalize_args, Args};
use pyrycode_relay::push::{Push, PushConfig, ServiceAccountKey};
use pyrycode_relay::settings::{self, Settings, Tls};
use pyrycode_relay::{handover, Clock, ManualClock, Relay, SystemClock};

fn main() -> ExitCode {
    let (check_mode, args) = handover::take_check_flag(std::env::args_os().collect());
    let (settings, push) = match configure(args) {
        Ok(configured) => configured,
        Err(reason) => {
            eprintln!("pyrycode-relay: {reason}");
            return ExitCode::from(2);
        }
    };
    if check_mode {
        // An upgrading relay asks what this build is (src/handover/check.rs),
        // after every check a start would run: a build that would refuse to
        // start is refused before the old one hands over.
        println!("{}", handover::check::report_line());
        return ExitCode::SUCCESS;
    }
    init_logging(settings.log_level);
    log_settings(&settings, push.as_ref());
    raise_fd_limit();
    ignore_sighup();
    serve(settings, push)
}

/// Flags, environment and privileges to settings, in the Go relay's order
/// (flags, environment switches, single instance, production rules, root,
/// capabilities); then what is not built yet. Any failure is one line of
/// reason (SPEC §9: exit 2).
fn configure(args: Vec<OsString>) -> Result<(Settings, Option<PushConfig>), String> {
    let settings = parse_args(args)?.into_settings(&Environment::of_this_process())?;
    if settings.production {
        Privileges::of_this_process()?.check_production()?;
    }
    refuse_unbuilt(&settings)?;
    let push = push_config(&settings.push)?;
    Ok((settings, push))
}

/// Push from `PYRYCODE_RELAY_FCM_CREDENTIALS`, `--fcm-project` and
/// `--fcm-endpoint`: off without credentials; credentials that are not a
/// service-account key are a configuration error whose reason never
/// quotes them.
fn push_config(push: &settings::Push) -> Result<Option<PushConfig>, String> {
    let Some(credentials) = &push.credentials else {
        return Ok(None);
    };
    let key = ServiceAccountKey::from_json(credentials.expose().as_bytes())
        .map_err(|err| err.to_string())?;
    PushConfig::new(key, push.project.as_deref(), &push.endpoint)
        .map(Some)
        .map_err(|err| err.to_string())
}

/// `--help` and `--version` print and exit 0 here; a bad flag is one line
/// of reason, without clap's usage hints.
fn parse_args(args: Vec<OsString>) -> Result<Args, String> {
    match Args::try_parse_from(normalize_args(args)) {
        Ok(args) => Ok(args),
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let text = err.to_string();
            let reason = text.lines().next().unwrap_or("invalid arguments");
            Err(reason.trim_start_matches("error: ").to_string())
        }
    }
}

/// Features whose flags are parsed and checked but not wired into the
/// loop yet: refused after every other check, so the checks are tested
/// now. Each line goes when its feature lands.
fn refuse_unbuilt(settings: &Settings) -> Result<(), String> {
    const BEHIND_A_TERMINATOR: &str =
        "; serve plain WebSocket with --insecure-listen behind a TLS terminator";
    let unbuilt = [
        (
            settings.tls != Tls::None,
            "TLS and ACME (--domain, --tls-cert)",
            BEHIND_A_TERMINATOR,
        ),
        (
            settings.listeners.iter().any(|l| l.proxy_protocol),
            "the PROXY protocol (--proxy-protocol, --https-proxy-protocol)",
            BEHIND_A_TERMINATOR,
        ),
    ];
    match unbuilt.iter().find(|(asked, _, _)| *asked) {
        Some((_, what, hint)) => Err(format!("{what}: not built into this version yet{hint}")),
        None => Ok(()),
    }
}

/// Logs go to stderr, one line per event. Dependencies' own trace output
/// would print frame headers and readiness details: keep them at warnings
/// whatever `--log-level` says.
fn init_logging(level: log::LevelFilter) {
    let _ = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("tungstenite", log::LevelFilter::Warn)
        .with_module_level("mio", log::LevelFilter::Warn)
        .with_module_level("ureq", log::LevelFilter::Warn)
        .with_module_level("ureq_proto", log::LevelFilter::Warn)
        .with_module_level("rustls", log::LevelFilter::Warn)
        .with_utc_timestamps()
        .init();
}

/// Says at start what the environment switched on, and loudly what must
/// never reach production.
fn log_settings(settings: &Settings, push: Option<&PushConfig>) {
    if settings.production {
        info!("production_mode on=1");
    }
    match push {
        Some(push) => info!("push_enabled project={}", push.project),
        None => info!("push_off reason=credentials_unset note=\"push_wake envelopes are dropped\""),
    }
}

/// Binds the listeners (or takes over those of the image that upgraded to
/// this one) and runs the loop until a graceful shutdown (0); a listener
/// that cannot be bound or fails is exit code 1.
fn serve(settings: Settings, push: Option<PushConfig>) -> ExitCode {
    let relay = match handover::take_inherited_state() {
        Some(state) => restore(settings, state),
        None => bind(settings),
    };
    let Some(mut relay) = relay else {
        return ExitCode::from(1);
    };
    if let Some(config) = push {
        if let Err(err) = Push::new(config).and_then(|push| {
            relay
                .enable_push(push)
                .map_err(pyrycode_relay::push::PushConfigError::Spawn)
        }) {
            error!("push_failed error={err}");
            return ExitCode::from(1);
        }
    }
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
    let clock: Box<dyn Clock> = if settings.manual_clock {
        Box::new(ManualClock::new())
    } else {
        Box::new(SystemClock)
    };
    let mut relay = match Relay::new(settings.config, clock) {
        Ok(relay) => relay,
        Err(err) => {
            error!("listen_failed addr={listen} error={err}");
            return None;
        }
    };
    if let Some(addr) = settings.metrics_listen {
        match relay.listen_metrics(addr) {
            // Loudly: a relay whose time stands still must never be mistaken
            // for a production one (docs/TESTING.md).
            Ok(bound) if settings.manual_clock => warn!(
                "manual_clock_enabled control=http://{bound}/clock/advance note=\"relay time moves only when told to: for tests, never production\""
            ),
            Ok(_) => {}
            Err(err) => {
                error!("listen_failed addr={addr} error={err}");
                return None;
            }
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

/// `systemctl reload` (the unit's `ExecReload`) sends SIGHUP, whose default
/// action ends the process. Nothing is reloadable yet (the TLS files will
/// be, once the loop serves TLS and reloads them on SIGHUP): until then
/// a reload must leave the relay running.
fn ignore_sighup() {
    // SAFETY: SIG_IGN as the disposition of SIGHUP; no handler runs.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
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
