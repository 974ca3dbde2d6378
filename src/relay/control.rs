//! Relay time under a manual clock: moving it, deadline by deadline, and
//! the `/clock` control endpoints of the metrics listener
//! (`--manual-clock`, docs/TESTING.md).
//!
//! [`Relay::advance`] is the one way relay time moves under a
//! [`crate::ManualClock`], for the in-process fixture (`crate::fixture`)
//! and for `POST /clock/advance` alike. It walks the clock to each due
//! timer in turn, so every deadline fires at its own instant, and deadlines
//! those timers set fire too if they fall inside the advance (a silent
//! peer is pinged at 30 s and closed at 60 s by one `advance(60 s)`).
//! After each instant it writes what the timers produced. It reads no
//! socket: bytes that arrive during the call are read when the loop next
//! turns, at the new time. So a peer that must answer something a timer
//! sends (a ping) gets no chance to answer inside one advance: move time
//! in steps shorter than the deadline it must meet.
//!
//! ```text
//! POST /clock/advance?by=30s   at the end of the turn: handle every event
//!                              ready now (old time), advance(30 s), then
//!                              200 {"elapsed_ms":N}
//! GET  /clock                  200 {"elapsed_ms":N}
//! ```
//!
//! An advance request waits, parked, until the end of the loop's turn, and
//! the loop then polls for events until none is ready before it moves the
//! clock: a test that wrote a pong and then asked for an advance has its
//! pong handled first. Without a manual clock both paths are 404, like
//! any unknown path.

use std::time::Duration;

use log::info;

use super::conns::Handle;
use super::Relay;
use crate::clock::Clock;
use crate::config::parse_duration;
use crate::http::{Request, Route};

/// The most one advance may move the clock: every timer on the way fires
/// at its own instant, so a longer jump only costs time and says nothing
/// a day does not.
pub const MAX_ADVANCE: Duration = Duration::from_secs(24 * 60 * 60);

/// Why relay time could not be moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvanceError {
    /// The relay runs on a real clock (`SystemClock`): time is not ours to move.
    NotManual,
    /// More than [`MAX_ADVANCE`] in one call.
    TooFar,
}

impl std::fmt::Display for AdvanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdvanceError::NotManual => f.write_str("the relay's clock is not a manual clock"),
            AdvanceError::TooFar => write!(
                f,
                "one advance moves the clock at most {}h",
                MAX_ADVANCE.as_secs() / 3600
            ),
        }
    }
}

impl std::error::Error for AdvanceError {}

/// How many times timers may fire at one instant before an advance gives
/// up on that instant (a timer that keeps re-arming itself for "now" would
/// otherwise never let time move; no timer of the relay does).
const FIRINGS_PER_INSTANT: usize = 1_000;

/// How many times an advance request polls for events that are already
/// there before it moves the clock anyway.
const CATCH_UP_POLLS: usize = 64;

