//! The binary slot of a server-id (SPEC §3, §4): first claim, conflict
//! probe, takeover, grace, reclaim, expiry, stale grace timers, phones
//! without a server, the phone cap, and the shape of conn_ids.
//!
//! Every test runs the real relay loop in-process with a manual clock, so
//! a 30 s grace window or a 10 s conflict probe takes no real time.

mod common;

use common::*;

/// A second claim of "srv": it gets its 101 at once, and `holder` the
/// relay's conflict probe.
fn challenge(h: &mut Harness, holder: &mut Client) -> Client {
    let challenger = h.binary("srv");
    assert_eq!(holder.recv(h), Msg::Ping(b"conflict-probe".to_vec()));
    challenger
}

/// `holder` answers the conflict probe: `challenger` loses (4409).
fn answer_probe(h: &mut Harness, holder: &mut Client, challenger: &mut Client) {
    holder.send_pong(h, b"conflict-probe");
    assert_eq!(challenger.recv_close(h).0, Some(4409));
}

/// A binary of "srv" that left, and the phone it left behind.
fn phone_in_grace(h: &mut Harness) -> Client {
    let (binary, phone, _) = h.pair("srv");
    drop(binary);
    h.settle();
    phone
}

// ---------------------------------------------------------------- claims

#[test]
fn first_claim_wins_and_the_binary_gets_no_hello() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv-a");
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().binaries, 1);
    let (mut phone, conn_id) = h.phone_with_id("srv-a", &mut binary);
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
    // A claim of another server-id is independent.
    let mut other = h.binary("srv-b");
    assert_quiet(&mut h, [&mut other, &mut binary]);
    assert_eq!(h.stats().binaries, 2);
}

#[test]
fn a_second_claim_loses_to_a_holder_that_answers_the_probe() {
    let mut h = Harness::start();
    let (mut holder, mut phone, conn_id) = h.pair("srv");

    // The newcomer gets its 101 first; nothing is decided before the
    // holder answers.
    let mut newcomer = challenge(&mut h, &mut holder);
    newcomer.expect_no_data(&mut h);
    h.advance(secs(9));
    newcomer.expect_no_data(&mut h);

    holder.send_pong(&mut h, b"conflict-probe");
    newcomer.expect_closed(&mut h, ALREADY_CLAIMED);

    // The holder and its phone are untouched, also once the probe's
    // deadline has passed.
    h.advance(secs(5));
    assert_quiet(&mut h, [&mut holder, &mut phone]);
    assert_routes(&mut h, &mut holder, &mut phone, &conn_id);
    assert_eq!(h.peers(), (1, 1));
}

#[test]
fn the_losing_challenger_is_never_read() {
    let mut h = Harness::start();
    let (mut holder, mut phone, conn_id) = h.pair("srv");

    let mut newcomer = challenge(&mut h, &mut holder);
    // While the probe runs, the newcomer's envelopes are not acted on.
    newcomer.send_text(&mut h, &envelope(&conn_id, br#"{"from":"newcomer"}"#));
    phone.expect_no_data(&mut h);

    answer_probe(&mut h, &mut holder, &mut newcomer);
    phone.expect_no_data(&mut h);
    assert_routes(&mut h, &mut holder, &mut phone, &conn_id);
}

#[test]
fn a_silent_holder_is_taken_over_after_the_probe_deadline() {
    let mut h = Harness::start();
    let (mut holder, mut old_phone, _) = h.pair("srv");

    let mut newcomer = challenge(&mut h, &mut holder);

    h.advance(secs(9));
    assert_quiet(&mut h, [&mut holder, &mut old_phone, &mut newcomer]);

    h.advance(secs(1));
    holder.expect_closed(&mut h, HEARTBEAT_TIMEOUT);
    old_phone.expect_closed(&mut h, RECLAIMED);
    // The new holder gets no close notice for the old holder's phones.
    newcomer.expect_no_data(&mut h);
    assert_eq!(h.peers(), (1, 0));

    let (mut new_phone, conn_id) = h.phone_with_id("srv", &mut newcomer);
    assert_routes(&mut h, &mut newcomer, &mut new_phone, &conn_id);
    assert_eq!(h.peers(), (1, 1));
}

/// The probe is answered only by a pong that echoes its payload (it
/// proves the holder read the probe); any other pong, e.g. the answer to
/// an earlier heartbeat ping, keeps the holder's heartbeat alive but does
/// not decide the conflict.
#[test]
fn only_a_pong_echoing_the_probe_answers_it() {
    let mut h = Harness::start();
    let mut holder = h.binary("srv");
    let mut newcomer = challenge(&mut h, &mut holder);
    holder.send_pong(&mut h, b"");
    holder.send_pong(&mut h, b"conflict-probe?");
    newcomer.expect_no_data(&mut h);
    h.advance(secs(10));
    assert_eq!(holder.expect_closed_by_relay(&mut h).0, Some(1011));
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut newcomer);
    assert_routes(&mut h, &mut newcomer, &mut phone, &conn_id);
}

#[test]
fn a_taken_over_holder_does_not_open_a_grace_window() {
    let mut h = Harness::start();
    let mut holder = h.binary("srv");
    let mut newcomer = challenge(&mut h, &mut holder);
    h.advance(secs(10));
    assert_eq!(holder.expect_closed_by_relay(&mut h).0, Some(1011));
    drop(holder);
    // Well past a grace period: the newcomer still holds the slot.
    h.advance(secs(20));
    newcomer.send_pong(&mut h, b"");
    h.advance(secs(20));
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut newcomer);
    assert_routes(&mut h, &mut newcomer, &mut phone, &conn_id);
    assert_eq!(h.stats().binaries, 1);
}

