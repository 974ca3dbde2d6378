//! First light: a binary and a phone exchange one message each way.

mod common;

use common::*;

#[test]
fn a_phone_and_its_binary_exchange_frames_byte_exact() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("srv-1");
    assert!(conn_id.starts_with("client-srv-1-"));

    let inner = br#"{"v":2, "type":"noise_msg","data":"AAEC" , "pad":[1, 2.50]}"#;
    phone.send_text(&mut h, inner);
    let wrapped = binary.recv_text(&mut h);
    assert_eq!(wrapped, envelope(&conn_id, inner));

    binary.send_text(&mut h, &envelope(&conn_id, inner));
    assert_eq!(phone.recv_text(&mut h), inner.to_vec());
    assert_eq!(h.stats().phones, 1);
    assert_eq!(h.stats().binaries, 1);
}
