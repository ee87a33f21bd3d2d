//! One kernel event -> one finding. The verdict is recomputed from the captured bytes with
//! the shared classifier; it must equal the kernel's (which is what the metrics count), and
//! a mismatch is logged as a bug rather than silently trusted either way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{
    event::{event_flags, SessionEvent, AF_INET},
    pgwire::{classify_bytes, FirstMessage, StartupParams},
    verdict::{Role, UnknownReason, Verdict},
};

use crate::{
    clock,
    finding::{Endpoint, Finding, Process, Startup},
};

/// Startup values longer than this are cut: enough for any real user or database name.
const MAX_VALUE_CHARS: usize = 256;

/// The verdict as counted by the kernel, with the event's unknown-reason.
pub fn kernel_verdict(ev: &SessionEvent) -> (Verdict, UnknownReason) {
    (Verdict::from_u8(ev.verdict).unwrap_or(Verdict::Unknown), UnknownReason::from_u8(ev.reason))
}

/// Build the finding for an event.
pub fn finding_from_event(ev: &SessionEvent) -> Finding {
    let (verdict, reason) = kernel_verdict(ev);
    let first = if reason == UnknownReason::None
        || reason == UnknownReason::NotPgwire
        || reason == UnknownReason::ShortFirstSegment
    {
        // The kernel classified from (at most) the captured prefix: so do we.
        let first = classify_first_of(ev);
        if first.verdict() != verdict {
            tracing::warn!(
                kernel = verdict.name(),
                user = first.verdict().name(),
                "kernel and userspace classifiers disagree; reporting the kernel's verdict"
            );
        }
        Some(first)
    } else {
        None
    };

    let startup = match first {
        Some(FirstMessage::Startup { minor, len }) => {
            Some(parse_startup(ev.captured(), minor, len))
        }
        _ => None,
    };
    let process = (ev.flags & event_flags::PROC_KNOWN != 0).then(|| Process {
        pid: ev.proc_.tgid(),
        tid: ev.proc_.tid(),
        comm: comm_to_string(&ev.proc_.comm),
        uid: ev.proc_.uid(),
        gid: ev.proc_.gid(),
        cgroup_id: ev.proc_.cgroup_id,
    });
    let role = Role::from_u8(ev.role).unwrap_or(Role::Client);

    Finding {
        ts: humantime::format_rfc3339_micros(clock::to_system_time(ev.seen_ns)).to_string(),
        verdict: verdict.name(),
        severity: verdict.severity().name(),
        role: role.name(),
        reason: (verdict == Verdict::Unknown).then(|| reason.name()),
        src: Endpoint { ip: ip_of(ev.ip_version, &ev.src_addr).to_string(), port: ev.src_port },
        dst: Endpoint { ip: ip_of(ev.ip_version, &ev.dst_addr).to_string(), port: ev.dst_port },
        process,
        startup,
        socket_cookie: ev.cookie,
        fast_open: ev.flags & event_flags::FAST_OPEN != 0,
    }
}

fn classify_first_of(ev: &SessionEvent) -> FirstMessage {
    // The kernel captured at least the bytes it decided on (the whole first message, or the
    // classifier's prefix), and the classifier never changes its mind when given more bytes
    // (a property test in sensor-common), so this reproduces the kernel's decision.
    classify_bytes(ev.captured())
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