impl Relay {
    /// Relay time: how far the relay's clock has moved since the relay
    /// was made. Under a manual clock this is the sum of the advances.
    pub fn elapsed(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.started)
    }

    /// Moves a manual clock forward by `by`, firing every timer that comes
    /// due on the way at its own instant, in order, and writing what each
    /// instant's timers produced to the sockets before moving on. Returns
    /// the relay time afterwards ([`Relay::elapsed`]).
    ///
    /// No socket is read meanwhile: what peers sent is read when the loop
    /// next turns (see the module documentation).
    pub fn advance(&mut self, by: Duration) -> Result<Duration, AdvanceError> {
        let clock = self.clock.manual().ok_or(AdvanceError::NotManual)?.clone();
        if by > MAX_ADVANCE {
            return Err(AdvanceError::TooFar);
        }
        let target = clock.now() + by;
        let mut firings_here = 0;
        loop {
            let now = clock.now();
            let next = self.timers.next_deadline().filter(|&at| at <= target);
            if next.is_none() && now >= target {
                break;
            }
            let step_to = next.unwrap_or(target).max(now);
            clock.advance(step_to - now);
            self.fire_timers();
            self.flush_dirty();
            firings_here = if step_to > now { 1 } else { firings_here + 1 };
            if firings_here >= FIRINGS_PER_INSTANT {
                debug_assert!(false, "timers keep firing at one instant");
                clock.advance(target.saturating_duration_since(clock.now()));
                break;
            }
        }
        Ok(self.elapsed())
    }

    /// The instant of the next timer, relay time, if any: where a caller
    /// that wants to watch each deadline's effects may step to. Includes
    /// entries that turn out to be stale when they fire.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let at = self.timers.next_deadline()?;
        Some(at.saturating_duration_since(self.started))
    }

    /// `/clock` and `/clock/advance` on the metrics listener. Returns false
    /// when the route is not a clock route or the relay has no manual
    /// clock (the caller answers 404).
    pub(super) fn answer_clock(&mut self, handle: Handle, request: &Request) -> bool {
        let route = request.route;
        if self.clock.manual().is_none()
            || !matches!(route, Some(Route::Clock | Route::ClockAdvance))
        {
            return false;
        }
        match (route, request.method_is_get, request.method_is_post) {
            (Some(Route::Clock), true, _) => self.answer_elapsed(handle),
            (Some(Route::Clock), ..) => self.respond(handle, 405, "Allow: GET\r\n", ""),
            (_, _, true) => self.answer_advance(handle, request.query.as_deref()),
            _ => self.respond(handle, 405, "Allow: POST\r\n", ""),
        }
        true
    }

    /// `POST /clock/advance`: a valid request waits, parked, until the
    /// end of the turn ([`Relay::run_parked_advances`]).
    fn answer_advance(&mut self, handle: Handle, query: Option<&str>) {
        let by = match advance_by(query) {
            Ok(by) => by,
            Err(reason) => return self.respond_text(handle, 400, &reason),
        };
        // The control request's own handshake deadline must not end it
        // while the clock jumps past it.
        if let Some(conn) = self.conns.get_mut(handle) {
            conn.deadlines.handshake = None;
        }
        self.parked_advances.push_back((handle, by));
    }

    /// At the end of a turn, each parked `POST /clock/advance` in order:
    /// first every network event ready by then is handled (at the old
    /// time), so that what a test sent before asking for the advance
    /// counts before the clock moves; then the advance; then the answer.
    /// Returns whether there was any.
    pub(super) fn run_parked_advances(&mut self) -> std::io::Result<bool> {
        let mut any = false;
        while let Some((handle, by)) = self.parked_advances.pop_front() {
            any = true;
            self.catch_up()?;
            let elapsed = match self.advance(by) {
                Ok(elapsed) => elapsed,
                Err(err) => {
                    self.respond_text(handle, 400, &err.to_string());
                    continue;
                }
            };
            info!(
                "clock_advanced by_ms={} elapsed_ms={}",
                by.as_millis(),
                elapsed.as_millis()
            );
            self.answer_elapsed(handle);
            self.flush_dirty();
        }
        Ok(any)
    }

    /// Handles every readiness event there is now, and what it leads to,
    /// without waiting and without moving time (bounded, so a flood of
    /// traffic cannot hold an advance back for ever).
    fn catch_up(&mut self) -> std::io::Result<()> {
        for _ in 0..CATCH_UP_POLLS {
            let events = self.poll_and_dispatch(Some(Duration::ZERO))?;
            let resumed = self.read_resumed();
            self.flush_dirty();
            if !events && !resumed {
                break;
            }
        }
        Ok(())
    }

    fn answer_elapsed(&mut self, handle: Handle) {
        let body = format!("{{\"elapsed_ms\":{}}}", self.elapsed().as_millis());
        self.respond(
            handle,
            200,
            "Content-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\n",
            &body,
        );
    }

    fn respond_text(&mut self, handle: Handle, status: u16, reason: &str) {
        let body = format!("{reason}\n");
        self.respond(
            handle,
            status,
            "Content-Type: text/plain; charset=utf-8\r\n",
            &body,
        );
    }
}

/// The `by` parameter of `/clock/advance`, in the flags' duration syntax.
fn advance_by(query: Option<&str>) -> Result<Duration, String> {
    let value = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("by="))
        .ok_or("missing ?by=<duration>, e.g. /clock/advance?by=30s")?;
    let by = parse_duration(value).map_err(|err| format!("by: {err}"))?;
    if by > MAX_ADVANCE {
        return Err(format!("by: {}", AdvanceError::TooFar));
    }
    Ok(by)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_by_parameter_takes_the_flag_syntax() {
        assert_eq!(advance_by(Some("by=30s")), Ok(Duration::from_secs(30)));
        assert_eq!(
            advance_by(Some("x=1&by=500ms")),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(advance_by(Some("by=2m")), Ok(Duration::from_secs(120)));
        assert!(advance_by(None).unwrap_err().contains("missing"));
        assert!(advance_by(Some("by=soon")).unwrap_err().contains("soon"));
        assert!(advance_by(Some("by=25h")).unwrap_err().contains("at most"));
    }
}