#[test]
fn a_third_claim_during_the_probe_is_refused_at_once() {
    let mut h = Harness::start();
    let (mut holder, mut old_phone, _) = h.pair("srv");
    let mut second = challenge(&mut h, &mut holder);

    let mut third = h.binary("srv");
    third.expect_closed(&mut h, ALREADY_CLAIMED);
    // Only one probe was sent.
    assert_quiet(&mut h, [&mut holder, &mut second]);

    // The running probe still decides between holder and second claimant.
    h.advance(secs(10));
    assert_eq!(holder.expect_closed_by_relay(&mut h).0, Some(1011));
    old_phone.expect_closed(&mut h, RECLAIMED);
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut second);
    assert_routes(&mut h, &mut second, &mut phone, &conn_id);
}

#[test]
fn a_holder_leaving_during_the_probe_hands_the_slot_to_the_challenger() {
    let mut h = Harness::start();
    let (mut holder, mut old_phone, _) = h.pair("srv");
    let mut newcomer = challenge(&mut h, &mut holder);

    drop(holder);
    old_phone.expect_closed(&mut h, RECLAIMED);
    newcomer.expect_no_data(&mut h);
    assert_eq!(h.stats().binaries, 1);

    let (mut phone, conn_id) = h.phone_with_id("srv", &mut newcomer);
    assert_routes(&mut h, &mut newcomer, &mut phone, &conn_id);
    // The probe deadline passing changes nothing.
    h.advance(secs(10));
    assert_quiet(&mut h, [&mut newcomer, &mut phone]);
    assert_eq!(h.stats().binaries, 1);
}

#[test]
fn a_challenger_leaving_during_the_probe_leaves_the_holder_in_place() {
    let mut h = Harness::start();
    let (mut holder, mut phone, conn_id) = h.pair("srv");
    drop(challenge(&mut h, &mut holder));
    h.settle();

    // A late answer and the old deadline change nothing.
    holder.send_pong(&mut h, b"conflict-probe");
    h.advance(secs(10));
    assert_quiet(&mut h, [&mut holder, &mut phone]);
    assert_routes(&mut h, &mut holder, &mut phone, &conn_id);

    // The slot is plainly held again: the next claim is probed, not refused.
    let mut later = challenge(&mut h, &mut holder);
    answer_probe(&mut h, &mut holder, &mut later);
}

#[test]
fn each_probe_has_its_own_deadline() {
    let mut h = Harness::start();
    let mut holder = h.binary("srv");
    let mut first = challenge(&mut h, &mut holder);
    answer_probe(&mut h, &mut holder, &mut first);

    h.advance(secs(5));
    let mut second = challenge(&mut h, &mut holder);
    // 10 s after the first claim, 5 s into the second probe: nothing yet.
    h.advance(secs(5));
    assert_quiet(&mut h, [&mut holder, &mut second]);
    h.advance(millis(4_990));
    holder.expect_no_data(&mut h);
    h.advance(millis(10));
    holder.expect_close_frame(&mut h, HEARTBEAT_TIMEOUT);
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut second);
    assert_routes(&mut h, &mut second, &mut phone, &conn_id);
}

// ----------------------------------------------------------------- grace

#[test]
fn a_binary_that_drops_its_socket_stops_being_counted_at_once() {
    let mut h = Harness::start();
    let (binary, mut phone, _) = h.pair("srv");
    let counts = |h: &mut Harness| {
        let (_, value) = h.healthz();
        (
            value["connected_binaries"].clone(),
            value["connected_phones"].clone(),
        )
    };
    assert_eq!(counts(&mut h), (1.into(), 1.into()));

    drop(binary);
    assert_eq!(h.peers(), (0, 1));
    assert_eq!(h.counts(), (0, 1));
    phone.expect_no_data(&mut h);
}

