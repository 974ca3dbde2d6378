//! Push wakes end to end, without the loop: the real `Push` facade, its
//! worker threads and HTTP client, against a fake OAuth token endpoint
//! and a fake FCM endpoint on loopback (`tests/fake_http`). Time for
//! admission and token expiry comes from a `ManualClock`; outcomes are
//! awaited through the facade's `mio::Waker`, as the loop would.
//!
//! The service account is a throwaway key in `tests/fixtures`.

mod fake_http;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{BASE64, BASE64URL_NOPAD};
use fake_http::google::{
    fcm_ok, key_json, oauth_server, ACCESS_PREFIX, CLIENT_EMAIL, KEY_ID, PRIVATE_KEY, PROJECT,
};
use fake_http::{FakeServer, Recorded, Reply, Stall};
use mio::{Events, Poll, Token};
use pyrycode_relay::push::{
    credentials, Admission, Cause, CredentialsError, Fingerprint, Limits, Outcome, Push,
    PushConfig, PushConfigError, Refusal, ServiceAccountKey, WakeResult, FCM_SCOPE,
    JWT_BEARER_GRANT, REFRESH_MARGIN,
};
use pyrycode_relay::{Clock, ManualClock};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

const PRIVATE_KEY_PKCS1: &str = include_str!("fixtures/push-test-key-pkcs1.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/push-test-key.pub.pem");
const EC_KEY: &str = include_str!("fixtures/push-test-ec-key.pem");
const WAKER: Token = Token(7);
/// Device tokens in these tests start with this.
const DEVICE_PREFIX: &str = "devtok-";
/// FCM's free text in the fake error replies; it must never be logged.
const FCM_FREE_TEXT: &str = "Requested entity was not found for devtok";

// ---- the fake service account and endpoints ------------------------------

fn fcm_error(status: u16, error_status: &str, error_code: &str) -> String {
    json!({"error": {"code": status, "message": FCM_FREE_TEXT, "status": error_status, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
    ]}})
    .to_string()
}

/// The device token in an FCM request body.
fn device_token(request: &Recorded) -> String {
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    body["message"]["token"].as_str().unwrap().to_owned()
}

// ---- the facade under test -----------------------------------------------

/// `Push` against a token URI and an FCM endpoint, with a manual clock
/// and a poll its waker is registered with.
struct Harness {
    push: Push,
    poll: Poll,
    clock: ManualClock,
}

impl Harness {
    fn new(token_uri: &str, fcm: &str, tune: impl FnOnce(&mut PushConfig)) -> Harness {
        init_logger();
        let key =
            ServiceAccountKey::from_json(key_json(PRIVATE_KEY, token_uri).as_bytes()).unwrap();
        let mut config = PushConfig::new(key, None, fcm).unwrap();
        tune(&mut config);
        let push = Push::new(config).unwrap();
        let poll = Poll::new().unwrap();
        push.register(poll.registry(), WAKER).unwrap();
        Harness {
            push,
            poll,
            clock: ManualClock::new(),
        }
    }

    fn with(oauth: &FakeServer, fcm: &FakeServer) -> Harness {
        Harness::new(&oauth.url("/token"), &fcm.url(""), |_| {})
    }

    fn wake(&mut self, server_id: &str, token: &str) -> Admission {
        let raw = json!({"platform": "fcm", "token": token}).to_string();
        self.push
            .request(server_id, raw.as_bytes(), self.clock.now())
    }

    /// Waits (through the waker) for `n` outcomes, and logs each as the
    /// loop does.
    fn outcomes(&mut self, n: usize) -> Vec<Outcome> {
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        while got.len() < n {
            self.poll
                .poll(&mut events, Some(Duration::from_secs(60)))
                .unwrap();
            assert!(
                !events.is_empty(),
                "no outcome arrived (got {} of {n})",
                got.len()
            );
            assert!(events.iter().all(|event| event.token() == WAKER));
            got.extend(self.push.take_outcomes());
        }
        got.iter().for_each(Outcome::log);
        assert_eq!(got.len(), n, "more outcomes than wakes");
        got
    }

    fn outcome(&mut self) -> Outcome {
        self.outcomes(1).remove(0)
    }
}

