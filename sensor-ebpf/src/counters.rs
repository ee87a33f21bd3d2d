//! Per-CPU counters: no atomics needed, userspace sums the CPUs when it reads them.

use aya_ebpf::maps::PerCpuArray;
use sensor_common::{
    limits::Stat,
    verdict::{session_counter_index, verification_counter_index, Role, Verdict, Verification},
};

use crate::maps::{SESSION_COUNTERS, STATS, VERIFICATION_COUNTERS};

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
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
