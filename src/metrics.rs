//! The relay's counters, named and labelled like the Go relay's Prometheus
//! metrics (SPEC §10). No server-id, conn_id, IP or token is ever a label:
//! every label value comes from the fixed sets below, all exposed from the
//! start at 0.

use std::fmt::Write;

/// `endpoint` label values of the upgrade counter.
pub const ENDPOINTS: [&str; 2] = ["server", "client"];
/// `outcome` label values of the upgrade counter (`reject_capacity`, the
/// 503 of the global cap, is ours).
pub const UPGRADE_OUTCOMES: [&str; 7] = [
    "accept",
    "reject_headers",
    "reject_409",
    "reject_404",
    "reject_429",
    "reject_rate_limit",
    "reject_capacity",
];
/// `kind` label values of the registration-failure counter.
pub const REGISTER_FAILURES: [&str; 4] =
    ["no_server", "server_in_use", "phones_at_cap", "ratelimit"];
/// `outcome` label values of the push counter.
pub const PUSH_OUTCOMES: [&str; 5] = [
    "sent",
    "unregistered",
    "send_failed",
    "token_fetch_failed",
    "dropped",
];

/// Outcome of one upgrade attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeOutcome {
    Accept,
    RejectHeaders,
    Reject409,
    Reject404,
    Reject429,
    RejectRateLimit,
    RejectCapacity,
}

/// Kind of a registration failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterFailure {
    NoServer,
    ServerInUse,
    PhonesAtCap,
    RateLimit,
}

/// Every counter of the relay. Gauges are read from the loop.
#[derive(Default, Debug, Clone)]
pub struct Metrics {
    pub frames_phone_to_binary: u64,
    pub frames_binary_to_phone: u64,
    pub grace_expiries: u64,
    pub upgrades: [[u64; 7]; 2],
    pub register_failures: [u64; 4],
    pub push_wakes: [u64; 5],
    pub envelopes_dropped: u64,
    pub phone_messages_dropped: u64,
}

impl Metrics {
    /// Counts an upgrade attempt on `/v1/server` (`server`) or `/v1/client`.
    pub fn upgrade(&mut self, server: bool, outcome: UpgradeOutcome) {
        self.upgrades[usize::from(!server)][outcome as usize] += 1;
    }

    /// Counts a registration failure.
    pub fn register_failure(&mut self, kind: RegisterFailure) {
        self.register_failures[kind as usize] += 1;
    }

    /// Counts a push wake that was dropped (no push configured yet).
    pub fn push_dropped(&mut self) {
        self.push_wakes[4] += 1;
    }

    /// The Prometheus text exposition, with the two gauges.
    pub fn render(&self, binaries: usize, phones: usize) -> String {
        let mut out = String::new();
        let p = "pyrycode_relay";
        let _ = writeln!(
            out,
            "# TYPE {p}_connected_binaries gauge\n{p}_connected_binaries {binaries}"
        );
        let _ = writeln!(
            out,
            "# TYPE {p}_connected_phones gauge\n{p}_connected_phones {phones}"
        );
        let _ = writeln!(out, "# TYPE {p}_frames_forwarded_total counter");
        let _ = writeln!(
            out,
            "{p}_frames_forwarded_total{{direction=\"phone_to_binary\"}} {}",
            self.frames_phone_to_binary
        );
        let _ = writeln!(
            out,
            "{p}_frames_forwarded_total{{direction=\"binary_to_phone\"}} {}",
            self.frames_binary_to_phone
        );
        let _ = writeln!(
            out,
            "# TYPE {p}_grace_expiries_total counter\n{p}_grace_expiries_total {}",
            self.grace_expiries
        );
        let _ = writeln!(out, "# TYPE {p}_ws_upgrade_attempts_total counter");
        for (e, endpoint) in ENDPOINTS.iter().enumerate() {
            for (o, outcome) in UPGRADE_OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{p}_ws_upgrade_attempts_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {}",
                    self.upgrades[e][o]
                );
            }
        }
        let _ = writeln!(out, "# TYPE {p}_register_failures_total counter");
        for (k, kind) in REGISTER_FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_register_failures_total{{kind=\"{kind}\"}} {}",
                self.register_failures[k]
            );
        }
        let _ = writeln!(out, "# TYPE {p}_push_wakes_total counter");
        for (o, outcome) in PUSH_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_push_wakes_total{{outcome=\"{outcome}\"}} {}",
                self.push_wakes[o]
            );
        }
        let _ = writeln!(
            out,
            "# TYPE {p}_envelopes_dropped_total counter\n{p}_envelopes_dropped_total {}",
            self.envelopes_dropped
        );
        let _ = writeln!(
            out,
            "# TYPE {p}_phone_messages_dropped_total counter\n{p}_phone_messages_dropped_total {}",
            self.phone_messages_dropped
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_combination_is_exposed_from_the_start() {
        let text = Metrics::default().render(0, 0);
        assert!(text.contains(
            "pyrycode_relay_ws_upgrade_attempts_total{endpoint=\"client\",outcome=\"reject_rate_limit\"} 0"
        ));
        assert!(text.contains("pyrycode_relay_register_failures_total{kind=\"phones_at_cap\"} 0"));
        assert!(text.contains("pyrycode_relay_push_wakes_total{outcome=\"dropped\"} 0"));
    }

    #[test]
    fn counters_land_on_their_labels() {
        let mut metrics = Metrics::default();
        metrics.upgrade(false, UpgradeOutcome::Reject429);
        let text = metrics.render(1, 2);
        assert!(text.contains("{endpoint=\"client\",outcome=\"reject_429\"} 1"));
        assert!(text.contains("pyrycode_relay_connected_phones 2"));
    }
}