fn by_token(outcomes: Vec<Outcome>, tokens: &[&str]) -> Vec<Outcome> {
    let mut map: HashMap<Fingerprint, Outcome> =
        outcomes.into_iter().map(|o| (o.fingerprint, o)).collect();
    tokens
        .iter()
        .map(|t| {
            map.remove(&Fingerprint::of(t))
                .expect("an outcome per token")
        })
        .collect()
}

// ---- a log that captures everything, for the secret scan -----------------

struct Capture(Mutex<String>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let mut all = self.0.lock().unwrap();
        let _ = writeln!(
            all,
            "{} {} {}",
            record.level(),
            record.target(),
            record.args()
        );
    }
    fn flush(&self) {}
}

static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();

/// Every test logs into one buffer, at every level (the HTTP and TLS
/// libraries' debug and trace lines included).
fn init_logger() -> &'static Capture {
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(String::new()))));
        log::set_logger(capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        capture
    })
}

fn captured() -> String {
    init_logger().0.lock().unwrap().clone()
}

// ---- JWT helpers ------------------------------------------------------------

/// The form fields of an `application/x-www-form-urlencoded` body.
fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The DER inside a PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    let base64: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    BASE64.decode(base64.as_bytes()).unwrap()
}

fn json_part(part: &str) -> Value {
    serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- the request shapes -----------------------------------------------------

#[test]
fn token_grant_and_fcm_message_have_the_exact_shape() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    assert_eq!(harness.wake("srv-1", "devtok-shape"), Admission::Admitted);
    let outcome = harness.outcome();

    let grant = oauth.next_request();
    assert_eq!(
        (grant.method.as_str(), grant.path.as_str()),
        ("POST", "/token")
    );
    assert_eq!(
        grant.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let fields = form(grant.body_str());
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert_eq!(fields["grant_type"], JWT_BEARER_GRANT);
    assert_eq!(fields["assertion"].split('.').count(), 3);

    let send = fcm.next_request();
    assert_eq!(send.method, "POST");
    assert_eq!(send.path, "/v1/projects/test-project/messages:send");
    assert_eq!(
        send.header("authorization"),
        Some("Bearer ya29.fake-access-1")
    );
    assert_eq!(send.header("content-type"), Some("application/json"));
    assert_eq!(
        send.body_str(),
        r#"{"message":{"token":"devtok-shape","android":{"priority":"HIGH"}}}"#
    );

    assert_eq!(outcome.label(), "sent");
    assert_eq!(outcome.server_id, "srv-1");
    assert_eq!(outcome.fingerprint, Fingerprint::of("devtok-shape"));
    assert_eq!(
        outcome.result,
        WakeResult::Sent {
            message_id: Some("projects/test-project/messages/0:1700%abc".into())
        }
    );
    assert_eq!(harness.push.in_flight(), 0);
}

#[test]
fn the_assertion_verifies_with_the_public_half_and_its_claims_are_right() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    assert_eq!(harness.wake("srv-1", "devtok-jwt"), Admission::Admitted);
    harness.outcome();
    let assertion = form(oauth.next_request().body_str())["assertion"].clone();
    let parts: Vec<&str> = assertion.split('.').collect();
    let (header, claims, signature) = (parts[0], parts[1], parts[2]);

    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pem_der(PUBLIC_KEY));
    let signed = format!("{header}.{claims}");
    let signature = BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap();
    public
        .verify(signed.as_bytes(), &signature)
        .expect("RS256 signature verifies with the key's public half");
    let forged = format!("{header}.{}", BASE64URL_NOPAD.encode(br#"{"iss":"x"}"#));
    assert!(public.verify(forged.as_bytes(), &signature).is_err());

    assert_eq!(
        json_part(header),
        json!({"alg": "RS256", "typ": "JWT", "kid": KEY_ID})
    );
    let claims = json_part(claims);
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], FCM_SCOPE);
    assert_eq!(claims["aud"], oauth.url("/token"));
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);
    // Issued now on the wall clock, give or take the 10 s skew allowance.
    let now = unix_now();
    assert!(iat <= now && now - iat < 600, "iat {iat}, now {now}");
    assert_eq!(claims.as_object().unwrap().len(), 5, "{claims}");
}

// ---- the access-token cache -------------------------------------------------

