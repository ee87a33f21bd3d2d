//! Per-socket state in socket-local storage (`SOCKETS`): found from the packet's own
//! socket in one lookup, never evicted, freed by the kernel with the socket. Created at
//! connect() to a watched port (the process record), at the SYN of a connection NAT sends
//! to one, or when a watched connection no connect hook saw proves its start (or is found
//! under way). Once nothing is left to learn
//! on a socket, its entry is marked settled and stays, a few bytes, until the socket goes:
//! its later packets cost one lookup and one flag test, and no memory is allocated or
//! freed per session beyond the entry itself.
//!
//! Of two programs finishing a session at once (ingress runs before the socket lock), the
//! claim (`claim_decision`, the shared rule `sensor_common::claim`) says which carries out
//! what: a word updated under the state's own spin lock (an exclusive insert into an LRU
//! hash map did it before, and cost as much as the storage's allocation: every insert
//! evicted).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::generated::{bpf_sk_storage_get, bpf_spin_lock, bpf_spin_unlock},
    macros::btf_map,
};
use sensor_common::{
    claim::{claim, Claim},
    event::{conn_flags, ConnState},
};

use crate::{maps, packet::PacketSocket};

#[btf_map]
static SOCKETS: SkStorage<ConnState> = SkStorage::new();

#[inline(always)]
fn map_ptr<T>(map: &T) -> *mut c_void {
    core::ptr::from_ref(map).cast_mut().cast()
}

/// The socket's state, if it has one (`sk` a full socket, or a `sock_common` where the
/// kernel allows: `of_packet`).
#[inline(always)]
pub fn state(sk: *mut bpf_sock) -> Option<&'static mut ConnState> {
    // SAFETY: `sk` is a socket checked for null by the caller, of a type the verifier
    // accepted for the helper; the value pointer is valid while the program runs (storage
    // is freed after an RCU grace period).
    unsafe {
        let p = bpf_sk_storage_get(map_ptr(&SOCKETS), sk.cast(), core::ptr::null_mut(), 0);
        p.cast::<ConnState>().as_mut()
    }
}

/// The state of the packet's socket, if it has one, and its full socket if that was
/// taken to look the state up: looked up on the socket as the hook has it where the kernel
/// allows (one helper call on the path of every judged packet), else on the full socket
/// (which the caller then need not take again).
#[inline(always)]
pub fn of_packet(socket: PacketSocket) -> (Option<&'static mut ConnState>, Option<*mut bpf_sock>) {
    if maps::storage_by_packet_socket() {
        // `bpf_sk_storage_get` takes a `sock_common` (5.10+) and returns null for anything
        // but a full socket; the packet hooks' socket is one (the kernel points `skb->sk`
        // at the full socket while a cgroup_skb program runs).
        (state(socket.as_sock_common()), None)
    } else {
        let full = socket.full();
        (full.and_then(state), full)
    }
}

/// The socket's state, created zero-filled if it has none (`None`: no memory).
#[inline(always)]
pub fn create(sk: *mut bpf_sock) -> Option<&'static mut ConnState> {
    // SAFETY: as in `state`; a null initial value asks the kernel for a zeroed one.
    unsafe {
        let p = bpf_sk_storage_get(
            map_ptr(&SOCKETS),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        );
        p.cast::<ConnState>().as_mut()
    }
}

/// Claim the finishing of the session for this program, whose effects count a verdict or
/// not: what of them it carries out.
#[inline(always)]
pub fn claim_decision(state: &mut ConnState, counts_verdict: bool) -> Claim {
    let lock = core::ptr::addr_of_mut!(state.lock).cast();
    let claimed = core::ptr::addr_of_mut!(state.decision_claimed);
    // SAFETY: `state` is socket storage, whose value type holds the lock (the verifier
    // checks it against the map's BTF); nothing is called while it is held (`claim` is
    // inlined). The volatile accesses stay between the two helper calls.
    unsafe {
        bpf_spin_lock(lock);
        let mut word = core::ptr::read_volatile(claimed);
        let outcome = claim(&mut word, counts_verdict);
        core::ptr::write_volatile(claimed, word);
        bpf_spin_unlock(lock);
        outcome
    }
}

/// Nothing more to learn on this socket: its later packets leave at the first flag test.
#[inline(always)]
pub fn settle(state: &mut ConnState) {
    state.flags |= conn_flags::SETTLED;
}