#[test]
fn a_binary_that_closes_enters_grace_and_reclaim_closes_its_phones() {
    let mut h = Harness::start();
    let (mut binary, mut phone1, _) = h.pair("srv");
    let (mut phone2, _) = h.phone_with_id("srv", &mut binary);

    binary.send_close(&mut h, 1000, "");
    assert_eq!(binary.recv_close(&mut h), (Some(1000), String::new()));
    binary.wait_eof(&mut h);
    assert_eq!(h.stats().binaries, 0);

    h.advance(secs(29));
    assert_quiet(&mut h, [&mut phone1, &mut phone2]);

    // Reclaim: accepted at once, no probe, the old phones are closed.
    let mut restarted = h.binary("srv");
    for phone in [&mut phone1, &mut phone2] {
        phone.expect_closed(&mut h, RECLAIMED);
    }
    // No close notices for phones of the previous binary.
    restarted.expect_no_data(&mut h);
    assert_eq!(h.peers(), (1, 0));

    let (mut phone, conn_id) = h.phone_with_id("srv", &mut restarted);
    // The old grace timer (due at 30 s) must not free the reclaimed slot.
    h.advance(secs(2));
    restarted.send_pong(&mut h, b"");
    phone.send_pong(&mut h, b"");
    phone.expect_no_data(&mut h);
    assert_routes(&mut h, &mut restarted, &mut phone, &conn_id);
}

#[test]
fn grace_expires_after_exactly_the_grace_period() {
    let mut h = Harness::start();
    let mut phone = phone_in_grace(&mut h);

    h.advance(secs(29));
    phone.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);

    h.advance(secs(1));
    phone.expect_closed(&mut h, BINARY_GONE);
    assert_eq!(h.stats().phones, 0);

    // The slot is free: a new phone finds no server, a new binary is fresh.
    let mut late = h.phone("srv");
    late.expect_closed(&mut h, NO_SERVER);
    let (mut fresh, mut phone, conn_id) = h.pair("srv");
    assert_routes(&mut h, &mut fresh, &mut phone, &conn_id);
}

#[test]
fn a_phone_arriving_during_grace_is_accepted_then_closed_on_expiry() {
    let mut h = Harness::start();
    let binary = h.binary("srv");
    drop(binary);
    h.advance(secs(10));

    let mut phone = h.phone("srv");
    phone.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);

    h.advance(secs(19));
    phone.expect_no_data(&mut h);
    h.advance(secs(1));
    phone.expect_closed(&mut h, BINARY_GONE);
}

