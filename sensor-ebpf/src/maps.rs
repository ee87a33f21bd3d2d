//! Every map the programs use, each bounded by a constant from `sensor_common::limits`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    event::{Capture, COMM_LEN},
    limits::{
        Stat, CAPTURES_MAX, EVENTS_RING_BYTES, SESSION_COUNTERS_ENTRIES, TLS_OBJECTS_MAX,
        TLS_THREADS_MAX, VERIFICATION_COUNTERS_ENTRIES, WATCHED_PORTS_ENTRIES,
    },
    tls::{Handshake, ObjectKey},
    verdict::Role,
};

/// Indexed by TCP port (host order): 0 unwatched, else the port's slot + 1. Read-only data
/// the agent fills in at load (the ports are fixed for the agent's life): a lookup is one
/// load from a 64 KiB table, where an array map's inlined lookup took ten instructions
/// (bounds test, 8-byte element stride: a 512 KiB table) on the path of every packet.
#[unsafe(no_mangle)]
static WATCHED_PORT_SLOTS: [u8; WATCHED_PORTS_ENTRIES as usize] =
    [0; WATCHED_PORTS_ENTRIES as usize];

/// 1: socket storage is looked up on the packet's socket as the hook has it (a
/// `sock_common` to the verifier, which `bpf_sk_storage_get` takes from Linux 5.10 on);
/// 0: through `bpf_sk_fullsock` first, as 5.8 and 5.9 require. That helper call costs a judged
/// connection's packets 10-20 ns here (SRSO's return thunk, a cold line of code). Read-only
/// data fixed at load, so the verifier drops the path not taken.
#[unsafe(no_mangle)]
static STORAGE_BY_PACKET_SOCKET: u8 = 1;

/// Whether `STORAGE_BY_PACKET_SOCKET` is set.
#[inline(always)]
pub fn storage_by_packet_socket() -> bool {
    // SAFETY: a read of a read-only global; volatile so the compiler keeps the load the
    // agent's value is patched into.
    unsafe { core::ptr::read_volatile(&STORAGE_BY_PACKET_SOCKET) != 0 }
}

/// The ends of sessions watched: bit `1 << Role as u32` per role. Read-only data fixed at
/// load (the roles are fixed for the agent's life), so the verifier drops the paths of a
/// role not watched: with the default (clients only), a local server's sockets on a
/// watched port leave at the port test like the rest of the host's traffic, and connect()
/// programs do nothing when only servers are watched.
#[unsafe(no_mangle)]
static ROLES_ENABLED: u32 = 0;

/// The last connect() on this CPU to a port not watched: its socket's cookie and process.
/// Read by the egress hook when that connection's SYN turns out to go to a watched port
/// (NAT on this host).
#[map]
pub static CONNECTING: PerCpuArray<ConnectRecord> = PerCpuArray::with_max_entries(1, 0);

/// What connect() can cheaply leave for the SYN (the cgroup and the time are the socket's
/// and the SYN's own, read there). Every field is written and read volatile: on a
/// preemptible kernel, programs of other tasks' connect() calls and SYNs can run on this
/// CPU in the middle of one another (see `connect::leave_in_slot`, `segment::follow_from_syn`).
#[repr(C)]
pub struct ConnectRecord {
    /// connect() programs writing the record now (atomic adds): only one that finds itself
    /// alone writes.
    pub writers: u64,
    pub cookie: u64,
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub comm: [u8; COMM_LEN],
}

/// NAT-followed sessions not decided yet (`conn_flags::NAT`), on every CPU: while none is,
/// a packet of a socket whose own ports are not watched leaves before its socket's storage
/// is looked up (`segment::none_of_ours`). One that is never decided (its socket went
/// without a FIN or RST the hooks saw) keeps it above zero: every packet is then looked up,
/// as before, never skipped wrongly.
#[map]
pub static NAT_FOLLOWING: Array<u64> = Array::with_max_entries(1, 0);

