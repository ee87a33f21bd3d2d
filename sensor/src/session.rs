//! Kernel events -> findings: the verdict the kernel counted, the startup parameters from
//! the captured message, the negotiation, and (joined later) the authentication outcome.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{
    event::{event_flags, SessionEvent, AF_INET},
    pgwire::{classify_bytes, FirstMessage, StartupParams},
    tracker::{answers_of, AuthMethod, REQUESTED_GSS, REQUESTED_SSL},
    verdict::{Role, Severity, UnknownReason, Verdict},
};

use crate::{
    clock,
    finding::{Auth, Endpoint, Finding, Negotiation, Process, Startup},
};

/// Startup values longer than this are cut: enough for any real user or database name.
const MAX_VALUE_CHARS: usize = 256;

/// The verdict as counted by the kernel, with the event's unknown-reason.
pub fn kernel_verdict(ev: &SessionEvent) -> (Verdict, UnknownReason) {
    (Verdict::from_u8(ev.verdict).unwrap_or(Verdict::Unknown), UnknownReason::from_u8(ev.reason))
}

/// Build the finding for a session event. Its `auth` is filled in later by
/// [`apply_auth`] when the event says an auth event follows.
pub fn finding_from_event(ev: &SessionEvent) -> Finding {
    finding_from_event_at(ev, clock::to_system_time(ev.seen_ns))
}

/// [`finding_from_event`] with the time given (a capture's packet time, for `analyze`).
pub fn finding_from_event_at(ev: &SessionEvent, ts: std::time::SystemTime) -> Finding {
    let (verdict, reason) = kernel_verdict(ev);
    // The captured bytes are the message that decided the verdict; for plaintext and
    // downgraded sessions that is the StartupMessage.
    let startup = match classify_bytes(ev.captured()) {
        FirstMessage::Startup { minor, len } => Some(parse_startup(ev.captured(), minor, len)),
        _ => None,
    };
    let process = (ev.flags & event_flags::PROC_KNOWN != 0).then(|| Process {
        pid: ev.proc_.tgid(),
        tid: ev.proc_.tid(),
        comm: comm_to_string(&ev.proc_.comm),
        uid: ev.proc_.uid(),
        gid: ev.proc_.gid(),
        cgroup_id: ev.proc_.cgroup_id,
        ..Process::default()
    });
    let role = Role::from_u8(ev.role).unwrap_or(Role::Client);

    Finding {
        ts: humantime::format_rfc3339_micros(ts).to_string(),
        verdict: verdict.name(),
        severity: verdict.severity().name(),
        role: role.name(),
        reason: (verdict == Verdict::Unknown).then(|| reason.name()),
        src: Endpoint { ip: ip_of(ev.ip_version, &ev.src_addr).to_string(), port: ev.src_port },
        dst: Endpoint { ip: ip_of(ev.ip_version, &ev.dst_addr).to_string(), port: ev.dst_port },
        process,
        negotiation: negotiation_of(ev.requests, ev.answers),
        startup,
        auth: None,
        socket_cookie: (ev.cookie != 0).then_some(ev.cookie),
        fast_open: ev.flags & event_flags::FAST_OPEN != 0,
        opened_before_start: ev.flags & event_flags::ADOPTED != 0,
    }
}

/// Whether the finding should wait for an auth event before it is written.
pub fn auth_follows(ev: &SessionEvent) -> bool {
    ev.flags & event_flags::AUTH_FOLLOWS != 0
}

/// Add the authentication outcome; a cleartext password on a plaintext or downgraded
/// session makes the finding critical.
pub fn apply_auth(finding: &mut Finding, method: AuthMethod, password_sent: bool) {
    finding.auth = Some(Auth { method: method.name(), password_sent });
    if password_sent && method == AuthMethod::Cleartext {
        finding.severity = Severity::Critical.name();
    }
}

fn negotiation_of(requests: u8, answers: u8) -> Option<Negotiation> {
    if requests == 0 {
        return None;
    }
    let mut requested = Vec::new();
    // libpq asks for GSS encryption before TLS when it asks for both.
    if requests & REQUESTED_GSS != 0 {
        requested.push("gssenc");
    }
    if requests & REQUESTED_SSL != 0 {
        requested.push("ssl");
    }
    let (bytes, n) = answers_of(answers);
    Some(Negotiation { requested, server_answers: bytes[..n].iter().map(|&b| b as char).collect() })
}

fn parse_startup(message: &[u8], minor: u16, claimed_len: u32) -> Startup {
    let mut startup = Startup {
        protocol: format!("3.{minor}"),
        truncated: (message.len() as u64) < claimed_len as u64,
        ..Startup::default()
    };
    for (key, value) in StartupParams::new(message) {
        let slot = match key {
            b"user" => &mut startup.user,
            b"database" => &mut startup.database,
            b"application_name" => &mut startup.application_name,
            _ => continue,
        };
        *slot = Some(bounded_string(value));
    }
    if startup.database.is_none() && !startup.truncated {
        startup.database = startup.user.clone();
    }
    startup
}

fn bounded_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(MAX_VALUE_CHARS).collect()
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn ip_of(ip_version: u8, addr: &[u8; 16]) -> IpAddr {
    if ip_version == AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

#[cfg(test)]
mod tests;