#[test]
fn one_token_fetch_serves_several_sends() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    let tokens = ["devtok-a", "devtok-b", "devtok-c", "devtok-d", "devtok-e"];
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(
            harness.wake(&format!("srv-{i}"), token),
            Admission::Admitted
        );
    }
    let outcomes = harness.outcomes(tokens.len());
    assert!(outcomes.iter().all(|o| o.label() == "sent"), "{outcomes:?}");
    assert_eq!(oauth.hits(), 1, "one token for all the sends");
    assert_eq!(fcm.hits(), 5);
    let bearers: Vec<_> = fcm
        .drain()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert!(
        bearers.iter().all(|b| b == "Bearer ya29.fake-access-1"),
        "{bearers:?}"
    );
}

#[test]
fn the_token_is_refreshed_once_the_manual_clock_nears_its_expiry() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    assert_eq!(harness.wake("srv-1", "devtok-1"), Admission::Admitted);
    harness.outcome();
    assert_eq!(oauth.hits(), 1);

    // Still good until REFRESH_MARGIN before its hour is up.
    harness
        .clock
        .advance(Duration::from_secs(3600) - REFRESH_MARGIN - Duration::from_secs(1));
    assert_eq!(harness.wake("srv-1", "devtok-2"), Admission::Admitted);
    harness.outcome();
    assert_eq!(oauth.hits(), 1);

    harness.clock.advance(Duration::from_secs(2));
    assert_eq!(harness.wake("srv-1", "devtok-3"), Admission::Admitted);
    assert_eq!(harness.outcome().label(), "sent");
    assert_eq!(oauth.hits(), 2, "a new token after expiry");
    let bearers: Vec<_> = fcm
        .drain()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        bearers,
        [
            "Bearer ya29.fake-access-1",
            "Bearer ya29.fake-access-1",
            "Bearer ya29.fake-access-2"
        ]
    );
}

