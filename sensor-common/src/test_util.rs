//! Protocol messages built for tests (feature `test-util`), shared by every crate's tests.

use std::vec::Vec;

use crate::{
    event::{event_flags, ProcRecord, SessionEvent, AF_INET, COMM_LEN, EVENT_SESSION},
    limits::CAPTURE_LEN,
    verdict::{Role, Verdict},
};

/// A StartupMessage of protocol 3.`minor` with the given parameters.
pub fn startup_message_v(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 3]);
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A protocol 3.0 StartupMessage.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    startup_message_v(params, 0)
}

/// A client-role session event as the kernel would send it for `captured`, from process
/// `comm` (pid 4242, tid 4243, uid 1000, gid 100), 127.0.0.1:40000 -> 127.0.0.2:26257.
pub fn session_event(verdict: Verdict, captured: &[u8], comm: &str) -> SessionEvent {
    let mut comm_bytes = [0u8; COMM_LEN];
    let n = comm.len().min(COMM_LEN - 1);
    comm_bytes[..n].copy_from_slice(&comm.as_bytes()[..n]);
    let mut ev = SessionEvent {
        kind: EVENT_SESSION,
        flags: event_flags::PROC_KNOWN,
        cookie: 7,
        seen_ns: 0,
        proc_: ProcRecord {
            pid_tgid: (4242u64 << 32) | 4243,
            uid_gid: (100u64 << 32) | 1000,
            cgroup_id: 99,
            connect_ns: 0,
            comm: comm_bytes,
        },
        client_addr: [0; 16],
        server_addr: [0; 16],
        dialled_addr: [0; 16],
        client_port: 40000,
        server_port: 26257,
        dialled_port: 26257,
        client_family: AF_INET,
        ip_version: AF_INET,
        role: Role::Client as u8,
        verdict: verdict as u8,
        reason: 0,
        requests: 0,
        answers: 0,
        verification: 0,
        tls_alert: 0,
        _pad: 0,
        message_len: captured.len() as u32,
        captured_len: captured.len().min(CAPTURE_LEN) as u32,
        captured: [0; CAPTURE_LEN],
    };
    // No NAT: the client dialled the server it reached.
    ev.client_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.server_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
    ev.dialled_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
    let n = captured.len().min(CAPTURE_LEN);
    ev.captured[..n].copy_from_slice(&captured[..n]);
    ev
}
