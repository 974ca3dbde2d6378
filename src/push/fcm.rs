//! The FCM HTTP v1 call that wakes a phone, and what its reply means.
//!
//! The request is `POST <endpoint>/v1/projects/<project>/messages:send`
//! with `Authorization: Bearer <access token>`, `Content-Type:
//! application/json` and exactly
//! `{"message":{"token":"<t>","android":{"priority":"HIGH"}}}`: no
//! notification and no data, so nothing from a session reaches Google.
//!
//! From the reply only validated, enum-shaped values are kept: on a 2xx
//! the message `name` when it is 1–256 bytes of `[A-Za-z0-9/:%_-]`; on any
//! other status FCM's `error.status` and the `errorCode` of its `FcmError`
//! detail when they are 1–64 bytes of `[A-Z0-9_]`. FCM's free-text
//! `error.message` is never read, since it can echo request data. At most
//! [`REPLY_LIMIT`] bytes of a reply are read.

use serde::{Deserialize, Serialize};
use ureq::Agent;

use super::http::{read_body, Cause};

/// The most of an FCM reply read (as in the Go relay).
pub const REPLY_LIMIT: usize = 4 * 1024;

/// The longest message id kept; a real one is about 70 bytes.
const MAX_MESSAGE_ID_LEN: usize = 256;

/// The `@type` of the error detail that carries FCM's `errorCode`.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// What came of one send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SendResult {
    /// 2xx; the message id when the reply carried a well-formed one.
    Sent { message_id: Option<String> },
    /// Any other status, with FCM's validated error enums.
    Rejected {
        status: u16,
        fcm_status: Option<String>,
        fcm_error: Option<String>,
    },
    /// No reply: the call failed.
    Failed(Cause),
}

#[derive(Serialize)]
struct Request<'a> {
    message: Message<'a>,
}

/// Fields in the order the wire shape is documented with.
#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    android: Android,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
}

/// The send path for `project` under the FCM endpoint.
pub(crate) fn send_path(project: &str) -> String {
    format!("/v1/projects/{project}/messages:send")
}

/// The request body waking `device_token`.
pub(crate) fn request_body(device_token: &str) -> Vec<u8> {
    let request = Request {
        message: Message {
            token: device_token,
            android: Android { priority: "HIGH" },
        },
    };
    serde_json::to_vec(&request).expect("plain structs always serialize")
}

/// Sends one wake to `device_token` through `send_url`.
pub(crate) fn send(
    agent: &Agent,
    send_url: &str,
    access_token: &str,
    device_token: &str,
) -> SendResult {
    let result = agent
        .post(send_url)
        .header("Authorization", format!("Bearer {access_token}"))
        .header("Content-Type", "application/json")
        .send(&request_body(device_token)[..]);
    let mut response = match result {
        Ok(response) => response,
        Err(error) => return SendResult::Failed(Cause::of(&error)),
    };
    let body = read_body(&mut response, REPLY_LIMIT);
    classify(response.status().as_u16(), &body)
}

/// What a reply with `status` and (the first bytes of) `body` means.
pub(crate) fn classify(status: u16, body: &[u8]) -> SendResult {
    if (200..300).contains(&status) {
        return SendResult::Sent {
            message_id: message_id(body),
        };
    }
    let (fcm_status, fcm_error) = error_enums(body);
    SendResult::Rejected {
        status,
        fcm_status,
        fcm_error,
    }
}

#[derive(Deserialize)]
struct SendReply {
    name: Option<String>,
}

fn message_id(body: &[u8]) -> Option<String> {
    let reply: SendReply = serde_json::from_slice(body).ok()?;
    reply.name.filter(|name| is_message_id(name))
}

/// Only FCM's two enum fields; `error.message` is left out on purpose.
#[derive(Deserialize)]
struct ErrorReply {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    status: Option<String>,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "@type")]
    kind: Option<String>,
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

/// `error.status` and the `FcmError` detail's `errorCode`, each only when
/// enum-shaped.
fn error_enums(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(reply) = serde_json::from_slice::<ErrorReply>(body) else {
        return (None, None);
    };
    let status = reply.error.status.filter(|s| is_enum(s));
    let code = reply
        .error
        .details
        .into_iter()
        .find(|detail| detail.kind.as_deref() == Some(FCM_ERROR_TYPE))
        .and_then(|detail| detail.error_code)
        .filter(|code| is_enum(code));
    (status, code)
}

/// 1–64 bytes of `[A-Z0-9_]`.
fn is_enum(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// 1–256 bytes of `[A-Za-z0-9/:%_-]`: no space, `=`, quote or control byte,
/// so a logged id cannot forge a `key=value` field.
fn is_message_id(s: &str) -> bool {
    (1..=MAX_MESSAGE_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:%_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, fcm_status: Option<&str>, fcm_error: Option<&str>) -> SendResult {
        SendResult::Rejected {
            status,
            fcm_status: fcm_status.map(str::to_owned),
            fcm_error: fcm_error.map(str::to_owned),
        }
    }

    #[test]
    fn the_body_is_exactly_the_documented_shape() {
        assert_eq!(
            request_body("a\"b"),
            br#"{"message":{"token":"a\"b","android":{"priority":"HIGH"}}}"#
        );
    }

    #[test]
    fn a_2xx_keeps_only_a_well_formed_message_id() {
        let sent = |id: Option<&str>| SendResult::Sent {
            message_id: id.map(str::to_owned),
        };
        let name = "projects/p/messages/0:1500415314455276%31bd1c9631bd1c96";
        assert_eq!(
            classify(200, format!(r#"{{"name":"{name}"}}"#).as_bytes()),
            sent(Some(name))
        );
        assert_eq!(classify(200, br#"{"name":"a b=c"}"#), sent(None));
        assert_eq!(classify(200, br#"{"name":""}"#), sent(None));
        let long = "a".repeat(257);
        assert_eq!(
            classify(200, format!(r#"{{"name":"{long}"}}"#).as_bytes()),
            sent(None)
        );
        assert_eq!(classify(204, b""), sent(None));
    }

    #[test]
    fn a_rejection_keeps_only_enum_shaped_reasons() {
        let unregistered = br#"{"error":{"code":404,"message":"Requested entity was not found.",
            "status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(
            classify(404, unregistered),
            rejected(404, Some("NOT_FOUND"), Some("UNREGISTERED"))
        );
        let echoed = br#"{"error":{"status":"token=abc","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"lower"}]}}"#;
        assert_eq!(classify(400, echoed), rejected(400, None, None));
        let other_detail = br#"{"error":{"status":"INVALID_ARGUMENT","details":[{"@type":"x","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(
            classify(400, other_detail),
            rejected(400, Some("INVALID_ARGUMENT"), None)
        );
        assert_eq!(
            classify(500, b"<html>oops</html>"),
            rejected(500, None, None)
        );
        assert_eq!(classify(302, b""), rejected(302, None, None));
    }

    #[test]
    fn enum_shape_is_bounded() {
        assert!(is_enum("UNREGISTERED") && is_enum("A1_") && is_enum(&"A".repeat(64)));
        assert!(!is_enum("") && !is_enum(&"A".repeat(65)) && !is_enum("Unregistered"));
    }
}
