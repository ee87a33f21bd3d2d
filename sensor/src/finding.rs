//! The finding: one JSON object per line, the evidence an incident responder reads.
//! Field names are a public interface; add fields, never rename them.
//!
//! A typed record: verdicts, severities, roles and auth methods are the shared enums (their
//! names come from `sensor-common`, serialised by serde), times are times, addresses are
//! addresses. It is turned into text once, when it is written.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::SystemTime,
};

use schemars::JsonSchema;
use sensor_common::{
    tracker::AuthMethod,
    verdict::{Role, Severity, UnknownReason, Verdict, Verification},
};
use serde::{Serialize, Serializer};

use crate::identity::Host;

/// The finding line's schema version (docs/finding.schema.json). It changes when a field
/// changes meaning or goes away; new optional fields do not change it.
pub const SCHEMA_VERSION: u32 = 1;

/// One session start that a man in the middle could read (or that could not be judged):
/// one JSON object per line.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
#[schemars(title = "pgwire-sensor finding", deny_unknown_fields)]
pub struct Finding {
    /// The version of this schema (see `SCHEMA_VERSION`).
    pub schema_version: u32,
    /// Unique per line: a UUID v7 (time-ordered), for deduplication in a SIEM.
    // Kept as a number until written: a session that is only counted into a summary never
    // pays for its text.
    #[schemars(with = "String")]
    pub id: uuid::Uuid,
    /// When the session's verdict was decided (live) or its first bytes were seen (capture);
    /// RFC 3339 UTC, microseconds.
    #[serde(serialize_with = "rfc3339_micros")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub ts: SystemTime,
    pub verdict: Verdict,
    pub severity: Severity,
    pub role: Role,
    /// Why the verdict is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnknownReason>,
    /// How many sessions this line stands for: 1 for a single session. A SIEM sums it.
    pub sessions: u64,
    /// The host the sensor runs on.
    pub host: Arc<Host>,
    /// The Kubernetes node, when the sensor was told it (`--node-name`, `NODE_NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<SharedText>,
    /// The sensor's version.
    pub sensor_version: &'static str,
    pub src: Endpoint,
    /// The server as the packets reached it (after any NAT on this host).
    pub dst: Endpoint,
    /// Role client: the address and port the process connected to, when a NAT rule on its
    /// host (a Kubernetes Service, an nft/iptables DNAT) sent the session elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialled: Option<Endpoint>,
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
    /// What is known of the TLS handshake (TLS verdicts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
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
    /// On summary lines only: `sessions` more sessions of this line's identity, after the
    /// one written in full (see `--repeat-window`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Repeats>,
    /// A plaintext or downgraded session that the same process opened to the same server
    /// right after a `tls_rejected` one (libpq under `sslmode=prefer` retries without TLS
    /// when the handshake fails): the rejected session it retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<RetryOf>,
}

/// The session a plaintext retry follows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RetryOf {
    /// Its verdict (`tls_rejected`).
    pub verdict: Verdict,
    /// When it was judged; RFC 3339 UTC, microseconds.
    #[serde(serialize_with = "rfc3339_micros")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub ts: SystemTime,
    /// Its kernel socket cookie (its own finding's `socket_cookie`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_cookie: Option<u64>,
}

/// What a summary line adds: when the sessions it counts were seen, and a few of them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Repeats {
    /// The first and the last session counted; RFC 3339 UTC, microseconds.
    #[serde(serialize_with = "rfc3339_micros")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "rfc3339_micros")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub last_seen: SystemTime,
    /// A few of their client ports (at most 5).
    pub sample_src_ports: Vec<u16>,
    /// A few of their processes' pids (at most 5).
    pub sample_pids: Vec<u32>,
}