#[test]
fn a_phone_arriving_during_grace_is_kept_alive_and_closed_on_reclaim() {
    let mut h = Harness::start();
    let binary = h.binary("srv");
    drop(binary);
    h.advance(secs(5));

    let mut phone = h.phone("srv");
    // Read during grace: its pings are answered, but its messages have no
    // binary to go to (the next one closes it anyway) and are not queued.
    phone.send_text(&mut h, br#"{"early":1}"#);
    phone.send_ping(&mut h, b"still-there?");
    assert_eq!(phone.recv(&mut h), Msg::Pong(b"still-there?".to_vec()));
    phone.expect_no_data(&mut h);
    assert_eq!(h.metric("pyrycode_relay_phone_messages_dropped_total"), 1);

    let mut restarted = h.binary("srv");
    phone.expect_closed(&mut h, RECLAIMED);
    // The new binary never sees the stale phone's messages nor a notice.
    restarted.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn a_phone_leaving_during_grace_is_noticed_at_once_and_not_reported() {
    let mut h = Harness::start();
    let (mut binary, phone, _) = h.pair("srv");
    let (mut stays, _) = h.phone_with_id("srv", &mut binary);
    drop(binary);
    h.advance(secs(3));
    // A phone that gives up during grace frees its place at once (the app
    // redials; stale phones must not pile up toward the cap)...
    drop(phone);
    assert_eq!(h.stats().phones, 1);

    // ...and the next binary does not hear of it.
    let mut restarted = h.binary("srv");
    assert_eq!(stays.recv_close(&mut h).0, Some(4404));
    restarted.expect_no_data(&mut h);
}

#[test]
fn a_stale_grace_timer_does_not_free_a_later_grace_window() {
    let mut h = Harness::start();
    // t=0: the first binary leaves; its grace timer is due at 30 s.
    let (first, mut phone1, _) = h.pair("srv");
    drop(first);
    h.settle();

    // t=10: reclaimed.
    h.advance(secs(10));
    let mut second = h.binary("srv");
    phone1.expect_closed(&mut h, RECLAIMED);
    let (mut phone2, _) = h.phone_with_id("srv", &mut second);

    // t=20: the second binary leaves; its grace window ends at 50 s.
    h.advance(secs(10));
    drop(second);
    h.settle();
    let mut phone3 = h.phone("srv");

    // t=31: the first timer has fired and must have been ignored.
    h.advance(secs(11));
    assert_quiet(&mut h, [&mut phone2, &mut phone3]);
    let mut phone4 = h.phone("srv");
    phone4.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 3);

    // t=49: still waiting.
    h.advance(secs(18));
    for phone in [&mut phone2, &mut phone3, &mut phone4] {
        phone.expect_no_data(&mut h);
    }
    // t=50: the second window ends.
    h.advance(secs(1));
    for phone in [&mut phone2, &mut phone3, &mut phone4] {
        phone.expect_closed(&mut h, BINARY_GONE);
    }
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn reclaim_then_release_again_runs_a_fresh_full_grace_period() {
    let mut h = Harness::with_config(|c| c.ping_interval = secs(3600));
    let first = h.binary("srv");
    drop(first);
    h.advance(secs(29));
    let second = h.binary("srv");
    h.settle();
    drop(second);
    h.settle();
    let mut phone = h.phone("srv");
    // 29 s into the new window (58 s after the first release): still open.
    h.advance(secs(29));
    phone.expect_no_data(&mut h);
    h.advance(secs(1));
    phone.expect_closed(&mut h, BINARY_GONE);
}

#[test]
fn a_phone_waiting_out_a_long_grace_stays_while_it_answers_pings() {
    let mut h = Harness::with_config(|c| c.grace_period = secs(300));
    let mut phone = phone_in_grace(&mut h);
    for _ in 0..29 {
        h.advance(secs(10));
        phone.answer_pings_unread(&mut h);
    }
    assert_eq!(h.stats().phones, 1);
    let _restarted = h.binary("srv");
    phone.expect_close_frame(&mut h, RECLAIMED);
}

#[test]
fn a_silent_phone_during_grace_is_closed_by_the_heartbeat() {
    let mut h = Harness::with_config(|c| c.grace_period = secs(300));
    let mut phone = phone_in_grace(&mut h);
    h.advance_in_steps(secs(59), secs(1));
    assert_eq!(h.stats().phones, 1);
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, HEARTBEAT_TIMEOUT);
    assert_eq!(h.stats().phones, 0);
}

// ------------------------------------------------------ phones and conn_ids

#[test]
fn a_phone_for_an_unknown_server_id_is_upgraded_then_closed_4404() {
    let mut h = Harness::start();
    let mut other = h.binary("srv-other");
    let mut phone = h.phone("srv-missing");
    phone.expect_closed(&mut h, NO_SERVER);
    assert_eq!(h.stats().phones, 0);
    other.expect_no_data(&mut h);
}

#[test]
fn the_phone_cap_refuses_with_4429() {
    let mut h = Harness::with_config(|c| c.max_phones_per_server = 2);
    let (mut binary, mut phone1, _) = h.pair("srv");
    let (mut phone2, id2) = h.phone_with_id("srv", &mut binary);

    let mut third = h.phone("srv");
    third.expect_closed(&mut h, TOO_MANY_PHONES);
    // A refused phone was never the binary's: no notice.
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 2);

    // The cap is per server-id.
    let (_elsewhere, _p, _) = h.pair("srv-2");

    // A free place is taken again.
    phone2.send_close(&mut h, 1000, "");
    assert_eq!(binary.recv_text(&mut h), close_notice(&id2, 1000));
    let (mut phone3, id3) = h.phone_with_id("srv", &mut binary);
    assert_routes(&mut h, &mut binary, &mut phone3, &id3);
    phone1.expect_no_data(&mut h);
}

#[test]
fn the_default_phone_cap_is_16() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv");
    let mut phones = Vec::new();
    for _ in 0..16 {
        phones.push(h.phone_with_id("srv", &mut binary));
    }
    let mut extra = h.phone("srv");
    extra.expect_closed(&mut h, TOO_MANY_PHONES);
    assert_eq!(h.stats().phones, 16);
}

#[test]
fn conn_ids_have_the_spec_shape_and_never_repeat() {
    let sid = "0b1e7c4a-5f6d-4e2a-9c3b-1a2b3c4d5e6f";
    let mut h = Harness::start();
    let mut binary = h.binary(sid);
    let mut seen = std::collections::HashSet::new();
    let mut open = Vec::new();
    for round in 0..20 {
        let (mut phone, conn_id) = h.phone_with_id(sid, &mut binary);
        let prefix = format!("client-{sid}-");
        let hex = conn_id
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("bad conn_id {conn_id}"));
        assert_eq!(hex.len(), 32, "{conn_id}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{conn_id}"
        );
        assert!(seen.insert(conn_id.clone()), "conn_id repeated: {conn_id}");
        if round % 2 == 0 {
            // Reconnecting phones get new ids too.
            phone.send_close(&mut h, 1000, "");
            assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1000));
        } else {
            open.push(phone);
        }
    }
    assert_eq!(h.stats().phones, open.len());
}
