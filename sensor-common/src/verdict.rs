//! Verdicts, severities and roles. Their `name()`s are the stable strings used in findings
//! and metric labels; do not rename them.

/// What the sensor concluded about the start of one session.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// SSLRequest: the client asked for TLS.
    Tls = 0,
    /// A TLS ClientHello as the very first bytes (libpq `sslnegotiation=direct`).
    TlsDirect = 1,
    /// GSSENCRequest: GSSAPI encryption asked for.
    Gssenc = 2,
    /// StartupMessage first: TLS never asked for.
    Plaintext = 3,
    /// TLS/GSS asked, the server (or a man in the middle) said `N`, the client went on in clear.
    Downgraded = 4,
    /// TLS asked, the server said `N`, the client gave up.
    Refused = 5,
    /// CancelRequest in plaintext.
    Cancel = 6,
    /// HTTP/2 preface: CockroachDB inter-node RPC without TLS.
    RpcPlaintext = 7,
    /// Not the start of a pgwire/TLS/HTTP2 stream, or the sensor did not see the start.
    Unknown = 8,
}

impl Verdict {
    pub const COUNT: usize = 9;
    pub const ALL: [Verdict; Verdict::COUNT] = [
        Verdict::Tls,
        Verdict::TlsDirect,
        Verdict::Gssenc,
        Verdict::Plaintext,
        Verdict::Downgraded,
        Verdict::Refused,
        Verdict::Cancel,
        Verdict::RpcPlaintext,
        Verdict::Unknown,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Tls => "tls",
            Verdict::TlsDirect => "tls_direct",
            Verdict::Gssenc => "gssenc",
            Verdict::Plaintext => "plaintext",
            Verdict::Downgraded => "downgraded",
            Verdict::Refused => "refused",
            Verdict::Cancel => "cancel",
            Verdict::RpcPlaintext => "rpc_plaintext",
            Verdict::Unknown => "unknown",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Verdict> {
        if (v as usize) < Verdict::COUNT {
            Some(Verdict::ALL[v as usize])
        } else {
            None
        }
    }

    /// How bad the verdict is before anything else (the auth exchange) is taken into account.
    pub const fn severity(self) -> Severity {
        match self {
            Verdict::Tls | Verdict::TlsDirect | Verdict::Gssenc | Verdict::Unknown => {
                Severity::Info
            }
            Verdict::Cancel => Severity::Low,
            Verdict::Refused => Severity::Medium,
            Verdict::Plaintext | Verdict::Downgraded | Verdict::RpcPlaintext => Severity::High,
        }
    }

    /// Encrypted sessions are counted but produce no finding line.
    pub const fn is_encrypted(self) -> bool {
        matches!(self, Verdict::Tls | Verdict::TlsDirect | Verdict::Gssenc)
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Info = 0,
    Low = 1,
    Medium = 2,
    High = 3,
    Critical = 4,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Which end of the session the sensor is watching from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A local process connected out to a watched port.
    Client = 0,
    /// A local server on a watched port accepted the session.
    Server = 1,
}

impl Role {
    pub const COUNT: usize = 2;
    pub const ALL: [Role; Role::COUNT] = [Role::Client, Role::Server];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Role> {
        match v {
            0 => Some(Role::Client),
            1 => Some(Role::Server),
            _ => None,
        }
    }
}

/// Index of the kernel's per-CPU session counter for the watched port in `slot` (its
/// position in the configured port list), `role` and `verdict`.
pub const fn session_counter_index(slot: u32, role: Role, verdict: Verdict) -> u32 {
    (slot * Role::COUNT as u32 + role as u32) * (Verdict::COUNT as u32) + verdict as u32
}

/// Why a session was classified `unknown`; carried in the event so findings can say.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownReason {
    None = 0,
    /// The first bytes are not pgwire, TLS or HTTP/2.
    NotPgwire = 1,
    /// The connection closed before the first message was complete enough to decide.
    IncompleteMessage = 2,
    /// The connection was tracked but the kernel did not see its SYN, so byte 0 is unproven.
    StartNotSeen = 3,
    /// The first data segment seen did not start at byte 0 of the stream.
    SequenceGap = 4,
    /// The server accepted TLS (`S`) but the client did not send a ClientHello.
    NoTlsAfterAccept = 5,
    /// The server answered an SSLRequest/GSSENCRequest with something other than S/N/G/E.
    BadServerAnswer = 6,
    /// The connection closed before the server answered the encryption request.
    ClosedBeforeAnswer = 7,
    /// The kernel's per-connection capture was evicted (too many sessions starting at once).
    CaptureEvicted = 8,
}

impl UnknownReason {
    pub const fn name(self) -> &'static str {
        match self {
            UnknownReason::None => "none",
            UnknownReason::NotPgwire => "not_pgwire",
            UnknownReason::IncompleteMessage => "incomplete_message",
            UnknownReason::StartNotSeen => "start_not_seen",
            UnknownReason::SequenceGap => "sequence_gap",
            UnknownReason::NoTlsAfterAccept => "no_tls_after_accept",
            UnknownReason::BadServerAnswer => "bad_server_answer",
            UnknownReason::ClosedBeforeAnswer => "closed_before_answer",
            UnknownReason::CaptureEvicted => "capture_evicted",
        }
    }

    pub const fn from_u8(v: u8) -> UnknownReason {
        match v {
            1 => UnknownReason::NotPgwire,
            2 => UnknownReason::IncompleteMessage,
            3 => UnknownReason::StartNotSeen,
            4 => UnknownReason::SequenceGap,
            5 => UnknownReason::NoTlsAfterAccept,
            6 => UnknownReason::BadServerAnswer,
            7 => UnknownReason::ClosedBeforeAnswer,
            8 => UnknownReason::CaptureEvicted,
            _ => UnknownReason::None,
        }
    }
}
