//! Push wakes from the loop's side (SPEC §5.3). A binary's `push_wake` is
//! admitted or refused at once — the limits are checked and an admitted
//! wake is handed to a push worker through a bounded queue, never waited
//! for. The sending happens off the loop (`src/push/`); each outcome comes
//! back through the loop's waker (shared with the ACME thread), whose
//! token makes the loop log and count it here.

use std::time::Instant;

use super::Relay;
use crate::metrics::PushOutcome;
use crate::push::{Admission, Push, Refusal};

impl Relay {
    /// Turns push wakes on: `push`'s workers wake this loop when outcomes
    /// are waiting. Without it, every wake is dropped with a warning.
    pub fn enable_push(&mut self, push: Push) -> std::io::Result<()> {
        push.use_waker(self.waker.clone())?;
        self.push = Some(push);
        Ok(())
    }

    /// A binary of `server_id` asks for a wake; `push_wake` is the raw
    /// JSON value of its key. A refused wake is dropped, never queued.
    pub(super) fn request_wake(&mut self, server_id: &str, push_wake: &[u8]) {
        let now = self.clock.now();
        let admission = match self.push.as_mut() {
            Some(push) => push.request(server_id, push_wake, now),
            None => Admission::Refused(Refusal::PushOff),
        };
        if let Admission::Refused(why) = admission {
            why.log(server_id);
            self.metrics.push_dropped();
        }
    }

    /// Wakes handed to a worker whose outcome has not been logged yet.
    pub(super) fn wakes_in_flight(&self) -> usize {
        self.push.as_ref().map_or(0, Push::in_flight)
    }

    /// The workers' waker fired: log and count every finished wake.
    pub(super) fn on_wake_outcomes(&mut self) {
        let Some(push) = self.push.as_mut() else {
            return;
        };
        for outcome in push.take_outcomes() {
            outcome.log();
            if let Some(counted) = PushOutcome::from_label(outcome.label()) {
                self.metrics.push_wake(counted);
            }
        }
    }

    /// Forgets the rate-limit state of server-ids that have been quiet.
    pub(super) fn sweep_wakes(&mut self, now: Instant) {
        if let Some(push) = self.push.as_mut() {
            push.sweep(now);
        }
    }
}
