use super::*;
use crate::pgwire::{FirstMessage as M, TlsRecord};

const STARTUP: M = M::Startup { len: 40, minor: 0 };
const HELLO: M = M::TlsClientHello { len: 517 };
/// The client's record after a ClientHello that goes on with the handshake.
const GOES_ON: TlsRecord = TlsRecord::Other;
/// unknown_ca: what an OpenSSL client sends when the chain is not from its root file.
const UNKNOWN_CA: TlsRecord = TlsRecord::FatalAlert { description: 48 };

fn run(steps: &[Step]) -> (Tracker, u8) {
    let mut t = Tracker::NEW;
    let mut all = 0;
    for step in steps {
        all |= match *step {
            Step::Client(m) => t.client_message(m),
            Step::Answer(b) => t.server_answer(b),
            Step::Auth(ty, code) => t.server_auth(ty, code),
            Step::Reply(ty) => t.client_auth_reply(ty),
            Step::Close => t.closed(false),
            Step::Record(r) => t.client_tls_record(r),
            Step::Verifies(v) => {
                t.client_verification(v);
                0
            }
        };
    }
    (t, all)
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Client(M),
    Answer(u8),
    Auth(u8, Option<u32>),
    Reply(u8),
    Close,
    Record(TlsRecord),
    Verifies(Verification),
}
use Step::*;

#[test]
fn abandon_decides_unknown_once_and_expects_no_auth_after_a_verdict() {
    let mut t = Tracker::NEW;
    assert_eq!(t.abandon(UnknownReason::StartNotSeen), effect::VERDICT | effect::DONE);
    assert_eq!(
        (t.verdict(), t.reason()),
        (Some(Verdict::Unknown), Some(UnknownReason::StartNotSeen))
    );
    // A plaintext session given up on (its capture evicted) keeps its verdict, and nothing
    // waits for an authentication outcome that will never be followed.
    let (mut t, _) = run(&[Client(STARTUP)]);
    assert!(t.auth_follows());
    assert_eq!(t.abandon(UnknownReason::CaptureEvicted), effect::DONE);
    assert_eq!((t.verdict(), t.reason()), (Some(Verdict::Plaintext), None));
    assert!(!t.auth_follows());
}

#[test]
fn ssl_accepted_then_client_hello_is_tls() {
    let (t, e) = run(&[Client(M::SslRequest), Answer(b'S'), Client(HELLO)]);
    // Not decided at the ClientHello: the client may still reject the server.
    assert_eq!((t.verdict(), t.phase(), e), (None, Phase::TlsHandshake, 0));
    assert!(t.wants_tls_record() && !t.wants_client_message());
    let (t, e) = run(&[Client(M::SslRequest), Answer(b'S'), Client(HELLO), Record(GOES_ON)]);
    assert_eq!(t.verdict(), Some(Verdict::Tls));
    assert_eq!(t.phase(), Phase::Done);
    assert_eq!(e, effect::VERDICT | effect::DONE);
    assert_eq!(answers_of(t.answers()), ([b'S', 0], 1));
    assert_eq!((t.verification(), t.tls_alert()), (Verification::Unknown, None));
}

#[test]
fn a_client_known_not_to_verify_is_tls_unverified_after_ssl_request_or_direct() {
    for start in [&[Client(M::SslRequest), Answer(b'S')][..], &[][..]] {
        for end in [Record(GOES_ON), Close] {
            let mut steps = start.to_vec();
            steps.extend([Verifies(Verification::Unverified), Client(HELLO), end]);
            let (t, _) = run(&steps);
            assert_eq!(t.verdict(), Some(Verdict::TlsUnverified), "{steps:?}");
            assert_eq!(t.verification(), Verification::Unverified);
        }
    }
    // Verifying or unknown: the plain TLS verdicts, the verification kept for the metric.
    for v in [Verification::VerifiedChain, Verification::Unknown] {
        let (t, _) = run(&[Verifies(v), Client(HELLO), Record(GOES_ON)]);
        assert_eq!((t.verdict(), t.verification()), (Some(Verdict::TlsDirect), v));
    }
}

