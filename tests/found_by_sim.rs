//! Bugs the seeded simulation (`tests/sim`) found, each as a plain,
//! deterministic test of the behaviour that was wrong. (The seeds
//! themselves run in `tests/sim/main.rs: REGRESSIONS`; a seed only
//! replays its scenario while the workload generator stays as it was,
//! these tests do not depend on it.)

use pyrycode_relay::fixture::{Frame, TestRelay};

/// Seed 1441 (also 2412, 2748, 3019): shutdown closed the holder of a
/// server-id first; its release handed the slot to the challenger waiting
/// on the conflict probe, so the holder's phones were closed 4404
/// "binary reclaimed server-id" instead of 1001 "shutting down", and the
/// challenger was promoted to holder only to be closed next.
#[test]
fn shutdown_closes_everyone_1001_even_with_a_challenger_waiting() {
    let mut relay = TestRelay::start();
    let mut holder = relay.binary("busy");
    let mut phone = relay.phone("busy");
    let mut challenger = relay.binary("busy");
    assert_eq!(
        holder.recv(&mut relay),
        Frame::Ping(b"conflict-probe".to_vec()),
        "the holder is being probed"
    );

    relay.relay_mut().shutdown();
    for client in [&mut holder, &mut phone, &mut challenger] {
        assert_eq!(
            client.recv_close(&mut relay),
            (Some(1001), "shutting down".to_string()),
            "{}",
            client.name()
        );
    }
    let notice = holder.try_recv(&mut relay);
    assert_eq!(notice, None, "no close notice at shutdown");
}
