//! Judged sessions -> findings. A [`Session`] is one session start as the sensor judged it:
//! the live pipeline builds it from a kernel event ([`Session::from_event`]), `sensor
//! analyze` from a replayed capture; both then get the same [`Finding`] from
//! [`Session::finding`], and the authentication outcome joined later by [`apply_auth`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use sensor_common::{
    event::{event_flags, ProcRecord, SessionEvent, AF_INET},
    pgwire::{classify_bytes, FirstMessage, StartupParams},
    tracker::{answers_of, AuthMethod, Encryption},
    verdict::{Role, Severity, UnknownReason, Verdict, Verification},
};

use crate::{
    clock,
    finding::{
        new_id, Auth, Endpoint, Finding, Negotiation, Process, ProtocolVersion, Startup, Tls,
        TlsAlert, SCHEMA_VERSION,
    },
    identity::Origin,
};

/// Startup values longer than this are cut: enough for any real user or database name.
const MAX_VALUE_CHARS: usize = 256;

/// One judged session start, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// When the verdict was decided (live) or the client's first data was seen (capture).
    pub seen: SystemTime,
    /// The kernel's socket cookie; `None` from a capture, which has no sockets.
    pub cookie: Option<u64>,
    /// The connecting process as recorded at connect(), when a connect hook saw it.
    pub process: Option<ProcRecord>,
    pub client: SocketAddr,
    /// Where the client connected to, when a NAT rule on its host sent the session to
    /// another address or port (`server`).
    pub dialled: Option<SocketAddr>,
    pub server: SocketAddr,
    pub role: Role,
    pub verdict: Verdict,
    /// Why the verdict is `unknown`.
    pub reason: Option<UnknownReason>,
    /// What the client asked for, in libpq's order (GSS before TLS).
    pub requested: Vec<Encryption>,
    /// The server's one-byte answers, in order.
    pub server_answers: String,
    /// The message that decided the verdict, as far as it may be kept.
    pub evidence: Vec<u8>,
    pub fast_open: bool,
    pub opened_before_start: bool,
    /// The authentication outcome is still to come (plaintext or downgraded sessions).
    pub auth_follows: bool,
    /// What the client's TLS library said about verifying the server (TLS verdicts).
    pub verification: Verification,
    /// The fatal TLS alert the client sent (`tls_rejected`).
    pub tls_alert: Option<u8>,
}

impl Session {
    /// A session as the kernel reported it. Bytes the kernel sent are not trusted: an
    /// out-of-range verdict is `unknown`, an out-of-range role `client`.
    pub fn from_event(ev: &SessionEvent) -> Session {
        let server = SocketAddr::new(ip_of(ev.ip_version, &ev.server_addr), ev.server_port);
        let verdict = Verdict::from_u8(ev.verdict).unwrap_or(Verdict::Unknown);
        let (requested, server_answers) = negotiation_of(ev.requests, ev.answers);
        Session {
            seen: clock::to_system_time(ev.seen_ns),
            cookie: (ev.cookie != 0).then_some(ev.cookie),
            process: (ev.flags & event_flags::PROC_KNOWN != 0).then_some(ev.proc_),
            client: SocketAddr::new(ip_of(ev.client_family, &ev.client_addr), ev.client_port),
            dialled: dialled_of(ev, server),
            server,
            role: Role::from_u8(ev.role).unwrap_or(Role::Client),
            verdict,
            reason: (verdict == Verdict::Unknown)
                .then(|| UnknownReason::from_u8(ev.reason))
                .flatten(),
            requested,
            server_answers,
            evidence: ev.captured().to_vec(),
            fast_open: ev.flags & event_flags::FAST_OPEN != 0,
            opened_before_start: ev.flags & event_flags::ADOPTED != 0,
            auth_follows: ev.flags & event_flags::AUTH_FOLLOWS != 0,
            verification: Verification::from_u8(ev.verification).unwrap_or(Verification::Unknown),
            tls_alert: (verdict == Verdict::TlsRejected).then_some(ev.tls_alert),
        }
    }

