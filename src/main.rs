//! The `pyrycode-relay` executable: flags, logging, signals, exit codes
//! (SPEC §9: 0 after a graceful shutdown, 1 when a listener fails or the
//! certificates cannot be served, 2 for a bad flag or configuration).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info, warn};
use pyrycode_relay::acme::{self, cache_dir, Acme, AcmeConfig, ChallengeKind, Challenges};
use pyrycode_relay::boot::{Environment, Privileges};
use pyrycode_relay::cli::{normalize_args, Args};
use pyrycode_relay::push::{Push, PushConfig, ServiceAccountKey};
use pyrycode_relay::settings::{self, ListenerTls, Role, Settings, Tls};
use pyrycode_relay::tls::{self, CertResolver};
use pyrycode_relay::transport::Recipe;
use pyrycode_relay::{handover, Clock, Listen, ManualClock, Origin, Relay, SystemClock};

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
/// capabilities). Any failure is one line of reason (SPEC §9: exit 2).
fn configure(args: Vec<OsString>) -> Result<(Settings, Option<PushConfig>), String> {
    let settings = parse_args(args)?.into_settings(&Environment::of_this_process())?;
    if settings.production {
        Privileges::of_this_process()?.check_production()?;
    }
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
/// that cannot be bound or fails, certificate files that cannot be used or
/// a certificate cache that is not private is exit code 1.
fn serve(settings: Settings, push: Option<PushConfig>) -> ExitCode {
    let certificates = match certificates(&settings) {
        Ok(certificates) => certificates,
        Err(reason) => {
            error!("tls_failed reason=\"{reason}\"");
            return ExitCode::from(1);
        }
    };
    let server_config = certificates
        .as_ref()
        .map(|certificates| tls::server_config(certificates.resolver.clone()));
    let recipe = |listener: &settings::Listener| Recipe {
        proxy_protocol: listener.proxy_protocol,
        tls: match listener.tls {
            ListenerTls::None => None,
            ListenerTls::StaticFiles | ListenerTls::Acme => server_config.clone(),
        },
    };
    let opened = match handover::take_inherited_state() {
        Some(state) => restore(&settings, state, &recipe),
        None => bind(&settings, &recipe),
    };
    let Some((mut relay, listening)) = opened else {
        return ExitCode::from(1);
    };
    if let Some(certificates) = certificates {
        if let Err(reason) = serve_certificates(&mut relay, certificates) {
            error!("tls_failed reason=\"{reason}\"");
            return ExitCode::from(1);
        }
    }
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
    // Last: a supervisor that waits for these lines may signal at once.
    for (bound, listener) in listening {
        log_listening(bound, listener);
    }
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

/// The listeners opened, each with the settings it came from.
type Listening<'a> = Vec<(SocketAddr, &'a settings::Listener)>;

/// A fresh start: binds every listener of the settings and the metrics
/// listener (exit 1 if one cannot be bound).
fn bind<'a>(
    settings: &'a Settings,
    recipe: &dyn Fn(&settings::Listener) -> Recipe,
) -> Option<(Relay, Listening<'a>)> {
    let clock: Box<dyn Clock> = if settings.manual_clock {
        Box::new(ManualClock::new())
    } else {
        Box::new(SystemClock)
    };
    let mut relay = match Relay::unbound(settings.config.clone(), clock) {
        Ok(relay) => relay,
        Err(err) => {
            error!("loop_failed error={err}");
            return None;
        }
    };
    let listening = listen(&mut relay, settings.listeners.iter(), recipe)?;
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
    Some((relay, listening))
}

/// Opens `listeners`, each with its transport recipe.
fn listen<'a>(
    relay: &mut Relay,
    listeners: impl Iterator<Item = &'a settings::Listener>,
    recipe: &dyn Fn(&settings::Listener) -> Recipe,
) -> Option<Listening<'a>> {
    let mut listening = Vec::new();
    for listener in listeners {
        let listen = Listen {
            addr: listener.addr,
            origin: origin(listener.role),
            recipe: recipe(listener),
        };
        match relay.listen(listen) {
            Ok(bound) => listening.push((bound, listener)),
            Err(err) => {
                error!("listen_failed addr={} error={err}", listener.addr);
                return None;
            }
        }
    }
    Some(listening)
}

fn origin(role: Role) -> Origin {
    match role {
        Role::WebSocket => Origin::WebSocket,
        Role::AcmeHttp01 => Origin::AcmeHttp01,
    }
}

