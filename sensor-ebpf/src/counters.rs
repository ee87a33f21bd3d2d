//! Per-CPU counters, summed over the CPUs by userspace when it reads them.
//!
//! Per-CPU is not enough to make an increment exclusive: the egress hook runs in process
//! context with bottom halves enabled (and, on a preemptible kernel, only migration
//! disabled), so a softirq, or another task, can run a sensor program on the same CPU
//! between its load and its store of the same counter, and one count would be lost.
//! The add is atomic (a `lock xadd` on a line no other CPU touches, a few ns, paid only by
//! packets the sensor reads); its result is not used, so it stays the plain BPF atomic add
//! that every supported kernel accepts (fetching the old value needs 5.12).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::maps::PerCpuArray;
use sensor_common::{
    limits::Stat,
    verdict::{session_counter_index, verification_counter_index, Role, Verdict, Verification},
};

use crate::maps::{SESSION_COUNTERS, STATS, VERIFICATION_COUNTERS};

/// `*counter += n` (wrapping), as one atomic add whose result is not used.
///
/// # Safety
/// `counter` points at an aligned u64 of a map value, valid while the program runs.
#[inline(always)]
pub unsafe fn atomic_add(counter: *mut u64, n: u64) {
    // `AtomicU64::fetch_add` is not offered on this target, which has no compare-and-swap.
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a valid, aligned u64 in the map's value area for as long as the program
        // runs; every write to it is this atomic add.
        unsafe { atomic_add(slot, 1) };
    }
}

#[inline(always)]
pub fn stat(which: Stat) {
    bump(&STATS, which as u32);
}

#[inline(always)]
pub fn session(slot: u32, role: Role, verdict: Verdict) {
    bump(&SESSION_COUNTERS, session_counter_index(slot, role, verdict));
}

#[inline(always)]
pub fn verification(slot: u32, role: Role, verification: Verification) {
    bump(&VERIFICATION_COUNTERS, verification_counter_index(slot, role, verification));
}