#[test]
fn a_fatal_alert_after_the_client_hello_is_tls_rejected_with_its_description() {
    let (t, e) = run(&[
        Client(M::SslRequest),
        Answer(b'S'),
        Verifies(Verification::VerifiedChain),
        Client(HELLO),
        Record(UNKNOWN_CA),
    ]);
    assert_eq!(e, effect::VERDICT | effect::DONE);
    assert_eq!((t.verdict(), t.tls_alert()), (Some(Verdict::TlsRejected), Some(48)));
    assert_eq!(t.verification(), Verification::VerifiedChain);
    // Every byte is a description, 255 included: the verdict says an alert was sent.
    let (t, _) = run(&[Client(HELLO), Record(TlsRecord::FatalAlert { description: 255 })]);
    assert_eq!((t.verdict(), t.tls_alert()), (Some(Verdict::TlsRejected), Some(255)));
    // Only the first record after the ClientHello counts; a later one changes nothing.
    let (t, _) = run(&[Client(HELLO), Record(GOES_ON), Record(UNKNOWN_CA)]);
    assert_eq!((t.verdict(), t.tls_alert()), (Some(Verdict::TlsDirect), None));
    // The verification told after the ClientHello (a retransmit) is ignored.
    let (t, _) = run(&[Client(HELLO), Verifies(Verification::Unverified), Record(GOES_ON)]);
    assert_eq!(t.verdict(), Some(Verdict::TlsDirect));
}

#[test]
fn a_handshake_given_up_on_is_still_counted_as_tls() {
    let mut t = Tracker::NEW;
    t.client_verification(Verification::Unverified);
    t.client_message(HELLO);
    assert_eq!(t.abandon(UnknownReason::CaptureEvicted), effect::VERDICT | effect::DONE);
    assert_eq!(t.verdict(), Some(Verdict::TlsUnverified));
}

#[test]
fn first_bytes_verdicts() {
    for (m, v) in [
        (STARTUP, Verdict::Plaintext),
        (M::CancelRequest { len: 16 }, Verdict::Cancel),
        (HELLO, Verdict::TlsDirect),
        (M::Http2Preface, Verdict::RpcPlaintext),
        (M::Unknown, Verdict::Unknown),
    ] {
        let (t, e) = run(&[Client(m), Record(GOES_ON)]);
        assert_eq!(t.verdict(), Some(v), "{m:?}");
        assert_ne!(e & effect::VERDICT, 0);
    }
}

#[test]
fn refusal_then_startup_is_downgraded_and_auth_is_followed() {
    let (t, _) = run(&[Client(M::SslRequest), Answer(b'N'), Client(STARTUP)]);
    assert_eq!(t.verdict(), Some(Verdict::Downgraded));
    assert_eq!(t.phase(), Phase::AwaitAuth);
    let (t, e) = run(&[
        Client(M::SslRequest),
        Answer(b'N'),
        Client(STARTUP),
        Auth(b'R', Some(3)),
        Reply(b'p'),
    ]);
    assert_eq!(t.auth(), AuthMethod::Cleartext);
    assert!(t.password_sent());
    assert_ne!(e & effect::AUTH, 0);
    assert_eq!(t.phase(), Phase::Done);
}

#[test]
fn gss_refused_then_ssl_refused_then_startup_is_downgraded() {
    // libpq with gssencmode=prefer and sslmode=prefer against a server with neither.
    let (t, _) = run(&[
        Client(M::GssEncRequest),
        Answer(b'N'),
        Client(M::SslRequest),
        Answer(b'N'),
        Client(STARTUP),
    ]);
    assert_eq!(t.verdict(), Some(Verdict::Downgraded));
    assert_eq!(t.requests(), REQUESTED_GSS | REQUESTED_SSL);
    assert_eq!(answers_of(t.answers()), ([b'N', b'N'], 2));
}

#[test]
fn gss_refused_then_ssl_accepted_is_tls() {
    let (t, _) = run(&[
        Client(M::GssEncRequest),
        Answer(b'N'),
        Client(M::SslRequest),
        Answer(b'S'),
        Client(HELLO),
        Close,
    ]);
    assert_eq!(t.verdict(), Some(Verdict::Tls));
}

#[test]
fn gss_accepted_is_gssenc_and_s_does_not_answer_gss() {
    let (t, _) = run(&[Client(M::GssEncRequest), Answer(b'G')]);
    assert_eq!(t.verdict(), Some(Verdict::Gssenc));
    let (t, _) = run(&[Client(M::GssEncRequest), Answer(b'S')]);
    assert_eq!(t.verdict(), Some(Verdict::Unknown));
    assert_eq!(t.reason(), Some(UnknownReason::BadServerAnswer));
}

#[test]
fn refusal_then_close_is_refused() {
    for answer in [b'N', b'E'] {
        let (t, e) = run(&[Client(M::SslRequest), Answer(answer), Close]);
        assert_eq!(t.verdict(), Some(Verdict::Refused));
        assert_ne!(e & effect::VERDICT, 0);
    }
}

#[test]
fn closes_before_a_decision() {
    let (t, e) = run(&[Close]);
    assert_eq!(t.verdict(), None, "a connection that sent nothing is not a session");
    assert_eq!(e, effect::DONE);
    let mut t = Tracker::NEW;
    t.closed(true);
    assert_eq!(t.verdict(), Some(Verdict::Unknown));
    let (t, _) = run(&[Client(M::SslRequest), Close]);
    assert_eq!(t.reason(), Some(UnknownReason::ClosedBeforeAnswer));
    let (t, _) = run(&[Client(M::SslRequest), Answer(b'S'), Close]);
    assert_eq!(t.reason(), Some(UnknownReason::NoTlsAfterAccept));
}

