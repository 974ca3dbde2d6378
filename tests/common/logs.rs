//! The relay's log lines, captured per test. The harness turns the relay
//! on the test's own thread, so a logger that keeps lines per thread gives
//! each test exactly the lines of its own relay, even with the tests of a
//! file running in parallel.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    /// `Some` once this thread called [`capture_logs`].
    static LINES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct PerThread;

impl log::Log for PerThread {
    /// Only the relay's own lines (not those of `mio`), and only on
    /// threads that asked for them.
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("pyrycode_relay")
            && LINES.with(|lines| lines.borrow().is_some())
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        LINES.with(|lines| {
            if let Some(lines) = lines.borrow_mut().as_mut() {
                lines.push(format!("{} {}", record.level(), record.args()));
            }
        });
    }

    fn flush(&self) {}
}

/// Starts keeping every line (all levels) the relay logs on this thread.
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&PerThread).expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|lines| *lines.borrow_mut() = Some(Vec::new()));
}

/// The lines logged on this thread since [`capture_logs`] or the last
/// call, each `LEVEL message`.
pub fn take_logs() -> Vec<String> {
    LINES.with(|lines| {
        lines
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .expect("capture_logs was not called on this thread")
    })
}
