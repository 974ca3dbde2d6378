//! The flag rules, one test per rule, without a process (the process-level
//! tests are `tests/boot.rs`).

use super::*;
use std::ffi::OsString;

fn env(pairs: &[(&str, &str)]) -> Environment {
    Environment::from_pairs(pairs)
}

fn settings_in(environment: &Environment, args: &[&str]) -> Result<Settings, String> {
    let argv = normalize_args(
        std::iter::once("relay")
            .chain(args.iter().copied())
            .map(OsString::from),
    );
    Args::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .into_settings(environment)
}

fn settings(args: &[&str]) -> Result<Settings, String> {
    settings_in(&env(&[("HOME", "/home/relay")]), args)
}

/// The refusal of `args`, which must be one line and name `needle`.
fn refusal(args: &[&str], needle: &str) -> String {
    let err = settings(args).expect_err(&format!("{args:?} was accepted"));
    assert!(!err.contains('\n'), "{args:?}: not one line: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    err
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn defaults_are_the_spec_defaults() {
    let settings = settings(&[]).unwrap();
    let config = &settings.config;
    assert_eq!(config.listen, addr("127.0.0.1:8080"));
    assert_eq!(config.grace_period, Duration::from_secs(30));
    assert_eq!(config.max_message_size, 256 * 1024);
    assert_eq!(config.max_connections, 10_000);
    assert_eq!(settings.metrics_listen, Some(addr("127.0.0.1:9090")));
    assert_eq!(settings.tls, Tls::None);
    assert_eq!(settings.host, None);
    assert!(!settings.production && !settings.manual_clock);
    assert_eq!(
        settings.push,
        Push {
            project: None,
            endpoint: "https://fcm.googleapis.com".into(),
            credentials: None,
        }
    );
}

#[test]
fn go_style_flags_and_human_values() {
    let settings = settings(&[
        "-grace-period",
        "500ms",
        "--max-message-size=1MiB",
        "--trust-x-forwarded-for",
        "--metrics-listen",
        "",
    ])
    .unwrap();
    assert_eq!(settings.config.grace_period, Duration::from_millis(500));
    assert_eq!(settings.config.max_message_size, 1 << 20);
    assert!(settings.config.trust_x_forwarded_for);
    assert_eq!(settings.metrics_listen, None);
}

#[test]
fn a_flag_given_twice_takes_its_last_value_like_go() {
    let settings =
        settings(&["--metrics-listen", "", "--metrics-listen", "127.0.0.1:9191"]).unwrap();
    assert_eq!(settings.metrics_listen, Some(addr("127.0.0.1:9191")));
}

// ------------------------------------------------------------------ listeners

#[test]
fn plain_mode_is_one_plain_websocket_listener() {
    for (args, expected) in [
        (&[][..], "127.0.0.1:8080"),
        (&["--insecure-listen", "0.0.0.0:8080"], "0.0.0.0:8080"),
        (&["--insecure-listen", ":8080"], "[::]:8080"),
    ] {
        let settings = settings(args).unwrap();
        assert_eq!(
            settings.listeners,
            vec![Listener {
                addr: addr(expected),
                tls: ListenerTls::None,
                proxy_protocol: false,
                role: Role::WebSocket,
            }],
            "{args:?}"
        );
        assert_eq!(settings.config.listen, addr(expected));
    }
    let settings = settings(&["--insecure-listen", "127.0.0.1:8080", "--proxy-protocol"]).unwrap();
    assert!(settings.listeners[0].proxy_protocol);
}

#[test]
fn domain_alone_is_acme_on_443_with_challenges_on_80() {
    let settings = settings(&["--domain", "Relay.Example.com"]).unwrap();
    assert_eq!(
        settings.listeners,
        vec![
            Listener {
                addr: addr("[::]:443"),
                tls: ListenerTls::Acme,
                proxy_protocol: false,
                role: Role::WebSocket,
            },
            Listener {
                addr: addr("[::]:80"),
                tls: ListenerTls::None,
                proxy_protocol: false,
                role: Role::AcmeHttp01,
            },
        ]
    );
    assert_eq!(
        settings.tls,
        Tls::Acme(Acme {
            domain: "relay.example.com".into(),
            cache_dir: "/home/relay/.pyrycode-relay/certs".into(),
            directory_url: LETS_ENCRYPT_DIRECTORY.into(),
            email: None,
            ca_root: None,
        })
    );
    assert_eq!(settings.host.as_deref(), Some("relay.example.com"));
}

#[test]
fn the_fly_layout_translates_flag_for_flag() {
    let settings = settings(&[
        "--domain",
        "pyrycode-relay.pyryco.de",
        "--cert-cache",
        "/var/lib/relay/autocert",
        "--http-listen=:8080",
        "--https-listen=:8443",
        "--https-proxy-protocol",
        "--acme-email",
        "ops@example.com",
        "--acme-directory",
        "https://127.0.0.1:14000/dir",
        "--acme-ca-root",
        "/etc/pebble/ca.pem",
    ])
    .unwrap();
    let [https, http] = &settings.listeners[..] else {
        panic!("{:?}", settings.listeners)
    };
    assert_eq!(
        (https.addr, https.tls, https.proxy_protocol),
        (addr("[::]:8443"), ListenerTls::Acme, true)
    );
    assert_eq!(
        (http.addr, http.role, http.proxy_protocol),
        (addr("[::]:8080"), Role::AcmeHttp01, false)
    );
    let Tls::Acme(acme) = &settings.tls else {
        panic!("{:?}", settings.tls)
    };
    assert_eq!(acme.cache_dir, PathBuf::from("/var/lib/relay/autocert"));
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.directory_url, "https://127.0.0.1:14000/dir");
    assert_eq!(acme.ca_root, Some(PathBuf::from("/etc/pebble/ca.pem")));
}

#[test]
fn cert_files_serve_tls_and_a_domain_only_checks_the_host() {
    let settings = settings(&[
        "--tls-cert",
        "/etc/relay/cert.pem",
        "--tls-key",
        "/etc/relay/key.pem",
        "--domain",
        "relay.example.com",
        "--https-listen",
        "127.0.0.1:8443",
    ])
    .unwrap();
    assert_eq!(
        settings.listeners,
        vec![Listener {
            addr: addr("127.0.0.1:8443"),
            tls: ListenerTls::StaticFiles,
            proxy_protocol: false,
            role: Role::WebSocket,
        }]
    );
    assert_eq!(
        settings.tls,
        Tls::Files {
            cert: "/etc/relay/cert.pem".into(),
            key: "/etc/relay/key.pem".into(),
        }
    );
    assert_eq!(settings.host.as_deref(), Some("relay.example.com"));
    let no_domain = super::tests::settings(&["--tls-cert", "c", "--tls-key", "k"]).unwrap();
    assert_eq!(no_domain.host, None);
    assert_eq!(no_domain.listeners[0].addr, addr("[::]:443"));
}

#[test]
fn the_cert_cache_defaults_under_home() {
    let no_home = settings_in(&env(&[]), &["--domain", "relay.example.com"]).unwrap();
    let Tls::Acme(acme) = no_home.tls else {
        panic!()
    };
    assert_eq!(acme.cache_dir, PathBuf::from(".pyrycode-relay/certs"));
}

// -------------------------------------------------------------- flag conflicts

#[test]
fn an_explicit_insecure_listen_refuses_every_tls_flag() {
    for flag in [
        &["--domain", "relay.example.com"][..],
        &["--http-listen", ":80"],
        &["--https-listen", ":443"],
        &["--https-proxy-protocol"],
        &["--https-proxy-protocol=false"],
        &["--tls-cert", "c", "--tls-key", "k"],
        &["--tls-key", "k"],
    ] {
        let args: Vec<&str> = ["--insecure-listen", "127.0.0.1:8080"]
            .iter()
            .chain(flag)
            .copied()
            .collect();
        let err = refusal(&args, "--insecure-listen cannot be combined with");
        assert!(err.contains(flag[0].split('=').next().unwrap()), "{err}");
    }
}

#[test]
fn cert_and_key_come_together() {
    refusal(&["--tls-cert", "c"], "--tls-cert needs --tls-key");
    refusal(&["--tls-key", "k"], "--tls-key needs --tls-cert");
    refusal(
        &["--domain", "relay.example.com", "--tls-cert", "c"],
        "--tls-cert needs --tls-key",
    );
}

#[test]
fn tls_flags_without_tls_are_refused() {
    for flag in [
        &["--https-listen", ":8443"][..],
        &["--http-listen", ":8080"],
        &["--https-proxy-protocol"],
    ] {
        refusal(flag, "needs TLS");
    }
    for flag in [
        &["--cert-cache", "/tmp/c"][..],
        &["--acme-directory", "https://127.0.0.1:14000/dir"],
        &["--acme-email", "ops@example.com"],
        &["--acme-ca-root", "/tmp/ca.pem"],
    ] {
        refusal(flag, "needs --domain");
    }
}

#[test]
fn acme_flags_with_cert_files_are_refused() {
    let files = ["--tls-cert", "c", "--tls-key", "k"];
    for flag in [
        &["--cert-cache", "/tmp/c"][..],
        &["--acme-directory", "https://127.0.0.1:14000/dir"],
        &["--acme-email", "ops@example.com"],
        &["--acme-ca-root", "/tmp/ca.pem"],
    ] {
        let args: Vec<&str> = files.iter().chain(flag).copied().collect();
        refusal(&args, "which --tls-cert turns off");
    }
    let args: Vec<&str> = files
        .iter()
        .chain(&["--http-listen", ":80"])
        .copied()
        .collect();
    refusal(&args, "--http-listen serves ACME HTTP-01");
}

#[test]
fn the_plain_proxy_protocol_flag_is_refused_with_tls() {
    refusal(
        &["--domain", "relay.example.com", "--proxy-protocol"],
        "use --https-proxy-protocol",
    );
    refusal(
        &["--tls-cert", "c", "--tls-key", "k", "--proxy-protocol"],
        "use --https-proxy-protocol",
    );
}

#[test]
fn two_listeners_on_one_port_are_refused() {
    refusal(
        &["--domain", "relay.example.com", "--http-listen", ":443"],
        "two listeners on one port",
    );
    refusal(
        &[
            "--domain",
            "relay.example.com",
            "--https-listen",
            "127.0.0.1:9090",
        ],
        "two listeners on one port",
    );
    refusal(&["--insecure-listen", ":9090"], "two listeners on one port");
    assert!(settings(&["--insecure-listen", "127.0.0.2:9090"]).is_ok());
    assert!(settings(&["--insecure-listen", "127.0.0.1:0", "--metrics-listen", ""]).is_ok());
}

#[test]
fn bad_addresses_names_and_urls_are_refused() {
    refusal(
        &["--insecure-listen", "localhost:8080"],
        "--insecure-listen",
    );
    refusal(
        &["--domain", "relay.example.com", "--https-listen", "443"],
        "--https-listen",
    );
    refusal(&["--domain", "https://relay.example.com"], "--domain");
    refusal(&["--domain", ""], "--domain");
    refusal(
        &[
            "--domain",
            "r.example.com",
            "--acme-directory",
            "http://ca.example.com/dir",
        ],
        "--acme-directory",
    );
    refusal(
        &["--domain", "r.example.com", "--acme-email", "nobody"],
        "--acme-email",
    );
    refusal(&["--metrics-listen", "0.0.0.0:9090"], "not a loopback");
    refusal(&["--metrics-listen", "localhost:9090"], "localhost");
    refusal(&["--metrics-listen", "127.0.0.1:0"], "port 0");
}

// --------------------------------------------------------------------- limits

#[test]
fn every_limit_must_be_positive() {
    for flag in [
        "--max-connections",
        "--max-connections-per-ip",
        "--max-phones-per-server",
        "--rate-limit-burst",
        "--max-message-size",
        "--max-header-size",
        "--phone-backlog",
        "--binary-high-water",
        "--binary-low-water",
    ] {
        refusal(&[flag, "0"], &format!("{flag} must be positive"));
    }
    for flag in [
        "--rate-limit-interval",
        "--grace-period",
        "--ping-interval",
        "--pong-timeout",
        "--conflict-probe-timeout",
        "--handshake-timeout",
        "--message-timeout",
        "--write-timeout",
        "--drain-timeout",
    ] {
        refusal(&[flag, "0"], &format!("{flag} must be above zero"));
        refusal(&[flag, "0s"], flag);
    }
}

#[test]
fn low_water_must_be_below_high_water() {
    refusal(&["--binary-low-water", "2MiB"], "--binary-low-water");
    refusal(
        &["--binary-low-water", "1MiB"],
        "must be below --binary-high-water",
    );
    assert!(settings(&["--binary-low-water", "1048575"]).is_ok());
}

// ------------------------------------------------------------ push and clock

#[test]
fn push_flags_and_credentials() {
    let environment = env(&[(
        "PYRYCODE_RELAY_FCM_CREDENTIALS",
        "{\"type\":\"service_account\"}",
    )]);
    let settings = settings_in(
        &environment,
        &[
            "--fcm-project",
            "pyrycode",
            "--fcm-endpoint",
            "http://127.0.0.1:4000/",
        ],
    )
    .unwrap();
    assert_eq!(settings.push.project.as_deref(), Some("pyrycode"));
    assert_eq!(settings.push.endpoint, "http://127.0.0.1:4000");
    assert_eq!(
        settings.push.credentials.as_ref().map(Secret::expose),
        Some("{\"type\":\"service_account\"}")
    );
    assert!(!format!("{settings:?}").contains("service_account"));
    refusal(
        &["--fcm-endpoint", "http://fcm.googleapis.com"],
        "--fcm-endpoint",
    );
    refusal(&["--fcm-project", ""], "--fcm-project");
    let empty = env(&[("PYRYCODE_RELAY_FCM_CREDENTIALS", "")]);
    let err = settings_in(&empty, &[]).unwrap_err();
    assert!(err.contains("PYRYCODE_RELAY_FCM_CREDENTIALS"), "{err}");
}

#[test]
fn the_manual_clock_is_parsed() {
    assert!(settings(&["--manual-clock"]).unwrap().manual_clock);
}

// ----------------------------------------------------- environment, production

#[test]
fn the_environment_switches_are_checked() {
    let err = settings_in(&env(&[("PYRYCODE_RELAY_PRODUCTION", "true")]), &[]).unwrap_err();
    assert!(err.starts_with("PYRYCODE_RELAY_PRODUCTION"), "{err}");
    let err = settings_in(&env(&[("FLY_APP_NAME", "relay")]), &[]).unwrap_err();
    assert!(err.contains("FLY_APP_NAME"), "{err}");
}

#[test]
fn production_refuses_plain_websocket_and_the_manual_clock() {
    let production = env(&[("PYRYCODE_RELAY_PRODUCTION", "1")]);
    for args in [
        &[][..],
        &["--insecure-listen", "127.0.0.1:8080"],
        &["--insecure-listen", "127.0.0.1:8080", "--proxy-protocol"],
    ] {
        let err = settings_in(&production, args).unwrap_err();
        assert!(err.contains("refuses plain WebSocket"), "{err}");
    }
    let tls = ["--domain", "relay.example.com"];
    assert!(settings_in(&production, &tls).unwrap().production);
    let args: Vec<&str> = tls.iter().chain(&["--manual-clock"]).copied().collect();
    let err = settings_in(&production, &args).unwrap_err();
    assert!(err.contains("--manual-clock"), "{err}");
}
