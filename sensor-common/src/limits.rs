//! Names and sizes both sides must agree on. Every map is bounded here.

/// Map names, as the kernel object declares them and userspace looks them up.
pub mod map_names {
    pub const CAPTURES: &str = "CAPTURES";
    pub const EVENTS: &str = "EVENTS";
    pub const SESSION_COUNTERS: &str = "SESSION_COUNTERS";
    pub const STATS: &str = "STATS";
    pub const VERIFICATION_COUNTERS: &str = "VERIFICATION_COUNTERS";
}

/// Program names (the Rust function names in `sensor-ebpf`).
pub mod program_names {
    pub const CONNECT4: &str = "sensor_connect4";
    pub const CONNECT6: &str = "sensor_connect6";
    pub const EGRESS: &str = "sensor_egress";
    pub const INGRESS: &str = "sensor_ingress";
    /// Uprobes on the client's OpenSSL (`crate::tls_probe`): each attached to every copy
    /// of the library found, at the exported symbol of the same name.
    pub const SSL_CTX_NEW_RETURN: &str = "tls_ssl_ctx_new_return";
    pub const SSL_CTX_SET_VERIFY: &str = "tls_ssl_ctx_set_verify";
    pub const SSL_NEW: &str = "tls_ssl_new";
    pub const SSL_NEW_RETURN: &str = "tls_ssl_new_return";
    pub const SSL_SET_VERIFY: &str = "tls_ssl_set_verify";
    pub const SSL_HANDSHAKE: &str = "tls_ssl_handshake";
}

/// One byte per TCP port: a direct array index is the cheapest "is this port watched?" test.
/// The value is the port's slot in the configured list plus one (0: not watched).
pub const WATCHED_PORTS_ENTRIES: u32 = 65536;
/// The kernel programs' read-only table of those bytes, filled in by the agent at load.
pub const WATCHED_PORT_SLOTS_GLOBAL: &str = "WATCHED_PORT_SLOTS";
/// The kernel programs' read-only flag: 1 where `bpf_sk_storage_get` takes the packet's
/// socket as the packet hooks get it (Linux 5.10 on), 0 where it needs `bpf_sk_fullsock`
/// first. The agent tries 1 and falls back to 0 when the verifier refuses it.
pub const STORAGE_BY_PACKET_SOCKET_GLOBAL: &str = "STORAGE_BY_PACKET_SOCKET";
/// The kernel programs' read-only word of enabled roles: bit `1 << Role as u32` per role.
pub const ROLES_ENABLED_GLOBAL: &str = "ROLES_ENABLED";

/// At most this many watched ports may be configured.
pub const MAX_WATCHED_PORTS: usize = 64;
/// Connections assembling a client message at the same moment (1 KiB each). LRU: under a
/// flood the oldest capture is evicted and that session is reported `unknown`.
pub const CAPTURES_MAX: u32 = 2048;
/// OpenSSL objects (SSL_CTX and SSL, keyed by address) whose verification mode is known.
/// LRU: a process churning through more loses the oldest, whose sessions become `unknown`.
pub const TLS_OBJECTS_MAX: u32 = 16384;
/// Threads with a TLS handshake announced (or an `SSL_new` under way). LRU.
pub const TLS_THREADS_MAX: u32 = 8192;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Bytes of the first client message copied into an event at most.
pub const CAPTURE_LEN: usize = 512;
/// Bytes the classifier needs to decide in every case (the HTTP/2 preface is the longest).
pub const PREFIX_LEN: usize = 24;

crate::named_enum! {
    /// Indices into the per-CPU `STATS` array.
    pub enum Stat ("kernel stat") {
        /// Events written to the ring buffer.
        EventsSent = 0 => "events_sent",
        /// Session events the ring buffer had no room for (the verdict was still counted).
        EventsLost = 1 => "events_lost",
        /// Packets to or from a watched port, with data or SYN/FIN/RST, that the packet hooks
        /// looked at (pure ACKs are skipped unread).
        PacketsInspected = 2 => "packets_inspected",
        /// Connections followed from their connect() or their SYN: the port dialled, or the
        /// one on the wire (after any NAT on this host), is watched.
        ConnectionsTracked = 3 => "connections_tracked",
        /// Connections to a watched port found already under way (opened before the
        /// sensor started, byte 0 unprovable): not followed. Counted once per connection.
        PacketsUntracked = 4 => "packets_untracked",
        /// Connections to a watched port whose state could not be stored (the kernel had
        /// no memory for it): their sessions are not followed.
        TrackFailed = 5 => "track_failed",
        /// Connections adopted after start because the socket proved it had sent nothing yet.
        ConnectionsAdopted = 6 => "connections_adopted",
        /// Sessions that went to `unknown` because their capture buffer was evicted.
        CapturesEvicted = 7 => "captures_evicted",
        /// Cleartext passwords sent on plaintext or downgraded sessions.
        PasswordsCleartext = 8 => "passwords_cleartext",
        /// MD5 password hashes sent on plaintext or downgraded sessions.
        PasswordsMd5 = 9 => "passwords_md5",
        /// Authentication outcomes followed (auth events decided).
        AuthSeen = 10 => "auth_seen",
        /// Auth events the ring buffer had no room for (the password counters still moved).
        AuthEventsLost = 11 => "auth_events_lost",
        /// Sessions decided: their socket's state is settled (its later packets cost one
        /// lookup and one flag test).
        ConnectionsForgotten = 12 => "connections_forgotten",
        /// TLS handshakes announced by the client's OpenSSL (uprobes fired).
        TlsHandshakesSeen = 13 => "tls_handshakes_seen",
        /// A client's ClientHello whose thread had handshakes of both verification modes
        /// announced since its connect(): judged `unknown` rather than guessed.
        TlsVerificationAmbiguous = 14 => "tls_verification_ambiguous",
        /// Connections followed because a NAT rule on this host sent them to a watched port
        /// (their connect() asked for another address or port).
        ConnectionsNat = 15 => "connections_nat",
        /// Of those, connections whose process could not be taken from their connect():
        /// reported without a process rather than with a guessed one.
        NatProcessUnknown = 16 => "nat_process_unknown",
        /// NAT-followed sessions decided. `ConnectionsNat` minus this is how many are
        /// open; while any is, every packet of the host's other connections has its
        /// socket's storage looked up (see `NAT_FOLLOWING` in the kernel programs).
        NatDecided = 17 => "nat_decided",
    }
}

/// Size of the per-CPU TLS verification counter array: (watched port, role, verification).
pub const VERIFICATION_COUNTERS_ENTRIES: u32 =
    (MAX_WATCHED_PORTS * crate::verdict::Role::COUNT * crate::verdict::Verification::COUNT) as u32;

/// Size of the per-CPU session counter array: one counter per (watched port, role, verdict).
pub const SESSION_COUNTERS_ENTRIES: u32 =
    (MAX_WATCHED_PORTS * crate::verdict::Role::COUNT * crate::verdict::Verdict::COUNT) as u32;