pub use sensor_common::tracker::Encryption;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Negotiation {
    /// `gssenc`, `ssl`: what the client asked for, in libpq's order (GSS before TLS).
    pub requested: Vec<Encryption>,
    /// The server's one-byte answers in order, e.g. "N" or "NN".
    pub server_answers: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Tls {
    /// What the client's TLS library was seen doing about the server's certificate when its
    /// handshake started: `verified_chain`, `unverified`, or `unknown` (another TLS stack,
    /// a library set up before the sensor started, the server's end of the session, or a
    /// capture: verification cannot be seen on the wire).
    pub verification: Verification,
    /// The fatal alert the client sent instead of finishing the handshake (`tls_rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<TlsAlert>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TlsAlert {
    /// The alert description's code, e.g. 48.
    pub code: u8,
    /// Its name in the TLS RFCs, e.g. `unknown_ca`, `bad_certificate`,
    /// `certificate_expired`; absent for a code they do not define.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'static str>,
}

impl TlsAlert {
    pub fn new(code: u8) -> TlsAlert {
        TlsAlert { code, description: sensor_common::pgwire::tls_alert_name(code) }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Auth {
    /// trust, cleartext, md5, sasl, gss, other, error, or unknown (not seen in time).
    pub method: AuthMethod,
    /// The client answered the server's request with a password message. Only the fact is
    /// recorded: the sensor never reads the password or hash.
    pub password_sent: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// Text shared between the per-process cache and every finding of that process: a
/// reference count per session, not an allocation and a copy.
pub type SharedText = Arc<str>;

/// The process that opened the session: what the kernel recorded at connect() (pid, tid,
/// comm, uid, gid, cgroup id), and what procfs added while the process still ran.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
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
    pub user: Option<SharedText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<SharedText>,
    /// The command line, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<SharedText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_comm: Option<SharedText>,
    /// cgroup v2 path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<SharedText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<SharedText>,
    /// The Kubernetes pod's UID, from the cgroup path (no API server asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<SharedText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<SharedText>,
    /// The process was gone (or its pid reused) when the finding was written: only the
    /// kernel's connect-time record is reported.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

/// What a plaintext StartupMessage said. Only these keys are copied out; other parameters
/// (`options`, driver-specific ones) are not needed and could carry secrets.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Startup {
    /// Protocol version, e.g. "3.0".
    #[schemars(with = "String")]
    pub protocol: ProtocolVersion,
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

impl Finding {
    /// A plaintext psql session's finding from `Origin::example()`, for tests.
    #[cfg(test)]
    pub fn example() -> Finding {
        use sensor_common::test_util::{session_event, startup_message};
        let ev = session_event(Verdict::Plaintext, &startup_message(&[("user", "app")]), "psql");
        crate::session::Session::from_event(&ev).finding(&crate::identity::Origin::example())
    }

    /// `Finding::example()` from app `app` (`/usr/bin/<app>`) at [`Finding::example_time`]
    /// `secs`, for tests that tell identities and times apart.
    #[cfg(test)]
    pub fn example_of(app: &str, secs: u64) -> Finding {
        let mut f = Finding::example();
        f.ts = Finding::example_time(secs);
        f.process.as_mut().unwrap().exe = Some(format!("/usr/bin/{app}").into());
        f
    }

    /// A fixed point in time plus `secs`, for tests.
    #[cfg(test)]
    pub fn example_time(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + secs)
    }

    /// The JSON Schema (2020-12) of a finding line, as docs/finding.schema.json holds it.
    /// Described as written (a field left out when empty or false is not required).
    pub fn json_schema() -> serde_json::Value {
        let generator =
            schemars::generate::SchemaSettings::draft2020_12().for_serialize().into_generator();
        serde_json::to_value(generator.into_root_schema_for::<Finding>()).unwrap_or_default()
    }
}

/// A new line id: a UUID v7, its first 48 bits the time in milliseconds (ids sort by time).
/// Its 74 other bits are not drawn at random per id (uuid's `now_v7` takes a lock and a
/// ChaCha block for each: an eighth of the agent's work per session when sessions pour in)
/// but made from this process's random key (74 bits) and a counter: 64 bits the counter
/// mixed with the key by a bijection (so no two ids of one process share them), 10 more of
/// the key.
pub fn new_id() -> uuid::Uuid {
    static KEY: OnceLock<(u64, u16)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let &(key, key_extra) = KEY.get_or_init(|| {
        // One id drawn the usual way: its 74 random bits (12 in the high half).
        let (high, low) = uuid::Uuid::now_v7().as_u64_pair();
        (low, high as u16 & 0x0fff)
    });
    let mixed = splitmix64(key.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))).to_be_bytes();
    let extra = key_extra.to_be_bytes();
    // The builder keeps the low 4 bits of byte 0 and the low 6 of byte 2 (the version and
    // variant go there) and every bit of the others: the 64 mixed bits go in 1 and 3..10.
    let bytes = [
        extra[0], mixed[0], extra[1], mixed[1], mixed[2], mixed[3], mixed[4], mixed[5], mixed[6],
        mixed[7],
    ];
    let millis = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    uuid::Builder::from_unix_timestamp_millis(millis.as_millis() as u64, &bytes).into_uuid()
}

/// SplitMix64's output function: a bijection of u64 that spreads every input bit.
fn splitmix64(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A StartupMessage's protocol version, written "3.0".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for ProtocolVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The one place a finding's time becomes text.
pub fn format_ts(ts: SystemTime) -> String {
    humantime::format_rfc3339_micros(ts).to_string()
}

fn rfc3339_micros<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/finding.schema.json is generated from these types; `cargo xtask docs` (or
    /// `PGWIRE_UPDATE_DOCS=1 cargo test -p sensor -- finding_schema`) rewrites it.
    #[test]
    fn the_published_finding_schema_is_the_types_own() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/finding.schema.json");
        let generated = serde_json::to_string_pretty(&Finding::json_schema()).unwrap() + "\n";
        if std::env::var("PGWIRE_UPDATE_DOCS").as_deref() == Ok("1") {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == generated,
            "docs/finding.schema.json differs from the Finding type: run `cargo xtask docs`"
        );
    }

    /// Ids are UUID v7 (version and variant where a SIEM's parser looks), carry the time
    /// they were made, and never repeat in a process.
    #[test]
    fn line_ids_are_v7_timed_and_unique() {
        let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let ids: Vec<uuid::Uuid> = (0..100_000).map(|_| new_id()).collect();
        let after = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "an id repeated");
        for id in [ids[0], ids[ids.len() - 1]] {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            let at = std::time::Duration::new(secs, nanos);
            let ms = std::time::Duration::from_millis(1);
            assert!(at + ms > before && at <= after, "{at:?} not in {before:?}..{after:?}");
        }
    }

    #[test]
    fn a_finding_has_the_identity_a_siem_joins_on() {
        let f = serde_json::to_value(Finding::example()).unwrap();
        assert_eq!(f["schema_version"], SCHEMA_VERSION);
        assert_eq!(f["sessions"], 1);
        assert_eq!(f["host"]["id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(f["sensor_version"], env!("CARGO_PKG_VERSION"));
        assert!(f.get("node").is_none());
        assert_ne!(Finding::example().id, Finding::example().id, "an id per line");
        assert_eq!(Finding::example().id.get_version(), Some(uuid::Version::SortRand));
        let schema = Finding::json_schema();
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(schema["additionalProperties"], false);
        let required = schema["required"].as_array().unwrap();
        for optional in ["fast_open", "opened_before_start", "node", "repeats", "reason"] {
            assert!(!required.contains(&optional.into()), "{optional} is left out when empty");
        }
        assert!(required.contains(&"sessions".into()));
        assert_eq!(
            schema["properties"]["verdict"],
            serde_json::json!({"$ref": "#/$defs/Verdict"}),
            "the shared enum, by name"
        );
    }
}
