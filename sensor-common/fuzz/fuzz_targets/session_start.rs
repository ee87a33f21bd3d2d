//! Fuzz the classifier, the startup-parameter parser and the session state machine with
//! arbitrary bytes, checking the invariants the kernel and the agent rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_common::{
    limits::PREFIX_LEN,
    pgwire::{
        classify_bytes, classify_first, classify_tls_record, prefix_of, FirstMessage,
        StartupParams, TLS_PEEK_LEN,
    },
    tracker::{effect, Tracker},
    verdict::{Verdict, Verification},
};

fuzz_target!(|data: &[u8]| {
    // The classifier: total, and never changes its mind when more bytes come.
    let whole = classify_bytes(data);
    assert_eq!(whole, classify_first(&prefix_of(data), data.len()));
    for cut in 0..data.len().min(PREFIX_LEN + 1) {
        let part = classify_bytes(&data[..cut]);
        assert!(part == FirstMessage::NeedMore || part == whole, "{cut}: {part:?} vs {whole:?}");
    }
    if let Some(len) = whole.message_len() {
        assert!(len >= 8);
    }

    // The startup parser: total, and every pair lies inside the claimed message.
    for (key, value) in StartupParams::new(data) {
        assert!(!key.is_empty());
        assert!(!key.contains(&0) && !value.contains(&0));
    }

    // The state machine, driven by the bytes as a script of steps.
    let mut t = Tracker::NEW;
    let mut verdicts = 0;
    let mut startup_seen = false;
    let mut unverified_told = false;
    let mut steps = data.chunks(9);
    for step in steps.by_ref().take(16) {
        let e = match step[0] % 7 {
            0 => {
                let m = classify_bytes(&step[1..]);
                startup_seen |= matches!(m, FirstMessage::Startup { .. });
                t.client_message(m)
            }
            1 => t.server_answer(*step.get(1).unwrap_or(&b'N')),
            2 => {
                let code = step.get(1..5).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                t.server_auth(*step.get(5).unwrap_or(&b'R'), code)
            }
            3 => t.client_auth_reply(*step.get(1).unwrap_or(&b'p')),
            4 => {
                let mut peek = [0u8; TLS_PEEK_LEN];
                let avail = (step.len() - 1).min(TLS_PEEK_LEN);
                peek[..avail].copy_from_slice(&step[1..1 + avail]);
                t.client_tls_record(classify_tls_record(&peek, avail))
            }
            5 => {
                let v = Verification::ALL[*step.get(1).unwrap_or(&0) as usize % Verification::COUNT];
                unverified_told |= v == Verification::Unverified;
                t.client_verification(v);
                0
            }
            _ => t.closed(step.len() > 1),
        };
        verdicts += (e & effect::VERDICT != 0) as u32;
    }
    assert!(verdicts <= 1, "a connection is counted at most once");
    if matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)) {
        assert!(startup_seen, "plaintext only from a StartupMessage");
    }
    if t.verdict() == Some(Verdict::TlsUnverified) {
        assert!(unverified_told, "unverified only when the client's library said so");
    }
    if t.verdict() == Some(Verdict::TlsRejected) {
        assert!(t.tls_alert().is_some(), "rejected only on a fatal alert");
    }
    if t.password_sent() {
        assert!(matches!(t.verdict(), Some(Verdict::Plaintext | Verdict::Downgraded)));
    }
});