#[test]
fn a_401_from_fcm_drops_the_cached_token() {
    let oauth = oauth_server(3600);
    let fcm = FakeServer::start(|request| match request.header("authorization") {
        Some("Bearer ya29.fake-access-1") => Reply::json(
            401,
            &fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
        ),
        _ => Reply::json(200, r#"{"name":"projects/test-project/messages/2"}"#),
    });
    let mut harness = Harness::with(&oauth, &fcm);
    assert_eq!(harness.wake("srv-1", "devtok-1"), Admission::Admitted);
    let first = harness.outcome();
    assert_eq!(first.label(), "send_failed");
    assert_eq!(harness.wake("srv-1", "devtok-2"), Admission::Admitted);
    assert_eq!(harness.outcome().label(), "sent");
    assert_eq!(oauth.hits(), 2);
}

// ---- error classification ---------------------------------------------------

#[test]
fn fcm_replies_are_classified_and_a_redirect_is_not_followed() {
    let elsewhere = FakeServer::start(|_| Reply::json(200, "{}"));
    let location = elsewhere.url("/v1/projects/test-project/messages:send");
    let padding = "x".repeat(fake_limit_padding());
    let fcm = FakeServer::start(move |request| match device_token(request).as_str() {
        "devtok-400" => Reply::json(400, &fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")),
        "devtok-404" => Reply::json(404, &fcm_error(404, "NOT_FOUND", "UNREGISTERED")),
        "devtok-500" => Reply::json(500, "<html>Internal Server Error</html>"),
        "devtok-302" => Reply::Status(302, vec![("Location", location.clone())], Vec::new()),
        "devtok-big" => {
            // UNREGISTERED, but past the 4 KiB the relay reads.
            let error: Value =
                serde_json::from_str(&fcm_error(404, "NOT_FOUND", "UNREGISTERED")).unwrap();
            Reply::json(
                404,
                &format!(r#"{{"padding":"{padding}","error":{}}}"#, error["error"]),
            )
        }
        _ => Reply::json(200, r#"{"name":"projects/test-project/messages/1"}"#),
    });
    let oauth = oauth_server(3600);
    let mut harness = Harness::with(&oauth, &fcm);
    let tokens = [
        "devtok-400",
        "devtok-404",
        "devtok-500",
        "devtok-302",
        "devtok-big",
    ];
    for token in tokens {
        assert_eq!(harness.wake("srv-1", token), Admission::Admitted);
    }
    let outcomes = by_token(harness.outcomes(tokens.len()), &tokens);
    let failed =
        |status: u16, fcm_status: Option<&str>, fcm_error: Option<&str>| WakeResult::SendFailed {
            status: Some(status),
            cause: Cause::Status,
            fcm_status: fcm_status.map(str::to_owned),
            fcm_error: fcm_error.map(str::to_owned),
        };
    assert_eq!(
        outcomes[0].result,
        failed(400, Some("INVALID_ARGUMENT"), Some("INVALID_ARGUMENT"))
    );
    assert_eq!(
        outcomes[1].result,
        WakeResult::Unregistered {
            status: 404,
            fcm_status: Some("NOT_FOUND".into())
        }
    );
    assert_eq!(outcomes[2].result, failed(500, None, None));
    assert_eq!(outcomes[3].result, failed(302, None, None));
    assert_eq!(outcomes[4].result, failed(404, None, None));
    let labels: Vec<_> = outcomes.iter().map(Outcome::label).collect();
    assert_eq!(
        labels,
        [
            "send_failed",
            "unregistered",
            "send_failed",
            "send_failed",
            "send_failed"
        ]
    );
    assert_eq!(elsewhere.hits(), 0, "the redirect was not followed");
}

/// Enough padding to push FCM's error past the 4 KiB read limit.
fn fake_limit_padding() -> usize {
    pyrycode_relay::push::REPLY_LIMIT + 100
}

#[test]
fn token_endpoint_failures_are_token_fetch_failed_and_fcm_is_not_called() {
    let fcm = fcm_ok();
    let refusing = FakeServer::start(|_| {
        Reply::json(
            401,
            r#"{"error":"invalid_grant","error_description":"devtok"}"#,
        )
    });
    let tokenless = FakeServer::start(|_| Reply::json(200, r#"{"token_type":"Bearer"}"#));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/token", listener.local_addr().unwrap())
    };
    let cases = [
        (refusing.url("/token"), Some(401), Cause::Status),
        (tokenless.url("/token"), Some(200), Cause::BadReply),
        (closed, None, Cause::Connect),
    ];
    for (token_uri, status, cause) in cases {
        let mut harness = Harness::new(&token_uri, &fcm.url(""), |_| {});
        assert_eq!(harness.wake("srv-1", "devtok-t"), Admission::Admitted);
        let outcome = harness.outcome();
        assert_eq!(
            outcome.result,
            WakeResult::TokenFetchFailed { status, cause },
            "{token_uri}"
        );
        assert_eq!(outcome.label(), "token_fetch_failed");
    }
    assert_eq!(fcm.hits(), 0);
}

#[test]
fn a_stalled_fcm_call_ends_at_the_http_timeout() {
    let stall = Stall::default();
    let held = stall.clone();
    let fcm = FakeServer::start(move |_| Reply::Stall(held.clone()));
    let oauth = oauth_server(3600);
    let mut harness = Harness::new(&oauth.url("/token"), &fcm.url(""), |config| {
        // Long enough that the token fetch, under any load, is not the
        // call that times out; short enough not to slow the suite.
        config.http_timeout = Duration::from_secs(1);
    });
    assert_eq!(harness.wake("srv-1", "devtok-slow"), Admission::Admitted);
    let outcome = harness.outcome();
    stall.release();
    assert_eq!(
        outcome.result,
        WakeResult::SendFailed {
            status: None,
            cause: Cause::Timeout,
            fcm_status: None,
            fcm_error: None
        }
    );
}

// ---- admission --------------------------------------------------------------

#[test]
fn refused_objects_are_dropped_before_any_call() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    let now = harness.clock.now();
    let cases: [(&[u8], Refusal); 4] = [
        (
            br#"{"platform":"apns","token":"devtok-x"}"#,
            Refusal::UnsupportedPlatform,
        ),
        (br#"{"platform":"fcm","token":""}"#, Refusal::EmptyToken),
        (br#"["fcm","devtok-x"]"#, Refusal::Malformed),
        (
            br#"{"platform":"fcm","token":"devtok-x""#,
            Refusal::Malformed,
        ),
    ];
    for (raw, why) in cases {
        assert_eq!(
            harness.push.request("srv-1", raw, now),
            Admission::Refused(why)
        );
        why.log("srv-1");
    }
    assert_eq!(harness.push.in_flight(), 0);
    assert_eq!(
        harness.push.tracked_server_ids(),
        0,
        "refused objects cost no token"
    );
    assert_eq!((oauth.hits(), fcm.hits()), (0, 0));
}

#[test]
fn each_server_id_gets_a_burst_of_six_then_one_per_ten_seconds() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut harness = Harness::with(&oauth, &fcm);
    for i in 0..6 {
        assert_eq!(
            harness.wake("srv-a", &format!("devtok-{i}")),
            Admission::Admitted
        );
    }
    assert_eq!(
        harness.wake("srv-a", "devtok-6"),
        Admission::Refused(Refusal::RateLimited)
    );
    assert_eq!(harness.wake("srv-b", "devtok-b"), Admission::Admitted);
    harness.clock.advance(Duration::from_secs(9));
    assert_eq!(
        harness.wake("srv-a", "devtok-7"),
        Admission::Refused(Refusal::RateLimited)
    );
    harness.clock.advance(Duration::from_secs(1));
    assert_eq!(harness.wake("srv-a", "devtok-8"), Admission::Admitted);
    harness.outcomes(8);
    assert_eq!(fcm.hits(), 8, "refused wakes were dropped, not queued");

    // Idle server-ids are forgotten once their bucket is full again.
    assert_eq!(harness.push.tracked_server_ids(), 2);
    harness.clock.advance(Duration::from_secs(60));
    harness.push.sweep(harness.clock.now());
    assert_eq!(harness.push.tracked_server_ids(), 0);
}

#[test]
fn a_stalled_fcm_endpoint_never_blocks_request_and_the_in_flight_cap_holds() {
    let stall = Stall::default();
    let held = stall.clone();
    let fcm = FakeServer::start(move |_| Reply::Stall(held.clone()));
    let oauth = oauth_server(3600);
    let mut harness = Harness::new(&oauth.url("/token"), &fcm.url(""), |config| {
        config.workers = 1;
        config.limits = Limits {
            max_in_flight: 3,
            ..Limits::default()
        };
    });
    for i in 0..3 {
        assert_eq!(
            harness.wake(&format!("srv-{i}"), &format!("devtok-{i}")),
            Admission::Admitted
        );
    }
    // The one worker is now held inside its FCM call...
    fcm.next_request();
    // ...and the loop is not: every further wake is refused at once.
    for i in 3..200 {
        assert_eq!(
            harness.wake(&format!("srv-{i}"), &format!("devtok-{i}")),
            Admission::Refused(Refusal::InFlightCap)
        );
    }
    assert_eq!(harness.push.in_flight(), 3);
    assert_eq!(harness.push.take_outcomes().count(), 0);

    stall.release();
    let outcomes = harness.outcomes(3);
    assert!(
        outcomes.iter().all(|o| o.label() == "send_failed"),
        "{outcomes:?}"
    );
    assert_eq!(harness.push.in_flight(), 0);
    assert_eq!(harness.wake("srv-0", "devtok-again"), Admission::Admitted);
}

// ---- credentials and configuration ------------------------------------------

#[test]
fn unset_credentials_mean_push_off() {
    assert!(credentials::from_value(None).unwrap().is_none());
    let json = key_json(PRIVATE_KEY, "https://oauth2.googleapis.com/token");
    let key = credentials::from_value(Some(OsString::from(json)))
        .unwrap()
        .unwrap();
    assert_eq!(key.project_id(), Some(PROJECT));
    assert_eq!(
        key.token_uri().as_str(),
        "https://oauth2.googleapis.com/token"
    );
}

#[test]
fn pkcs1_keys_and_a_missing_token_uri_are_accepted() {
    let mut key: Value = serde_json::from_str(&key_json(PRIVATE_KEY_PKCS1, "")).unwrap();
    key.as_object_mut().unwrap().remove("token_uri");
    let key = ServiceAccountKey::from_json(key.to_string().as_bytes()).unwrap();
    assert_eq!(
        key.token_uri().as_str(),
        "https://oauth2.googleapis.com/token"
    );
}

#[test]
fn bad_credentials_are_refused_without_quoting_them() {
    let good: Value = serde_json::from_str(&key_json(
        PRIVATE_KEY,
        "https://oauth2.googleapis.com/token",
    ))
    .unwrap();
    let with = |field: &str, value: Value| {
        let mut key = good.clone();
        key[field] = value;
        key.to_string()
    };
    let truncated_key = PRIVATE_KEY.replace("-----END PRIVATE KEY-----", "");
    let cases: Vec<(String, &str)> = vec![
        (format!("{{{PRIVATE_KEY}"), "not a JSON object"),
        ("[]".into(), "not a JSON object"),
        (
            with("type", json!("authorized_user")),
            "type is not service_account",
        ),
        (with("client_email", json!("")), "client_email is missing"),
        (
            with("private_key", json!(truncated_key)),
            "not a PEM private key",
        ),
        (
            with("private_key", json!("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC")),
            "not a PEM private key",
        ),
        (
            with("private_key", json!(EC_KEY)),
            "not a usable RSA key (WrongAlgorithm)",
        ),
        (
            with("token_uri", json!("http://oauth2.googleapis.com/token")),
            "token_uri refused",
        ),
        (with("private_key", json!(7)), "not a JSON object"),
    ];
    let secret_lines: Vec<&str> = PRIVATE_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (value, reason) in cases {
        let error = credentials::from_value(Some(OsString::from(value.clone()))).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(reason), "{text:?} should say {reason:?}");
        assert!(text
            .starts_with("PYRYCODE_RELAY_FCM_CREDENTIALS is not a usable service-account key: "));
        assert!(text.ends_with("(value withheld)"));
        assert!(
            !text.contains(CLIENT_EMAIL) && !text.contains(KEY_ID),
            "{text}"
        );
        assert!(
            secret_lines.iter().all(|line| !text.contains(line)),
            "{text}"
        );
        assert!(!format!("{error:?}").contains(&secret_lines[1][..16]));
    }
    let not_unicode = {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(vec![b'{', 0xff, b'}'])
    };
    assert!(matches!(
        credentials::from_value(Some(not_unicode)),
        Err(CredentialsError::NotUnicode)
    ));
}

#[test]
fn the_project_is_the_keys_unless_overridden_and_the_endpoint_is_checked() {
    let key = || {
        ServiceAccountKey::from_json(
            key_json(PRIVATE_KEY, "https://oauth2.googleapis.com/token").as_bytes(),
        )
        .unwrap()
    };
    let config = PushConfig::new(key(), None, "https://fcm.googleapis.com").unwrap();
    assert_eq!(
        config.send_url(),
        "https://fcm.googleapis.com/v1/projects/test-project/messages:send"
    );
    let config = PushConfig::new(key(), Some("pyrycode-mobile"), "http://127.0.0.1:9/").unwrap();
    assert_eq!(
        config.send_url(),
        "http://127.0.0.1:9/v1/projects/pyrycode-mobile/messages:send"
    );

    let mut no_project: Value = serde_json::from_str(&key_json(
        PRIVATE_KEY,
        "https://oauth2.googleapis.com/token",
    ))
    .unwrap();
    no_project.as_object_mut().unwrap().remove("project_id");
    let keyless = || ServiceAccountKey::from_json(no_project.to_string().as_bytes()).unwrap();
    assert!(matches!(
        PushConfig::new(keyless(), None, "https://fcm.googleapis.com"),
        Err(PushConfigError::NoProject)
    ));
    assert!(PushConfig::new(keyless(), Some("p"), "https://fcm.googleapis.com").is_ok());
    assert!(matches!(
        PushConfig::new(key(), Some("a/b"), "https://fcm.googleapis.com"),
        Err(PushConfigError::BadProject)
    ));
    let plain = PushConfig::new(key(), None, "http://fcm.googleapis.com").unwrap_err();
    assert!(matches!(plain, PushConfigError::FcmEndpoint(_)));
    assert_eq!(
        plain.to_string(),
        "push: --fcm-endpoint refused: plain http is accepted only for a loopback address (127.0.0.0/8, [::1])"
    );
}

// ---- the log never carries a secret -----------------------------------------

#[test]
fn no_log_line_carries_a_token_a_key_or_an_access_token() {
    let oauth = oauth_server(3600);
    let fcm = FakeServer::start(|request| match device_token(request).as_str() {
        "devtok-scan-dead" => Reply::json(404, &fcm_error(404, "NOT_FOUND", "UNREGISTERED")),
        "devtok-scan-bad" => {
            Reply::json(400, &fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"))
        }
        _ => Reply::json(200, r#"{"name":"projects/test-project/messages/9"}"#),
    });
    let mut harness = Harness::with(&oauth, &fcm);
    let tokens = ["devtok-scan-ok", "devtok-scan-dead", "devtok-scan-bad"];
    for token in tokens {
        assert_eq!(harness.wake("srv-scan", token), Admission::Admitted);
    }
    let outcomes = harness.outcomes(3);
    let labels: Vec<_> = by_token(outcomes, &tokens)
        .iter()
        .map(Outcome::label)
        .collect();
    assert_eq!(labels, ["sent", "unregistered", "send_failed"]);
    let refused = harness.push.request(
        "srv-scan",
        br#"{"platform":"apns","token":"devtok-scan-apns"}"#,
        harness.clock.now(),
    );
    if let Admission::Refused(why) = refused {
        why.log("srv-scan");
    }
    let failing = FakeServer::start(|_| {
        Reply::json(
            400,
            r#"{"error":"invalid_grant","error_description":"devtok-scan"}"#,
        )
    });
    let mut denied = Harness::new(&failing.url("/token"), &fcm.url(""), |_| {});
    assert_eq!(
        denied.wake("srv-scan", "devtok-scan-denied"),
        Admission::Admitted
    );
    assert_eq!(denied.outcome().label(), "token_fetch_failed");
    let assertion = form(oauth.next_request().body_str())["assertion"].clone();
    let config = PushConfig::new(
        ServiceAccountKey::from_json(key_json(PRIVATE_KEY, &oauth.url("/token")).as_bytes())
            .unwrap(),
        None,
        &fcm.url(""),
    )
    .unwrap();
    log::info!("debug_of_config {config:?}");

    let log = captured();
    for event in [
        "push_wake_sent",
        "push_wake_send_failed",
        "push_wake_dropped",
        "debug_of_config",
    ] {
        assert!(log.contains(event), "the capture saw no {event}");
    }
    assert!(
        log.lines().any(|line| line.contains(" ureq")),
        "the HTTP client's own lines are captured too"
    );
    let mut secrets = vec![
        DEVICE_PREFIX,
        ACCESS_PREFIX,
        FCM_FREE_TEXT,
        "invalid_grant",
        &assertion[..40],
    ];
    secrets.extend(
        PRIVATE_KEY
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(|l| &l[..24]),
    );
    for secret in secrets {
        assert!(!log.contains(secret), "the log carries {secret:?}:\n{log}");
    }
    for token in tokens {
        assert!(log.contains(&format!("token_fp={}", Fingerprint::of(token))));
    }
}

#[test]
fn a_waker_the_loop_already_has_can_be_shared_and_only_one_is_taken() {
    init_logger();
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let key = ServiceAccountKey::from_json(key_json(PRIVATE_KEY, &oauth.url("/token")).as_bytes())
        .unwrap();
    let mut push = Push::new(PushConfig::new(key, None, &fcm.url("")).unwrap()).unwrap();
    let mut poll = Poll::new().unwrap();
    let shared = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER).unwrap());
    push.use_waker(shared.clone()).unwrap();
    let other = Poll::new().unwrap(); // mio allows one waker per poll
    let again = push.register(other.registry(), Token(8)).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);

    let raw = br#"{"platform":"fcm","token":"devtok-shared"}"#;
    let now = ManualClock::new().now();
    assert_eq!(push.request("srv-1", raw, now), Admission::Admitted);
    let mut events = Events::with_capacity(8);
    let mut outcomes = Vec::new();
    while outcomes.is_empty() {
        poll.poll(&mut events, Some(Duration::from_secs(60)))
            .unwrap();
        assert!(!events.is_empty(), "the shared waker never fired");
        outcomes.extend(push.take_outcomes());
    }
    assert_eq!(outcomes[0].label(), "sent");
}