/// The new image of an upgrade (SIGUSR2, src/handover): the WebSocket and
/// metrics listeners and the plain connections of the previous image,
/// from the state it left in a memfd; the WebSocket listener gets this
/// image's layers (TLS, PROXY). Other listeners (ACME HTTP-01) are bound
/// anew.
fn restore<'a>(
    settings: &'a Settings,
    state: std::io::Result<Vec<u8>>,
    recipe: &dyn Fn(&settings::Listener) -> Recipe,
) -> Option<(Relay, Listening<'a>)> {
    handover::exec::rename_process();
    let public = settings.websocket_listeners().next()?;
    let restored = state
        .map_err(|err| err.to_string())
        .and_then(|bytes| handover::Snapshot::decode(&bytes).map_err(|err| err.to_string()))
        .and_then(|snapshot| {
            let clock = Box::new(SystemClock);
            Relay::restore_with(settings.config.clone(), clock, snapshot, recipe(public))
                .map_err(|err| err.to_string())
        });
    let mut relay = match restored {
        Ok(relay) => relay,
        Err(why) => {
            error!("handover_failed reason={why:?}");
            return None;
        }
    };
    let others = settings
        .listeners
        .iter()
        .filter(|l| l.role != Role::WebSocket);
    let mut listening = listen(&mut relay, others, recipe)?;
    listening.insert(0, (relay.local_addr(), public));
    Some((relay, listening))
}

/// `listening addr=… serves=… tls=… proxy_protocol=… version=…`.
fn log_listening(bound: SocketAddr, listener: &settings::Listener) {
    let serves = match listener.role {
        Role::WebSocket => "websocket",
        Role::AcmeHttp01 => "acme_http01",
    };
    let tls = match listener.tls {
        ListenerTls::None => "off",
        ListenerTls::StaticFiles => "files",
        ListenerTls::Acme => "acme",
    };
    info!(
        "listening addr={bound} serves={serves} tls={tls} proxy_protocol={} version={}",
        listener.proxy_protocol,
        env!("CARGO_PKG_VERSION")
    );
}

/// Where the TLS listeners' certificates come from: the resolver their
/// config asks, and, with ACME, what its thread needs to start.
struct Certificates {
    resolver: Arc<CertResolver>,
    /// The ACME thread's settings and the challenge responses it will
    /// publish (the resolver answers TLS-ALPN-01 from them).
    acme: Option<(AcmeConfig, Arc<Challenges>)>,
}

/// The TLS listeners' certificates: the files of `--tls-cert` and
/// `--tls-key`, or ACME for `--domain` (its cache directory checked; its
/// thread is started once the listeners are bound). `None` in plain mode.
fn certificates(settings: &Settings) -> Result<Option<Certificates>, String> {
    match &settings.tls {
        Tls::None => Ok(None),
        Tls::Files { cert, key } => {
            let resolver = CertResolver::from_files(cert.clone(), key.clone())
                .map_err(|err| err.to_string())?;
            info!(
                "tls_certificate_loaded cert={} key={}",
                cert.display(),
                key.display()
            );
            Ok(Some(Certificates {
                resolver: Arc::new(resolver),
                acme: None,
            }))
        }
        Tls::Acme(config) => {
            let prepared = cache_dir::prepare(&config.cache_dir).map_err(|err| err.to_string())?;
            info!(
                "acme_cache_dir dir={} {}",
                config.cache_dir.display(),
                match prepared {
                    cache_dir::Prepared::Created => "created=1".to_string(),
                    cache_dir::Prepared::Tightened { was } => format!("tightened_from={was:04o}"),
                    cache_dir::Prepared::Unchanged => "unchanged=1".to_string(),
                }
            );
            let http_listener = settings
                .listeners
                .iter()
                .any(|l| l.role == Role::AcmeHttp01);
            let acme_config = AcmeConfig {
                domain: config.domain.clone(),
                cache_dir: config.cache_dir.clone(),
                directory_url: config.directory_url.clone(),
                email: config.email.clone(),
                ca_root: config.ca_root.clone(),
                challenge_kinds: ChallengeKind::for_listeners(http_listener),
                backoff: acme::Backoff::default(),
            };
            let challenges = Arc::new(Challenges::default());
            let resolver = CertResolver::for_acme(challenges.clone(), None);
            Ok(Some(Certificates {
                resolver: Arc::new(resolver),
                acme: Some((acme_config, challenges)),
            }))
        }
    }
}

/// Hands the certificates to the loop. ACME starts here, once its
/// listeners are bound: the CA may validate as soon as the thread asks it
/// to; a valid cached certificate is served at once.
fn serve_certificates(relay: &mut Relay, certificates: Certificates) -> Result<(), String> {
    let acme = match certificates.acme {
        Some((config, challenges)) => Some(
            Acme::start_with(config, relay.waker(), challenges)
                .map_err(|err| format!("cannot start the ACME thread: {err}"))?,
        ),
        None => None,
    };
    if let Some(cached) = acme.as_ref().and_then(Acme::cached_certificate) {
        certificates.resolver.set_certificate(cached);
    }
    relay.serve_certificates(certificates.resolver, acme);
    Ok(())
}

/// `systemctl reload` (the unit's `ExecReload`) sends SIGHUP, whose default
/// action ends the process: ignored until the loop handles it (it reloads
/// certificate files; with nothing to reload it is ignored there too).
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
