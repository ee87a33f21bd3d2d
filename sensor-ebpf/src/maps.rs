//! Every map the programs use, each bounded by a constant from `sensor_common::limits`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    event::ConnState,
    limits::{
        Stat, CONNECTIONS_MAX, EVENTS_RING_BYTES, SESSION_COUNTERS_ENTRIES, WATCHED_PORTS_ENTRIES,
    },
};

/// Indexed by TCP port (host order); non-zero means watched. Written by userspace.
#[map]
pub static WATCHED_PORTS: Array<u8> = Array::with_max_entries(WATCHED_PORTS_ENTRIES, 0);

/// Socket cookie -> state, from connect() until the connection's verdict is final.
#[map]
pub static CONNECTIONS: LruHashMap<u64, ConnState> =
    LruHashMap::with_max_entries(CONNECTIONS_MAX, 0);

/// One `SessionEvent` per classified connection.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Exact verdict counts per (role, verdict), whatever happens to the events.
#[map]
pub static SESSION_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(SESSION_COUNTERS_ENTRIES, 0);

/// Operational counters, indexed by `Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

#[inline(always)]
pub fn is_watched(port: u16) -> bool {
    matches!(WATCHED_PORTS.get(port as u32), Some(&flag) if flag != 0)
}
