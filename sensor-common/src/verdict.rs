//! Verdicts, severities and roles. Their names are the stable strings used in findings,
//! metric labels, flags and alert names; they live here only. Do not rename them.

crate::named_enum! {
    /// What the sensor concluded about the start of one session.
    pub enum Verdict ("verdict") {
        /// SSLRequest: the client asked for TLS.
        Tls = 0 => "tls",
        /// A TLS ClientHello as the very first bytes (libpq `sslnegotiation=direct`).
        TlsDirect = 1 => "tls_direct",
        /// GSSENCRequest: GSSAPI encryption asked for.
        Gssenc = 2 => "gssenc",
        /// StartupMessage first: TLS never asked for.
        Plaintext = 3 => "plaintext",
        /// TLS/GSS asked, the server (or a man in the middle) said `N`, the client went on in
        /// clear.
        Downgraded = 4 => "downgraded",
        /// TLS asked, the server said `N`, the client gave up.
        Refused = 5 => "refused",
        /// CancelRequest in plaintext.
        Cancel = 6 => "cancel",
        /// HTTP/2 preface: CockroachDB inter-node RPC without TLS.
        RpcPlaintext = 7 => "rpc_plaintext",
        /// Not the start of a pgwire/TLS/HTTP2 stream, or the sensor did not see the start.
        Unknown = 8 => "unknown",
        /// TLS (after SSLRequest, or direct), and the client's TLS library was seen set up
        /// not to verify the server's certificate: a man in the middle with any certificate
        /// reads the session.
        TlsUnverified = 9 => "tls_unverified",
        /// The client aborted the TLS handshake with a fatal alert: a verifying client
        /// refusing the server's certificate (a man in the middle, or a wrong or expired
        /// certificate).
        TlsRejected = 10 => "tls_rejected",
    }
}

impl Verdict {
    /// How bad the verdict is before anything else (the auth exchange) is taken into account.
    pub const fn severity(self) -> Severity {
        match self {
            Verdict::Tls | Verdict::TlsDirect | Verdict::Gssenc | Verdict::Unknown => {
                Severity::Info
            }
            Verdict::Cancel => Severity::Low,
            Verdict::Refused | Verdict::TlsUnverified => Severity::Medium,
            Verdict::Plaintext
            | Verdict::Downgraded
            | Verdict::RpcPlaintext
            | Verdict::TlsRejected => Severity::High,
        }
    }

    /// Sessions that are fine as far as the sensor can tell (encrypted, verification not
    /// known to be off) are counted but produce no finding line.
    pub const fn counted_only(self) -> bool {
        matches!(self, Verdict::Tls | Verdict::TlsDirect | Verdict::Gssenc)
    }

    /// The session went on (or tried to go on) inside TLS: the verdicts a TLS verification
    /// judgement belongs to.
    pub const fn is_tls(self) -> bool {
        matches!(
            self,
            Verdict::Tls | Verdict::TlsDirect | Verdict::TlsUnverified | Verdict::TlsRejected
        )
    }
}

crate::named_enum! {
    /// Whether the client checks the server's certificate chain, as learned from the
    /// client's own TLS library (uprobes) when its handshake started. Never guessed: every
    /// session the sensor could not tie to a library call is `unknown`.
    pub enum Verification ("tls verification") {
        /// No library call was tied to this handshake (another TLS stack, a library not
        /// probed, set up before the sensor started, or the server's end of the session).
        Unknown = 0 => "unknown",
        /// The client's SSL was set to verify the server's chain (`SSL_VERIFY_PEER`). Host
        /// name checking, where the client does it, is not seen.
        VerifiedChain = 1 => "verified_chain",
        /// The client's SSL was left at, or set to, `SSL_VERIFY_NONE` with no verify
        /// callback of its own: any certificate is accepted.
        Unverified = 2 => "unverified",
    }
}

/// Index of the kernel's per-CPU counter of TLS sessions by verification, for the watched
/// port in `slot` and `role`.
pub const fn verification_counter_index(slot: u32, role: Role, verification: Verification) -> u32 {
    (slot * Role::COUNT as u32 + role as u32) * (Verification::COUNT as u32) + verification as u32
}

/// Where the runbooks (docs/runbooks/<alertname>.md) are unless told otherwise: copied onto
/// the host (the Debian package will install them there). deploy/prometheus/alerts.yml's `runbook_url`s use the same base
/// (`cargo xtask alert-rules` writes it with another).
pub const RUNBOOK_BASE_URL: &str = "file:///usr/share/doc/pgwire-sensor/runbooks";

