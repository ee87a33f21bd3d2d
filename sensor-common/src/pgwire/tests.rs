use super::*;
use crate::{tracker::Tracker, verdict::Verdict};
use proptest::prelude::*;
use std::{vec, vec::Vec};

fn startup(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    crate::test_util::startup_message_v(params, minor)
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

#[test]
fn ssl_request_is_tls() {
    assert_eq!(classify_bytes(&SSL_REQUEST), FirstMessage::SslRequest);
    assert_eq!(classify_bytes(&SSL_REQUEST).accepted(), Verdict::Tls);
}

#[test]
fn gssenc_request() {
    assert_eq!(classify_bytes(&GSSENC_REQUEST), FirstMessage::GssEncRequest);
    assert_eq!(FirstMessage::GssEncRequest.accepted(), Verdict::Gssenc);
}

#[test]
fn ssl_request_with_wrong_length_is_unknown() {
    let mut b = SSL_REQUEST;
    b[3] = 9;
    assert_eq!(classify_bytes(&b), FirstMessage::Unknown);
}

#[test]
fn cancel_request_30_and_32() {
    let mut b = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    b.extend_from_slice(&[0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    assert_eq!(classify_bytes(&b), FirstMessage::CancelRequest { len: 16 });
    // Protocol 3.2: a 32-byte secret key makes it 40 bytes long.
    let mut long = vec![0, 0, 0, 40, 0x04, 0xd2, 0x16, 0x2e];
    long.extend_from_slice(&[7u8; 32]);
    assert_eq!(classify_bytes(&long), FirstMessage::CancelRequest { len: 40 });
    assert_eq!(classify_bytes(&long).accepted(), Verdict::Cancel);
    // Shorter than the 3.0 message: not a cancel.
    let short = [0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e];
    assert_eq!(classify_bytes(&short), FirstMessage::Unknown);
}

#[test]
fn startup_30_is_plaintext() {
    let m = startup(&[("user", "app"), ("database", "orders")], 0);
    let c = classify_bytes(&m);
    assert_eq!(c, FirstMessage::Startup { len: m.len() as u32, minor: 0 });
    assert_eq!(c.accepted(), Verdict::Plaintext);
    assert_eq!(c.message_len(), Some(m.len() as u32));
}

#[test]
fn startup_32_is_plaintext() {
    let m = startup(&[("user", "app")], 2);
    assert!(matches!(classify_bytes(&m), FirstMessage::Startup { minor: 2, .. }));
}

#[test]
fn startup_over_max_length_is_unknown() {
    let mut m = startup(&[("user", "app")], 0);
    m[0..4].copy_from_slice(&(MAX_STARTUP_LEN + 1).to_be_bytes());
    assert_eq!(classify_bytes(&m), FirstMessage::Unknown);
}

#[test]
fn protocol_2_is_unknown() {
    let mut m = startup(&[("user", "app")], 0);
    m[4..6].copy_from_slice(&[0, 2]);
    assert_eq!(classify_bytes(&m), FirstMessage::Unknown);
}

#[test]
fn tls_client_hello_is_direct_tls() {
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    assert_eq!(classify_bytes(&hello), FirstMessage::TlsClientHello { len: 5 + 0x200 });
    assert_eq!(FirstMessage::TlsClientHello { len: 517 }.accepted(), Verdict::TlsDirect);
    // A TLS alert record is not a ClientHello.
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
    assert_eq!(classify_bytes(&alert), FirstMessage::Unknown);
    // A handshake record whose first message is not ClientHello.
    let server_hello = [0x16, 0x03, 0x03, 0x00, 0x40, 0x02];
    assert_eq!(classify_bytes(&server_hello), FirstMessage::Unknown);
}

#[test]
fn http2_preface_is_rpc_plaintext() {
    assert_eq!(classify_bytes(HTTP2_PREFACE), FirstMessage::Http2Preface);
    assert_eq!(classify_bytes(&HTTP2_PREFACE[..10]), FirstMessage::NeedMore);
    assert_eq!(classify_bytes(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"), FirstMessage::Unknown);
    assert_eq!(classify_bytes(b"POST / HTTP/1.1\r\n"), FirstMessage::Unknown);
}

#[test]
fn short_inputs_need_more() {
    assert_eq!(classify_bytes(&[]), FirstMessage::NeedMore);
    assert_eq!(classify_bytes(&SSL_REQUEST[..7]), FirstMessage::NeedMore);
    assert_eq!(classify_bytes(&[0x16]), FirstMessage::NeedMore);
    assert_eq!(classify_bytes(&[0x16, 0x03, 0x01]), FirstMessage::NeedMore);
    assert_eq!(classify_bytes(&[0x16, 0x07]), FirstMessage::Unknown);
    assert_eq!(FirstMessage::NeedMore.accepted(), Verdict::Unknown, "closed before a decision");
}

#[test]
fn garbage_is_unknown() {
    assert_eq!(classify_bytes(b"GET / HTTP/1.1\r\n"), FirstMessage::Unknown);
    assert_eq!(classify_bytes(&[0xff; 32]), FirstMessage::Unknown);
}

#[test]
fn startup_params_are_parsed() {
    let m = startup(&[("user", "alice"), ("database", "shop"), ("application_name", "psql")], 0);
    let got: Vec<_> = StartupParams::new(&m).collect();
    assert_eq!(
        got,
        vec![
            (&b"user"[..], &b"alice"[..]),
            (&b"database"[..], &b"shop"[..]),
            (&b"application_name"[..], &b"psql"[..]),
        ]
    );
}

#[test]
fn startup_params_stop_at_truncation() {
    let m = startup(&[("user", "alice"), ("database", "shop")], 0);
    // Cut inside the second value: only the complete first pair comes out.
    let cut = &m[..m.len() - 4];
    let got: Vec<_> = StartupParams::new(cut).collect();
    assert_eq!(got, vec![(&b"user"[..], &b"alice"[..])]);
}

#[test]
fn startup_params_respect_the_claimed_length() {
    let mut m = startup(&[("user", "alice")], 0);
    // Bytes after the message (a pipelined next message) must not be read as parameters.
    let claimed = m.len();
    m.extend_from_slice(b"secret\0hunter2\0\0");
    let got: Vec<_> = StartupParams::new(&m).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(&m[..claimed], &startup(&[("user", "alice")], 0)[..]);
}

proptest! {
    #[test]
    fn never_panics_and_ignores_bytes_past_avail(bytes in proptest::collection::vec(any::<u8>(), 0..64), junk in any::<u8>()) {
        let a = classify_bytes(&bytes);
        // Same stream prefix, different padding past `avail`: same answer.
        let mut padded = prefix_of(&bytes);
        for b in padded.iter_mut().skip(bytes.len()) { *b = junk; }
        prop_assert_eq!(a, classify_first(&padded, bytes.len()));
        let _ = StartupParams::new(&bytes).count();
    }

    #[test]
    fn decided_verdicts_are_stable_under_more_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..48), more in proptest::collection::vec(any::<u8>(), 0..16)) {
        // Once the classifier decides, appending bytes never changes its mind:
        // the kernel may decide on a shorter prefix than userspace later sees.
        let first = classify_bytes(&bytes);
        if first != FirstMessage::NeedMore {
            let mut longer = bytes.clone();
            longer.extend_from_slice(&more);
            prop_assert_eq!(first, classify_bytes(&longer));
        }
    }

    #[test]
    fn any_startup_message_is_plaintext(user in "[a-z]{1,20}", db in "[a-z]{0,20}", minor in 0u16..3) {
        let m = startup(&[("user", &user), ("database", &db)], minor);
        prop_assert_eq!(classify_bytes(&m).accepted(), Verdict::Plaintext);
        let params: Vec<_> = StartupParams::new(&m).collect();
        prop_assert_eq!(params[0].1, user.as_bytes());
    }

    #[test]
    fn any_split_of_a_startup_decides_the_same(split in 0usize..40) {
        let m = startup(&[("user", "app"), ("database", "orders")], 0);
        let split = split.min(m.len());
        let c = classify_bytes(&m[..split]);
        prop_assert!(c == FirstMessage::NeedMore || c == classify_bytes(&m));
    }
}

/// The verdict the shared tracker reaches when `self` opens a session and the server
/// accepts whatever encryption it asks for (closing the connection where nothing more can
/// come): the tracker, not a second table here, decides.
trait Accepted {
    fn accepted(self) -> Verdict;
}

impl Accepted for FirstMessage {
    fn accepted(self) -> Verdict {
        let mut t = Tracker::NEW;
        t.client_message(self);
        match self {
            FirstMessage::SslRequest => {
                t.server_answer(b'S');
                t.client_message(FirstMessage::TlsClientHello { len: 517 });
                t.closed(false);
            }
            FirstMessage::GssEncRequest => {
                t.server_answer(b'G');
            }
            _ => {
                t.closed(true);
            }
        }
        t.verdict().expect("every first message leads to a verdict")
    }
}