/// Socket cookie -> the client message being assembled (only while one is).
#[map]
pub static CAPTURES: LruHashMap<u64, Capture> = LruHashMap::with_max_entries(CAPTURES_MAX, 0);

/// Never written: a zeroed `Capture` to insert new captures from (the BPF stack is too
/// small to build one).
#[map]
pub static ZERO_CAPTURE: PerCpuArray<Capture> = PerCpuArray::with_max_entries(1, 0);

/// Session and auth events for userspace. Its size can be changed at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Exact verdict counts per (role, verdict), whatever happens to the events.
#[map]
pub static SESSION_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(SESSION_COUNTERS_ENTRIES, 0);

/// Exact counts of TLS sessions per (port, role, verification), counted with the verdict.
#[map]
pub static VERIFICATION_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(VERIFICATION_COUNTERS_ENTRIES, 0);

/// OpenSSL context (per process) -> `LibraryMode` set on it.
#[map]
pub static TLS_CONTEXTS: LruHashMap<ObjectKey, u8> =
    LruHashMap::with_max_entries(TLS_OBJECTS_MAX, 0);

/// OpenSSL SSL (per process) -> `LibraryMode`, with `tls::ANNOUNCED` once its handshake
/// started.
#[map]
pub static TLS_SSLS: LruHashMap<ObjectKey, u8> = LruHashMap::with_max_entries(TLS_OBJECTS_MAX, 0);

/// Thread (pid_tgid) -> the context passed to the `SSL_new` it is inside.
#[map]
pub static TLS_NEW_SSL: LruHashMap<u64, u64> = LruHashMap::with_max_entries(TLS_THREADS_MAX, 0);

/// Thread (pid_tgid) -> the handshake it announced last, until a ClientHello takes it.
#[map]
pub static TLS_HANDSHAKES: LruHashMap<u64, Handshake> =
    LruHashMap::with_max_entries(TLS_THREADS_MAX, 0);

/// Operational counters, indexed by `Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT as u32, 0);

/// The port's position in the configured list, if it is watched.
#[inline(always)]
pub fn port_slot(port: u16) -> Option<u32> {
    // The mask after `opaque`: the remote port comes out of a byte swap, which verifiers
    // before Linux 6.13 or so leave unbounded (5.10, 6.1, 6.12 refused the program), and the
    // compiler drops a mask on a u16 as redundant.
    let index = (crate::packet::opaque(u32::from(port)) & 0xffff) as usize;
    // SAFETY: a read of read-only data, in bounds (index <= 0xffff); volatile so that the
    // compiler keeps the load the agent's table is patched into.
    let slot_plus_one = unsafe { core::ptr::read_volatile(&WATCHED_PORT_SLOTS[index]) };
    (slot_plus_one != 0).then(|| slot_plus_one as u32 - 1)
}

/// Whether any NAT-followed session is still open (see `NAT_FOLLOWING`).
#[inline(always)]
pub fn nat_following() -> bool {
    matches!(NAT_FOLLOWING.get(0), Some(&open) if open != 0)
}

/// Count a NAT-followed session opened (`1`) or decided (`u64::MAX`, i.e. minus one).
#[inline(always)]
pub fn nat_following_add(n: u64) {
    if let Some(open) = NAT_FOLLOWING.get_ptr_mut(0) {
        // SAFETY: the map's one aligned u64, valid while the program runs; every write to
        // it is this atomic add.
        unsafe { crate::counters::atomic_add(open, n) };
    }
}

/// Whether the sensor watches this end of sessions (`ROLES_ENABLED`).
#[inline(always)]
pub fn role_enabled(role: Role) -> bool {
    // SAFETY: a read of a read-only global; volatile so the compiler keeps the load the
    // agent's value is patched into.
    let roles = unsafe { core::ptr::read_volatile(&ROLES_ENABLED) };
    roles & (1u32 << (role as u32)) != 0
}
