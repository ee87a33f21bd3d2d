//! Reading the kernel's per-CPU counters: the exact session counts, whatever happened to
//! the events, and the operational statistics.

use std::sync::Mutex;

use anyhow::{anyhow, Context};
use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use sensor_common::{
    limits::{map_names, Stat},
    verdict::{session_counter_index, verification_counter_index, Role, Verdict, Verification},
};

/// Handles on the counter maps. Cheap to read; safe to share across threads.
pub struct KernelCounters {
    sessions: Mutex<PerCpuArray<MapData, u64>>,
    verifications: Mutex<PerCpuArray<MapData, u64>>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
}

/// One reading of every counter, each summed over the CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Indexed by `session_counter_index(slot, role, verdict)`.
    pub sessions: Vec<u64>,
    /// Indexed by `verification_counter_index(slot, role, verification)`.
    pub verifications: Vec<u64>,
    /// Indexed by `Stat`.
    pub stats: Vec<u64>,
}

impl KernelStats {
    /// Sessions of the watched port in `slot` (its position in the port list).
    pub fn sessions(&self, slot: usize, role: Role, verdict: Verdict) -> u64 {
        let index = session_counter_index(slot as u32, role, verdict) as usize;
        self.sessions.get(index).copied().unwrap_or(0)
    }

    /// TLS sessions of the watched port in `slot` by verification.
    pub fn verifications(&self, slot: usize, role: Role, verification: Verification) -> u64 {
        let index = verification_counter_index(slot as u32, role, verification) as usize;
        self.verifications.get(index).copied().unwrap_or(0)
    }

    pub fn stat(&self, which: Stat) -> u64 {
        self.stats.get(which as usize).copied().unwrap_or(0)
    }
}

impl KernelCounters {
    pub(super) fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| -> anyhow::Result<PerCpuArray<MapData, u64>> {
            let map = ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            PerCpuArray::try_from(map).with_context(|| format!("{name} is not a per-CPU array"))
        };
        let sessions = take(map_names::SESSION_COUNTERS)?;
        let verifications = take(map_names::VERIFICATION_COUNTERS)?;
        let stats = take(map_names::STATS)?;
        Ok(KernelCounters {
            sessions: Mutex::new(sessions),
            verifications: Mutex::new(verifications),
            stats: Mutex::new(stats),
        })
    }

    pub fn read(&self) -> anyhow::Result<KernelStats> {
        Ok(KernelStats {
            sessions: sum_all(&self.sessions)?,
            verifications: sum_all(&self.verifications)?,
            stats: sum_all(&self.stats)?,
        })
    }
}

fn sum_all(map: &Mutex<PerCpuArray<MapData, u64>>) -> anyhow::Result<Vec<u64>> {
    let map = map.lock().map_err(|_| anyhow!("counter map lock poisoned"))?;
    (0..map.len())
        .map(|i| {
            let per_cpu = map.get(&i, 0).with_context(|| format!("reading counter {i}"))?;
            Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
        })
        .collect()
}
