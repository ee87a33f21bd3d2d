//! The finding: one JSON object per line, the evidence an incident responder reads.
//! Field names are a public interface; add fields, never rename them.
//!
//! A typed record: verdicts, severities, roles and auth methods are the shared enums (their
//! names come from `sensor-common`, serialised by serde), times are times, addresses are
//! addresses. It is turned into text once, when it is written.

use std::{net::IpAddr, time::SystemTime};

use sensor_common::{
    tracker::AuthMethod,
    verdict::{Role, Severity, UnknownReason, Verdict},
};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// When the session's first bytes were seen; written as RFC 3339 UTC, microseconds.
    #[serde(serialize_with = "rfc3339_micros")]
    pub ts: SystemTime,
    pub verdict: Verdict,
    pub severity: Severity,
    pub role: Role,
    /// Why the verdict is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnknownReason>,
    pub src: Endpoint,
    pub dst: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// What the client asked for and what the server answered, before the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negotiation: Option<Negotiation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<Startup>,
    /// How the server authenticated a plaintext or downgraded session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Kernel socket cookie: joins this finding with later ones about the same socket
    /// (absent from `sensor analyze`, which sees no sockets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_cookie: Option<u64>,
    /// TCP Fast Open carried the first bytes in the SYN.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fast_open: bool,
    /// The connection was opened before the sensor started; its start was still proven.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub opened_before_start: bool,
}

pub use sensor_common::tracker::Encryption;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Negotiation {
    /// `gssenc`, `ssl`: what the client asked for, in libpq's order (GSS before TLS).
    pub requested: Vec<Encryption>,
    /// The server's one-byte answers in order, e.g. "N" or "NN".
    pub server_answers: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Auth {
    /// trust, cleartext, md5, sasl, gss, other, error, or unknown (not seen in time).
    pub method: AuthMethod,
    /// The client answered the server's request with a password message. Only the fact is
    /// recorded: the sensor never reads the password or hash.
    pub password_sent: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// The process that opened the session: what the kernel recorded at connect() (pid, tid,
/// comm, uid, gid, cgroup id), and what procfs added while the process still ran.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Process {
    /// Userspace pid (the kernel's tgid).
    pub pid: u32,
    /// The thread that called connect().
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The command line, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_comm: Option<String>,
    /// cgroup v2 path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// The process was gone (or its pid reused) when the finding was written: only the
    /// kernel's connect-time record is reported.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

/// What a plaintext StartupMessage said. Only these keys are copied out; other parameters
/// (`options`, driver-specific ones) are not needed and could carry secrets.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Startup {
    /// Protocol version, e.g. "3.0".
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The database asked for; PostgreSQL uses the user name when none is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// The capture ended before the message did.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The one place a finding's time becomes text.
pub fn format_ts(ts: SystemTime) -> String {
    humantime::format_rfc3339_micros(ts).to_string()
}

fn rfc3339_micros<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*ts))
}
