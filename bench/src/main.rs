//! `relay-bench`: the load benchmark of pyrycode-relay.
//!
//! The scenarios (idle, echo, fanout, churn, the HAProxy baseline) belong to
//! the benchmark issue; until it lands this binary only says so, and exits
//! non-zero so nobody mistakes it for a measurement.

fn main() {
    eprintln!("relay-bench: no scenario is implemented yet (see the load benchmark issue)");
    std::process::exit(1);
}
