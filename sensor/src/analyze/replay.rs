//! Drive the shared `Tracker` and `MessageAssembly` over a connection's two reassembled
//! streams, making the same decisions, in the same order, as the kernel makes packet by
//! packet, and build the same typed `Session` the live pipeline builds.

use std::time::SystemTime;

use sensor_common::{
    assembly::{MessageAssembly, Placement},
    pgwire::{
        auth_code, classify_bytes, classify_tls_record, FirstMessage, TlsRecord, AUTH_PEEK_LEN,
        TLS_PEEK_LEN,
    },
    tracker::{effect, Phase, Tracker},
    verdict::Role,
};

use super::streams::Flow;
use crate::{
    identity::Origin,
    session::{apply_auth, negotiation_of, Session},
};

pub struct Replayed {
    pub verdict: sensor_common::verdict::Verdict,
    pub finding: crate::finding::Finding,
}

/// The most steps a session start can take (GSS, answer, SSL, answer, startup, auth,
/// reply), with room to spare; every step either advances or stops.
const MAX_STEPS: usize = 16;

pub fn replay(flow: &Flow, origin: &Origin) -> Option<Replayed> {
    let client = flow.client_stream.contiguous();
    let server = flow.server_stream.contiguous();
    let mut t = Tracker::NEW;
    let mut message = MessageAssembly::NEW;
    let mut server_at = 0usize;
    let mut auth_known = false;

    for _ in 0..MAX_STEPS {
        let e = match t.phase() {
            Phase::ClientFirst | Phase::AwaitHello | Phase::AfterRefusal => {
                let first = classify_bytes(client.get(message.start() as usize..).unwrap_or(&[]));
                if first == FirstMessage::NeedMore {
                    break;
                }
                message.classified(first);
                t.client_message(first)
            }
            Phase::AwaitAnswer => {
                let Some(&answer) = server.get(server_at) else { break };
                server_at += 1;
                t.server_answer(answer)
            }
            Phase::AwaitAuth => {
                let Some(&msg_type) = server.get(server_at) else { break };
                let code = server
                    .get(server_at..server_at + AUTH_PEEK_LEN)
                    .and_then(|peek| peek.try_into().ok())
                    .map(auth_code);
                t.server_auth(msg_type, code)
            }
            Phase::TlsHandshake => {
                // The client's record right after its ClientHello, as the kernel peeks at it.
                let at = message.start().wrapping_add(message.message_len()) as usize;
                let Some(rest) = client.get(at..).filter(|rest| !rest.is_empty()) else { break };
                let record = match rest.get(..TLS_PEEK_LEN).and_then(|p| p.try_into().ok()) {
                    Some(peek) => classify_tls_record(peek, TLS_PEEK_LEN),
                    None => TlsRecord::Other,
                };
                t.client_tls_record(record)
            }
            Phase::AwaitPassword => {
                let at = message.reply_type_offset(0, client.len() as u32);
                let Some(&msg_type) = at.and_then(|at| client.get(at as usize)) else { break };
                t.client_auth_reply(msg_type)
            }
            Phase::Done => break,
        };
        auth_known |= e & effect::AUTH != 0;
    }
    // The whole stream is one "segment": the assembly holds what the kernel would hold.
    if let Placement::Append { at: 0, n, .. } = message.place(0, client.len() as u32) {
        message.appended(n);
    }
    if t.phase() != Phase::Done && flow.closed {
        let partial = t.wants_client_message() && message.have() > 0;
        auth_known |= t.closed(partial) & effect::AUTH != 0;
    }
    // A capture that ends inside the handshake: TLS, as the kernel counts a handshake it
    // stops following.
    if t.phase() == Phase::TlsHandshake {
        t.closed(false);
    }

    let verdict = t.verdict()?;
    let start = message.start() as usize;
    let evidence_len = message.evidence_len(verdict) as usize;
    let evidence = client.get(start..start + evidence_len).unwrap_or(&[]).to_vec();
    let (requested, server_answers) = negotiation_of(t.requests(), t.answers());
    let session = Session {
        seen: flow.first_data.unwrap_or(SystemTime::UNIX_EPOCH),
        cookie: None,
        process: None,
        client: flow.client.into(),
        // A capture shows the wire only: what the client dialled is not in it.
        dialled: None,
        server: flow.server.into(),
        role: Role::Client,
        verdict,
        reason: t.reason(),
        requested,
        server_answers,
        evidence,
        fast_open: flow.fast_open,
        opened_before_start: false,
        auth_follows: t.auth_follows(),
        // A capture cannot show whether the client checks the certificate.
        verification: sensor_common::verdict::Verification::Unknown,
        tls_alert: t.tls_alert(),
    };
    let mut finding = session.finding(origin);
    if auth_known {
        apply_auth(&mut finding, t.auth(), t.password_sent());
    }
    Some(Replayed { verdict, finding })
}
