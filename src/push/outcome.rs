//! What came of an admitted wake, as the worker hands it back to the loop:
//! one log line (`push_wake_sent` or `push_wake_send_failed`) and one
//! `pyrycode_relay_push_wakes_total{outcome}` label per wake.
//!
//! An outcome holds no secret: the server-id, the token's fingerprint, the
//! time the HTTP work took (real time, for operators), and only validated
//! words from the endpoints (HTTP status, FCM's error enums, message id).

use std::fmt;
use std::time::Duration;

use super::http::Cause;
use super::wake::Fingerprint;

/// Every value of the metric's `outcome` label, for exposing all at 0.
pub const OUTCOME_LABELS: [&str; 5] = [
    "sent",
    "unregistered",
    "send_failed",
    "token_fetch_failed",
    "dropped",
];

/// The label of a refused (dropped) wake; the loop counts those itself.
pub const DROPPED_LABEL: &str = "dropped";

/// One finished wake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The server-id whose binary asked for the wake.
    pub server_id: String,
    /// The device token's fingerprint.
    pub fingerprint: Fingerprint,
    /// How long the HTTP work took.
    pub duration: Duration,
    /// What happened.
    pub result: WakeResult,
}

/// What happened to one wake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeResult {
    /// FCM accepted the message.
    Sent {
        /// FCM's message name, when well-formed.
        message_id: Option<String>,
    },
    /// FCM said the device token is dead (`errorCode` `UNREGISTERED`).
    Unregistered {
        /// The HTTP status (404 from FCM today).
        status: u16,
        /// FCM's `error.status`, when enum-shaped.
        fcm_status: Option<String>,
    },
    /// FCM refused the message, or the call to it failed.
    SendFailed {
        /// The HTTP status, when FCM answered.
        status: Option<u16>,
        /// Why, in one word (`status` when FCM answered).
        cause: Cause,
        /// FCM's `error.status`, when enum-shaped.
        fcm_status: Option<String>,
        /// FCM's `errorCode`, when enum-shaped.
        fcm_error: Option<String>,
    },
    /// No access token could be had; FCM was not called.
    TokenFetchFailed {
        /// The token endpoint's HTTP status, when it answered.
        status: Option<u16>,
        /// Why, in one word.
        cause: Cause,
    },
}

impl Outcome {
    /// The metric's `outcome` label.
    pub fn label(&self) -> &'static str {
        match self.result {
            WakeResult::Sent { .. } => "sent",
            WakeResult::Unregistered { .. } => "unregistered",
            WakeResult::SendFailed { .. } => "send_failed",
            WakeResult::TokenFetchFailed { .. } => "token_fetch_failed",
        }
    }

    /// The log line's event name.
    pub fn event(&self) -> &'static str {
        match self.result {
            WakeResult::Sent { .. } => "push_wake_sent",
            _ => "push_wake_send_failed",
        }
    }

    /// Logs the outcome's one line: info when sent, warn otherwise.
    pub fn log(&self) {
        match self.result {
            WakeResult::Sent { .. } => log::info!("{self}"),
            _ => log::warn!("{self}"),
        }
    }
}

/// The log line: event name first, then `key=value` pairs.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} server_id={} token_fp={} duration_ms={}",
            self.event(),
            self.server_id,
            self.fingerprint,
            self.duration.as_millis()
        )?;
        if !matches!(self.result, WakeResult::Sent { .. }) {
            write!(f, " outcome={}", self.label())?;
        }
        match &self.result {
            WakeResult::Sent { message_id } => field(f, "message_id", message_id.as_deref()),
            WakeResult::Unregistered { status, fcm_status } => {
                write!(f, " status={status}")?;
                field(f, "fcm_status", fcm_status.as_deref())?;
                field(f, "fcm_error", Some("UNREGISTERED"))
            }
            WakeResult::SendFailed {
                status,
                cause,
                fcm_status,
                fcm_error,
            } => {
                write!(f, " cause={}", cause.as_str())?;
                field(f, "status", status.map(|s| s.to_string()).as_deref())?;
                field(f, "fcm_status", fcm_status.as_deref())?;
                field(f, "fcm_error", fcm_error.as_deref())
            }
            WakeResult::TokenFetchFailed { status, cause } => {
                write!(f, " cause={}", cause.as_str())?;
                field(f, "status", status.map(|s| s.to_string()).as_deref())
            }
        }
    }
}

/// Writes ` key=value` when there is a value.
fn field(f: &mut fmt::Formatter<'_>, key: &str, value: Option<&str>) -> fmt::Result {
    match value {
        Some(value) => write!(f, " {key}={value}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: WakeResult) -> Outcome {
        Outcome {
            server_id: "srv".into(),
            fingerprint: Fingerprint::of("abc"),
            duration: Duration::from_millis(42),
            result,
        }
    }

    #[test]
    fn lines_name_the_event_first_then_fields() {
        let sent = outcome(WakeResult::Sent {
            message_id: Some("projects/p/messages/1".into()),
        });
        assert_eq!(
            sent.to_string(),
            "push_wake_sent server_id=srv token_fp=ba7816bf duration_ms=42 message_id=projects/p/messages/1"
        );
        let dead = outcome(WakeResult::Unregistered {
            status: 404,
            fcm_status: Some("NOT_FOUND".into()),
        });
        assert_eq!(
            dead.to_string(),
            "push_wake_send_failed server_id=srv token_fp=ba7816bf duration_ms=42 outcome=unregistered \
             status=404 fcm_status=NOT_FOUND fcm_error=UNREGISTERED"
        );
        let timeout = outcome(WakeResult::SendFailed {
            status: None,
            cause: Cause::Timeout,
            fcm_status: None,
            fcm_error: None,
        });
        assert_eq!(
            timeout.to_string(),
            "push_wake_send_failed server_id=srv token_fp=ba7816bf duration_ms=42 outcome=send_failed cause=timeout"
        );
        let token = outcome(WakeResult::TokenFetchFailed {
            status: Some(401),
            cause: Cause::Status,
        });
        assert_eq!(token.label(), "token_fetch_failed");
        assert!(token
            .to_string()
            .ends_with("outcome=token_fetch_failed cause=status status=401"));
    }

    #[test]
    fn every_label_is_listed() {
        for label in [
            outcome(WakeResult::Sent { message_id: None }).label(),
            outcome(WakeResult::Unregistered {
                status: 404,
                fcm_status: None,
            })
            .label(),
            DROPPED_LABEL,
        ] {
            assert!(OUTCOME_LABELS.contains(&label));
        }
    }
}