    /// The finding for this session, reported from `origin`. Its `auth` is filled in by
    /// [`apply_auth`] when the outcome is known. Takes the session: its negotiation moves
    /// into the finding instead of being copied.
    pub fn finding(self, origin: &Origin) -> Finding {
        // The evidence is the message that decided the verdict; for plaintext and
        // downgraded sessions that is the StartupMessage.
        let startup = match classify_bytes(&self.evidence) {
            FirstMessage::Startup { minor, len } => Some(parse_startup(&self.evidence, minor, len)),
            _ => None,
        };
        let process = self.process.map(|p| Process {
            pid: p.tgid(),
            tid: p.tid(),
            comm: comm_to_string(&p.comm),
            uid: p.uid(),
            gid: p.gid(),
            cgroup_id: p.cgroup_id,
            ..Process::default()
        });
        Finding {
            schema_version: SCHEMA_VERSION,
            id: new_id(),
            ts: self.seen,
            verdict: self.verdict,
            severity: self.verdict.severity(),
            role: self.role,
            reason: self.reason,
            sessions: 1,
            host: origin.host.clone(),
            node: origin.node.clone(),
            sensor_version: env!("CARGO_PKG_VERSION"),
            src: Endpoint { ip: self.client.ip(), port: self.client.port() },
            dst: Endpoint { ip: self.server.ip(), port: self.server.port() },
            dialled: self.dialled.map(|d| Endpoint { ip: d.ip(), port: d.port() }),
            process,
            negotiation: (!self.requested.is_empty()).then_some(Negotiation {
                requested: self.requested,
                server_answers: self.server_answers,
            }),
            startup,
            auth: None,
            tls: self.verdict.is_tls().then(|| Tls {
                verification: self.verification,
                alert: self.tls_alert.map(TlsAlert::new),
            }),
            socket_cookie: self.cookie,
            fast_open: self.fast_open,
            opened_before_start: self.opened_before_start,
            repeats: None,
            retry_of: None,
        }
    }
}

/// Add the authentication outcome; a cleartext password on a plaintext or downgraded
/// session makes the finding critical.
pub fn apply_auth(finding: &mut Finding, method: AuthMethod, password_sent: bool) {
    finding.auth = Some(Auth { method, password_sent });
    if password_sent && method == AuthMethod::Cleartext {
        finding.severity = Severity::Critical;
    }
}

/// The requests asked (in libpq's order) and the server's answers, unpacked.
pub fn negotiation_of(requests: u8, answers: u8) -> (Vec<Encryption>, String) {
    let (bytes, n) = answers_of(answers);
    (Encryption::requested(requests).collect(), bytes[..n].iter().map(|&b| b as char).collect())
}

fn parse_startup(message: &[u8], minor: u16, claimed_len: u32) -> Startup {
    let mut startup = Startup {
        protocol: ProtocolVersion { major: 3, minor },
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
    match std::str::from_utf8(bytes) {
        // At most MAX_VALUE_CHARS bytes is at most as many chars: one copy, no char walk.
        Ok(text) if text.len() <= MAX_VALUE_CHARS => text.to_owned(),
        _ => String::from_utf8_lossy(bytes).chars().take(MAX_VALUE_CHARS).collect(),
    }
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// An address as the kernel sent it; an IPv6 socket's IPv4-mapped address reads as IPv4.
fn ip_of(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr)).to_canonical()
    }
}

/// What the client dialled, when it is not the server it reached (NAT on its host).
fn dialled_of(ev: &SessionEvent, server: SocketAddr) -> Option<SocketAddr> {
    if ev.dialled_port == 0 {
        return None;
    }
    let dialled = SocketAddr::new(ip_of(ev.client_family, &ev.dialled_addr), ev.dialled_port);
    (dialled != server).then_some(dialled)
}

#[cfg(test)]
mod tests;
