//! Records that cross the kernel/user boundary. `#[repr(C)]`, fixed size, no pointers;
//! sizes are asserted at compile time so a layout change on one side cannot go unnoticed.

use crate::{assembly::MessageAssembly, limits::CAPTURE_LEN, tracker::Tracker};

pub const COMM_LEN: usize = 16;

/// The process that called connect(), recorded in process context by the connect hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcRecord {
    /// `bpf_get_current_pid_tgid()`: tgid (the userspace pid) in the high half, tid low.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid high, uid low.
    pub uid_gid: u64,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `CLOCK_MONOTONIC` time of the connect() call, in ns.
    pub connect_ns: u64,
    pub comm: [u8; COMM_LEN],
}

impl ProcRecord {
    pub const fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }
    pub const fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }
    pub const fn uid(&self) -> u32 {
        self.uid_gid as u32
    }
    pub const fn gid(&self) -> u32 {
        (self.uid_gid >> 32) as u32
    }
}

/// Per-socket state, in the socket's own storage: created at connect() to a watched port
/// (the process record), at the SYN of a connection NAT sends to one, or when a watched
/// connection no connect hook saw proves its start. Freed with the socket; settled (its
/// packets no longer read) once its session is decided.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub proc_: ProcRecord,
    /// Sequence number of the client's byte 0 (valid with `conn_flags::CLIENT_BASE`).
    pub client_base: u32,
    /// Sequence number of the server's byte 0 (valid with `conn_flags::SERVER_BASE`).
    pub server_base: u32,
    /// Server stream offset of the next server message (answers are one byte each).
    pub server_offset: u32,
    pub flags: u32,
    /// The client message being assembled in the capture buffer.
    pub message: MessageAssembly,
    pub tracker: Tracker,
    /// The server's address as on the wire (after any NAT on this host), IPv4 in the first
    /// 4 bytes; set when following starts (`conn_flags::FOLLOWING`).
    pub server_addr: [u8; 16],
    pub server_port: u16,
    /// 4 or 6: the IP version of the packets.
    pub ip_version: u8,
    /// The watched port's position in the configured list (counters are per slot).
    pub port_slot: u8,
    /// Taken only to claim the session's decision (`decision_claimed`). The programs never
    /// load or store it themselves: the verifier allows only the lock helpers on it.
    pub lock: bpf_spin_lock,
    /// `claim::claim_bits`, set under `lock`: the socket's two directions may finish the
    /// session at once on two CPUs, and only one forgets it (see `claim`).
    pub decision_claimed: u32,
    pub _pad: u32,
}

/// The kernel's `struct bpf_spin_lock`, found in a map value's BTF by this name and size:
/// the kernel's name on purpose.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct bpf_spin_lock {
    val: u32,
}

impl ConnState {
    /// Start a connection over in place, before its first byte: `flags` as given, no
    /// stream position, a new message and tracker. The process record and the server's
    /// address are left to the caller (written field by field in the kernel: a whole-struct
    /// assignment there becomes a byte-by-byte copy the verifier walks).
    pub fn start(&mut self, flags: u32) {
        self.client_base = 0;
        self.server_base = 0;
        self.server_offset = 0;
        self.flags = flags;
        self.message = MessageAssembly::NEW;
        self.tracker = Tracker::NEW;
        // A socket connecting again after a failed attempt has a decision of its own to
        // claim. (Nothing else runs on the socket while it connects.)
        self.decision_claimed = 0;
    }
}

/// `ConnState::flags`.
pub mod conn_flags {
    pub const CLIENT_BASE: u32 = 1;
    pub const SERVER_BASE: u32 = 2;
    /// The process record comes from a connect hook.
    pub const PROC_KNOWN: u32 = 4;
    /// Byte 0 rode in the SYN (TCP Fast Open).
    pub const FAST_OPEN: u32 = 8;
    /// The verdict is decided but its event waits for the rest of the message's bytes.
    pub const EVENT_PENDING: u32 = 16;
    /// Picked up after start from the socket's own counters (no connect record).
    pub const ADOPTED: u32 = 32;
    /// This socket is the server's end of the session (an accepted connection).
    pub const ROLE_SERVER: u32 = 256;
    /// A watched session is followed on this socket (its server and role are known).
    pub const FOLLOWING: u32 = 512;
    /// Nothing to follow on this socket: the server it reached is not on a watched port,
    /// or its end of the session is not watched. Its packets cost one flag test.
    pub const SETTLED: u32 = 1024;
    /// Followed from its SYN, which a NAT rule on this host sent to a watched port: the
    /// socket's own ports are not watched, so it is counted in the kernel's
    /// `NAT_FOLLOWING` until its session is decided.
    pub const NAT: u32 = 2048;
}