#[test]
fn plaintext_after_tls_accept_is_not_called_tls() {
    let (t, _) = run(&[Client(M::SslRequest), Answer(b'S'), Client(STARTUP)]);
    assert_eq!(t.verdict(), Some(Verdict::Unknown));
}

#[test]
fn auth_methods() {
    for (code, method, waits) in [
        (0, AuthMethod::Trust, false),
        (3, AuthMethod::Cleartext, true),
        (5, AuthMethod::Md5, true),
        (10, AuthMethod::Sasl, true),
        (7, AuthMethod::Gss, true),
        (2, AuthMethod::Other, false),
    ] {
        let (t, e) = run(&[Client(STARTUP), Auth(b'R', Some(code))]);
        assert_eq!(t.auth(), method);
        assert_eq!(t.phase() == Phase::AwaitPassword, waits, "code {code}");
        assert_eq!(e & effect::AUTH != 0, !waits);
    }
    let (t, _) = run(&[Client(STARTUP), Auth(b'E', None)]);
    assert_eq!(t.auth(), AuthMethod::Error);
}

#[test]
fn no_password_when_the_client_hangs_up_at_the_prompt() {
    // psql asks the user for the password on a new connection after closing this one.
    let (t, e) = run(&[Client(STARTUP), Auth(b'R', Some(3)), Close]);
    assert!(!t.password_sent());
    assert_ne!(e & effect::AUTH, 0);
}

#[test]
fn the_verdict_is_decided_once() {
    // Whatever arrives after a decision, the VERDICT effect fires exactly once.
    let mut t = Tracker::NEW;
    let mut verdicts = 0;
    for e in [
        t.client_message(STARTUP),
        t.client_message(STARTUP),
        t.server_answer(b'N'),
        t.server_auth(b'R', Some(0)),
        t.closed(false),
        t.client_message(M::SslRequest),
    ] {
        verdicts += (e & effect::VERDICT != 0) as u32;
    }
    assert_eq!(verdicts, 1);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn any_message() -> impl Strategy<Value = M> {
        prop_oneof![
            Just(M::NeedMore),
            Just(M::SslRequest),
            Just(M::GssEncRequest),
            Just(M::CancelRequest { len: 16 }),
            Just(STARTUP),
            Just(HELLO),
            Just(M::Http2Preface),
            Just(M::Unknown),
        ]
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any_message().prop_map(Client),
            any::<u8>().prop_map(Answer),
            (any::<u8>(), proptest::option::of(any::<u32>())).prop_map(|(t, c)| Auth(t, c)),
            any::<u8>().prop_map(Reply),
            Just(Close),
            any::<u8>().prop_map(|description| Record(TlsRecord::FatalAlert { description })),
            Just(Record(GOES_ON)),
            prop_oneof![
                Just(Verification::Unknown),
                Just(Verification::VerifiedChain),
                Just(Verification::Unverified)
            ]
            .prop_map(Verifies),
        ]
    }

    proptest! {
        #[test]
        fn at_most_one_verdict_and_plaintext_only_from_a_startup(steps in proptest::collection::vec(any_step(), 0..12)) {
            let mut t = Tracker::NEW;
            let mut verdicts = 0;
            let mut startup_seen = false;
            let mut hello_seen = false;
            let mut unverified_told = false;
            for step in &steps {
                let e = match *step {
                    Client(m) => {
                        startup_seen |= matches!(m, M::Startup { .. });
                        hello_seen |= matches!(m, M::TlsClientHello { .. });
                        t.client_message(m)
                    }
                    Answer(b) => t.server_answer(b),
                    Auth(ty, c) => t.server_auth(ty, c),
                    Reply(ty) => t.client_auth_reply(ty),
                    Close => t.closed(false),
                    Record(r) => t.client_tls_record(r),
                    Verifies(v) => {
                        unverified_told |= v == Verification::Unverified;
                        t.client_verification(v);
                        0
                    }
                };
                verdicts += (e & effect::VERDICT != 0) as u32;
            }
            prop_assert!(verdicts <= 1);
            // Never called unverified without being told so; never rejected without a
            // ClientHello and an alert.
            if t.verdict() == Some(Verdict::TlsUnverified) {
                prop_assert!(unverified_told && hello_seen);
            }
            if t.verdict() == Some(Verdict::TlsRejected) {
                prop_assert!(hello_seen && t.tls_alert().is_some());
            }
            if matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)) {
                prop_assert!(startup_seen);
            }
            if t.password_sent() {
                prop_assert!(matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)));
            }
        }
    }
}