/// The `up` selector of deploy/prometheus/alerts.yml: the job of
/// deploy/prometheus/prometheus.yml (`cargo xtask alert-rules` writes it with another).
pub const UP_SELECTOR: &str = r#"job="pgwire-sensor""#;

/// The Alertmanager alert name for a session: what an on-call engineer reads first. The
/// same names as the Prometheus rules in deploy/prometheus/alerts.yml.
pub const fn alert_name(verdict: Verdict, severity: Severity) -> &'static str {
    if matches!(severity, Severity::Critical) {
        return "PgwireCredentialsExposed";
    }
    match verdict {
        Verdict::Plaintext => "PgwirePlaintextSession",
        Verdict::Downgraded => "PgwireDowngradedSession",
        Verdict::Refused => "PgwireTlsRefused",
        Verdict::Cancel => "PgwireCancelInPlaintext",
        Verdict::RpcPlaintext => "PgwireRpcPlaintext",
        Verdict::TlsUnverified => "PgwireTlsUnverified",
        Verdict::TlsRejected => "PgwireTlsRejected",
        Verdict::Tls | Verdict::TlsDirect | Verdict::Gssenc | Verdict::Unknown => {
            "PgwireUnknownSession"
        }
    }
}

crate::named_enum! {
    /// How bad a session is, in increasing order.
    pub enum Severity ("severity") {
        Info = 0 => "info",
        Low = 1 => "low",
        Medium = 2 => "medium",
        High = 3 => "high",
        /// A password crossed the wire in clear.
        Critical = 4 => "critical",
    }
}

impl Severity {
    /// Where this severity lands on the scale Alertmanager routes use: a password in clear
    /// pages; a session a man in the middle can read, or a refused TLS, is a warning to fix;
    /// the rest is information.
    pub const fn alert_severity(self) -> AlertSeverity {
        match self {
            Severity::Critical => AlertSeverity::Critical,
            Severity::High | Severity::Medium => AlertSeverity::Warning,
            Severity::Low | Severity::Info => AlertSeverity::Info,
        }
    }
}

crate::named_enum! {
    /// The severity scale Alertmanager routes use (the `severity` label of pushed alerts and
    /// Prometheus rules; the sensor's own scale goes in `sensor_severity`).
    pub enum AlertSeverity ("alert severity") {
        Info = 0 => "info",
        Warning = 1 => "warning",
        Critical = 2 => "critical",
    }
}

crate::named_enum! {
    /// Which end of the session the sensor is watching from.
    pub enum Role ("role") {
        /// A local process connected out to a watched port.
        Client = 0 => "client",
        /// A local server on a watched port accepted the session.
        Server = 1 => "server",
    }
}

/// Index of the kernel's per-CPU session counter for the watched port in `slot` (its
/// position in the configured port list), `role` and `verdict`.
pub const fn session_counter_index(slot: u32, role: Role, verdict: Verdict) -> u32 {
    (slot * Role::COUNT as u32 + role as u32) * (Verdict::COUNT as u32) + verdict as u32
}

crate::named_enum! {
    /// Why a session was classified `unknown`; carried in the event so findings can say.
    /// Wire value 0 means "no reason" (the verdict is not `unknown`).
    pub enum UnknownReason ("unknown reason") {
        /// The first bytes are not pgwire, TLS or HTTP/2.
        NotPgwire = 1 => "not_pgwire",
        /// The connection closed before the first message was complete enough to decide.
        IncompleteMessage = 2 => "incomplete_message",
        /// The connection was tracked but the kernel did not see its SYN, so byte 0 is
        /// unproven.
        StartNotSeen = 3 => "start_not_seen",
        /// The server accepted TLS (`S`) but the client did not send a ClientHello.
        NoTlsAfterAccept = 4 => "no_tls_after_accept",
        /// The server answered an SSLRequest/GSSENCRequest with something other than S/N/G/E.
        BadServerAnswer = 5 => "bad_server_answer",
        /// The connection closed before the server answered the encryption request.
        ClosedBeforeAnswer = 6 => "closed_before_answer",
        /// The kernel's per-connection capture was evicted (too many sessions starting at
        /// once).
        CaptureEvicted = 7 => "capture_evicted",
    }
}

/// `UnknownReason` wire value for "no reason".
pub const NO_REASON: u8 = 0;
