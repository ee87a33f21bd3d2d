//! Drive the shared `Tracker` over a connection's two reassembled streams, making the same
//! decisions, in the same order, as the kernel makes packet by packet.

use std::{net::IpAddr, time::SystemTime};

use sensor_common::{
    event::{event_flags, ProcRecord, SessionEvent, AF_INET, AF_INET6},
    limits::CAPTURE_LEN,
    pgwire::{capture_limit, classify_bytes, FirstMessage, CANCEL_EVIDENCE_LEN},
    tracker::{effect, AuthMethod, Phase, Tracker},
    verdict::{Role, Verdict},
};

use super::streams::Flow;
use crate::{
    finding::Finding,
    session::{apply_auth, finding_from_event_at},
};

pub struct Replayed {
    pub verdict: Verdict,
    pub finding: Finding,
}

/// The most steps a session start can take (GSS, answer, SSL, answer, startup, auth,
/// reply), with room to spare; every step either advances or stops.
const MAX_STEPS: usize = 16;

pub fn replay(flow: &Flow) -> Option<Replayed> {
    let client = flow.client_stream.contiguous();
    let server = flow.server_stream.contiguous();
    let mut t = Tracker::NEW;
    let mut msg_start = 0usize;
    let mut msg_len = 0u32;
    let mut server_at = 0usize;
    let mut auth_known = false;

    for _ in 0..MAX_STEPS {
        let e = match t.phase() {
            Phase::ClientFirst | Phase::AwaitHello | Phase::AfterRefusal => {
                let first = classify_bytes(client.get(msg_start..).unwrap_or(&[]));
                if first == FirstMessage::NeedMore {
                    break;
                }
                msg_len = first.message_len().unwrap_or(0);
                let e = t.client_message(first);
                if e & effect::NEXT_MESSAGE != 0
                    && matches!(first, FirstMessage::SslRequest | FirstMessage::GssEncRequest)
                {
                    msg_start += 8;
                    msg_len = 0;
                }
                e
            }
            Phase::AwaitAnswer => {
                let Some(&answer) = server.get(server_at) else { break };
                server_at += 1;
                t.server_answer(answer)
            }
            Phase::AwaitAuth => {
                let Some(&msg_type) = server.get(server_at) else { break };
                let code = server
                    .get(server_at + 5..server_at + 9)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                t.server_auth(msg_type, code)
            }
            Phase::AwaitPassword => {
                let Some(&msg_type) = client.get(msg_start + msg_len as usize) else { break };
                t.client_auth_reply(msg_type)
            }
            Phase::Done => break,
        };
        auth_known |= e & effect::AUTH != 0;
    }
    if t.phase() != Phase::Done && flow.closed {
        let partial = t.wants_client_message() && client.len() > msg_start;
        auth_known |= t.closed(partial) & effect::AUTH != 0;
    }

    let verdict = t.verdict()?;
    let limit =
        if verdict == Verdict::Cancel { CANCEL_EVIDENCE_LEN } else { capture_limit(msg_len) };
    let end = client.len().min(msg_start + limit as usize);
    let evidence = client.get(msg_start..end).unwrap_or(&[]);
    let ev = session_event(flow, &t, msg_len, evidence);
    let mut finding = finding_from_event_at(&ev, flow.first_data.unwrap_or(SystemTime::UNIX_EPOCH));
    if auth_known {
        apply_auth(&mut finding, AuthMethod::from_u8(t.auth), t.password_sent != 0);
    }
    Some(Replayed { verdict, finding })
}

fn session_event(flow: &Flow, t: &Tracker, msg_len: u32, evidence: &[u8]) -> SessionEvent {
    let (ip_version, src_addr) = wire_addr(flow.client.0);
    let (_, dst_addr) = wire_addr(flow.server.0);
    let mut flags = 0;
    if flow.fast_open {
        flags |= event_flags::FAST_OPEN;
    }
    if msg_len as usize > evidence.len() {
        flags |= event_flags::TRUNCATED;
    }
    let mut captured = [0u8; CAPTURE_LEN];
    captured[..evidence.len()].copy_from_slice(evidence);
    SessionEvent {
        kind: sensor_common::event::EVENT_SESSION,
        flags,
        cookie: 0,
        seen_ns: 0,
        proc_: ProcRecord::EMPTY,
        src_addr,
        dst_addr,
        src_port: flow.client.1,
        dst_port: flow.server.1,
        ip_version,
        role: Role::Client as u8,
        verdict: t.verdict,
        reason: t.reason,
        requests: t.requests,
        answers: t.answers,
        _pad: [0; 2],
        message_len: msg_len,
        captured_len: evidence.len() as u32,
        _pad2: 0,
        captured,
    }
}

/// Addresses as the kernel reports them: IPv4 in the first four bytes.
fn wire_addr(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (AF_INET, out)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}
