//! Records that cross the kernel/user boundary. `#[repr(C)]`, fixed size, no pointers;
//! sizes are asserted at compile time so a layout change on one side cannot go unnoticed.

use crate::limits::CAPTURE_LEN;

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
    pub const EMPTY: ProcRecord =
        ProcRecord { pid_tgid: 0, uid_gid: 0, cgroup_id: 0, connect_ns: 0, comm: [0; COMM_LEN] };
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

/// Per-connection state kept in the kernel from connect() until the verdict is final.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub proc_: ProcRecord,
    /// Initial sequence number of the client's SYN (valid when `FLAG_SYN_SEEN`).
    pub isn: u32,
    pub flags: u32,
}

/// `ConnState::flags`: the kernel saw this connection's SYN, so it knows where byte 0 is.
pub const FLAG_SYN_SEEN: u32 = 1;

/// `SessionEvent::flags`.
pub mod event_flags {
    /// The process record comes from a connect hook (else the fields are zero).
    pub const PROC_KNOWN: u32 = 1;
    /// The first data rode in the SYN (TCP Fast Open).
    pub const FAST_OPEN: u32 = 2;
    /// The first message was longer than the capture (truncated to `CAPTURE_LEN`).
    pub const TRUNCATED: u32 = 4;
}

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// One event per tracked connection, sent when the kernel's verdict for it is final.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SessionEvent {
    /// Socket cookie: stable per-socket id shared by every hook.
    pub cookie: u64,
    /// `CLOCK_MONOTONIC` time the first bytes were seen, in ns.
    pub seen_ns: u64,
    pub proc_: ProcRecord,
    /// Source and destination addresses as on the wire: IPv4 in the first 4 bytes.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// `AF_INET` (4) or `AF_INET6` (6): the IP version of the packets.
    pub ip_version: u8,
    /// [`crate::verdict::Role`].
    pub role: u8,
    /// [`crate::verdict::Verdict`] as counted by the kernel.
    pub verdict: u8,
    /// [`crate::verdict::UnknownReason`] when the verdict is `unknown`.
    pub reason: u8,
    pub flags: u32,
    /// Payload bytes in the first data segment.
    pub segment_len: u32,
    /// Valid bytes in `captured` (never more than the first message's own length).
    pub captured_len: u32,
    /// Explicit padding, so no byte of the record is left uninitialised.
    pub _pad: u32,
    pub captured: [u8; CAPTURE_LEN],
}

impl SessionEvent {
    pub fn captured(&self) -> &[u8] {
        let n = (self.captured_len as usize).min(CAPTURE_LEN);
        &self.captured[..n]
    }
}

const _: () = assert!(core::mem::size_of::<ProcRecord>() == 48);
const _: () = assert!(core::mem::size_of::<ConnState>() == 56);
const _: () = assert!(
    core::mem::size_of::<SessionEvent>() == 16 + 48 + 32 + 4 + 4 + 4 + 4 + 4 + 4 + CAPTURE_LEN
);
