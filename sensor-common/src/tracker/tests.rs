use super::*;
use crate::pgwire::FirstMessage as M;

const STARTUP: M = M::Startup { len: 40, minor: 0 };

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
    let (t, e) = run(&[Client(M::SslRequest), Answer(b'S'), Client(M::TlsClientHello)]);
    assert_eq!(t.verdict(), Some(Verdict::Tls));
    assert_eq!(t.phase(), Phase::Done);
    assert_ne!(e & effect::DONE, 0);
    assert_eq!(answers_of(t.answers()), ([b'S', 0], 1));
}

#[test]
fn first_bytes_verdicts() {
    for (m, v) in [
        (STARTUP, Verdict::Plaintext),
        (M::CancelRequest { len: 16 }, Verdict::Cancel),
        (M::TlsClientHello, Verdict::TlsDirect),
        (M::Http2Preface, Verdict::RpcPlaintext),
        (M::Unknown, Verdict::Unknown),
    ] {
        let (t, e) = run(&[Client(m)]);
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
        Client(M::TlsClientHello),
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
            Just(M::TlsClientHello),
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
        ]
    }

    proptest! {
        #[test]
        fn at_most_one_verdict_and_plaintext_only_from_a_startup(steps in proptest::collection::vec(any_step(), 0..12)) {
            let mut t = Tracker::NEW;
            let mut verdicts = 0;
            let mut startup_seen = false;
            for step in &steps {
                let e = match *step {
                    Client(m) => { startup_seen |= matches!(m, M::Startup { .. }); t.client_message(m) }
                    Answer(b) => t.server_answer(b),
                    Auth(ty, c) => t.server_auth(ty, c),
                    Reply(ty) => t.client_auth_reply(ty),
                    Close => t.closed(false),
                };
                verdicts += (e & effect::VERDICT != 0) as u32;
            }
            prop_assert!(verdicts <= 1);
            if matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)) {
                prop_assert!(startup_seen);
            }
            if t.password_sent() {
                prop_assert!(matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)));
            }
        }
    }
}