/// `SessionEvent::flags` (a superset of the connection flags).
pub mod event_flags {
    pub use super::conn_flags::{ADOPTED, FAST_OPEN, PROC_KNOWN};
    /// An `AuthEvent` for this cookie follows once authentication is seen.
    pub const AUTH_FOLLOWS: u32 = 128;
}

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// `kind` of each ring buffer record (its first four bytes).
pub const EVENT_SESSION: u32 = 1;
pub const EVENT_AUTH: u32 = 2;

/// One event per session whose verdict produces evidence (encrypted sessions are only
/// counted), sent once the deciding message is captured.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SessionEvent {
    /// `EVENT_SESSION`.
    pub kind: u32,
    pub flags: u32,
    /// Socket cookie: stable per-socket id shared by every hook.
    pub cookie: u64,
    /// `CLOCK_MONOTONIC` time the verdict was decided, in ns.
    pub seen_ns: u64,
    pub proc_: ProcRecord,
    /// The client's address as its own socket has it (before any NAT on the client's
    /// host); `client_family` says how to read it. IPv4 in the first 4 bytes.
    pub client_addr: [u8; 16],
    /// The server's address as on the wire (after any NAT on this host); `ip_version`.
    pub server_addr: [u8; 16],
    /// Role client: the address the process connected to, as its socket has it (before
    /// any NAT); `client_family`. All zero on the server's end.
    pub dialled_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    /// 0 on the server's end.
    pub dialled_port: u16,
    /// 4 or 6: the family of the socket's own addresses (`client_addr`, `dialled_addr`);
    /// an IPv6 socket may carry IPv4 as mapped addresses.
    pub client_family: u8,
    /// 4 or 6: the IP version of the packets.
    pub ip_version: u8,
    /// [`crate::verdict::Role`].
    pub role: u8,
    /// [`crate::verdict::Verdict`] as counted by the kernel.
    pub verdict: u8,
    /// [`crate::verdict::UnknownReason`] when the verdict is `unknown`.
    pub reason: u8,
    /// `tracker::REQUESTED_*` bits.
    pub requests: u8,
    /// Server answers, packed (`tracker::answers_of`).
    pub answers: u8,
    /// [`crate::verdict::Verification`] of the client's TLS library (TLS verdicts).
    pub verification: u8,
    /// The client's fatal TLS alert description (meaningful with `tls_rejected` only).
    pub tls_alert: u8,
    /// Explicit padding: no byte of the record is left to chance.
    pub _pad: u8,
    /// Length of the captured message according to its header (0 if unknown).
    pub message_len: u32,
    /// Valid bytes in `captured`: the message that decided the verdict, never more than
    /// its own length. Bytes past `captured_len` are undefined.
    pub captured_len: u32,
    pub captured: [u8; CAPTURE_LEN],
}

/// The authentication outcome of a plaintext or downgraded session.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AuthEvent {
    /// `EVENT_AUTH`.
    pub kind: u32,
    pub _pad: u32,
    pub cookie: u64,
    pub seen_ns: u64,
    /// [`crate::tracker::AuthMethod`].
    pub method: u8,
    /// The client answered with a `p` message (password, hash or SASL/GSS token).
    pub password_sent: u8,
    pub _pad2: [u8; 6],
}

impl SessionEvent {
    pub fn captured(&self) -> &[u8] {
        let n = (self.captured_len as usize).min(CAPTURE_LEN);
        &self.captured[..n]
    }
}

/// The kernel's capture buffer for one connection: twice `CAPTURE_LEN` so that an append
/// at any offset below `CAPTURE_LEN` of any length up to `CAPTURE_LEN` is provably in bounds
/// for the verifier. Only the first `CAPTURE_LEN` bytes are ever used.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Capture {
    pub bytes: [u8; 2 * CAPTURE_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcRecord>() == 48);
const _: () = assert!(core::mem::size_of::<ConnState>() == 48 + 4 * 4 + 20 + 12 + 32);
const _: () =
    assert!(core::mem::size_of::<SessionEvent>() == 24 + 48 + 48 + 6 + 2 + 8 + 8 + CAPTURE_LEN);
const _: () = assert!(core::mem::size_of::<AuthEvent>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_over_forgets_the_previous_attempts_decision() {
        // SAFETY: every field of ConnState is plain data; all zeroes is the kernel's new
        // storage.
        let mut state: ConnState = unsafe { core::mem::zeroed() };
        state.flags = conn_flags::SETTLED | conn_flags::FOLLOWING;
        state.decision_claimed = 1;
        state.message.appended(8);
        state.start(conn_flags::PROC_KNOWN);
        assert_eq!(state.flags, conn_flags::PROC_KNOWN);
        assert_eq!(state.decision_claimed, 0);
        assert_eq!(state.message, MessageAssembly::NEW);
        assert_eq!(state.tracker, Tracker::NEW);
    }
}
