//! Draining the kernel's ring buffer without blocking the runtime: the ring buffer fd is
//! registered with tokio and read whenever the kernel signals data.
//!
//! Wakeups are coalesced. The kernel wakes the reader only when it submits into a ring the
//! reader has caught up with, and that wakeup runs inside the submitting program (a
//! self-IPI), on the application's own send path: one wakeup per event cost the host more
//! than the agent's whole per-event work. So after a wakeup the agent waits before
//! draining; events submitted meanwhile find the reader behind and wake nobody.
//!
//! How long it waits adapts to the rate, as a NIC's interrupt moderation does. A lone event
//! waits `COALESCE` (about 2 ms in all with tokio's millisecond timer; finding latency
//! budget: 5 ms at p99, measured 2.5-3.2 ms by `cargo xtask bench` at 500 sessions/s).
//! Once a drain finds `BUSY_BATCH` events or more, sessions are pouring in and the next
//! wait is `BUSY_COALESCE`: a wakeup (sleeping in epoll and waking) costs about 50 us of CPU
//! on a VM like CI's, against 1-2 us to handle a session, so at thousands of sessions a
//! second waking every millisecond was most of the agent's CPU. Findings then wait up to
//! `BUSY_COALESCE` more; the rate falls back below the threshold when the load stops.
//! A wait is restarted if the 100 ms ticker or a signal wakes the loop meanwhile.

use std::{io, mem::size_of, ptr, time::Duration};

use aya::maps::{MapData, RingBuf};
use sensor_common::event::{AuthEvent, SessionEvent, EVENT_AUTH, EVENT_SESSION};
use tokio::io::{unix::AsyncFd, Interest};

/// How long the agent lets events gather after a wakeup before draining them.
pub const COALESCE: Duration = Duration::from_millis(1);
/// ... while the last drain found at least `BUSY_BATCH` events.
pub const BUSY_COALESCE: Duration = Duration::from_millis(4);
/// Events in one drain that make the next wait `BUSY_COALESCE`: a plaintext session sends
/// two (its verdict, then its auth outcome), so about four sessions within `COALESCE`, some
/// 2,000 sessions a second. A steady 500 a second stays at `COALESCE`.
pub const BUSY_BATCH: usize = 8;

/// The wait before the next drain, after one that found `drained` events.
pub fn coalesce_after(drained: usize) -> Duration {
    if drained >= BUSY_BATCH {
        BUSY_COALESCE
    } else {
        COALESCE
    }
}

pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records too short to be a `SessionEvent` (a kernel/user version mismatch).
    pub malformed: u64,
    /// The wait before the next drain (see `coalesce_after`).
    wait: Duration,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as it lives, and the AsyncFd owns
        // the RingBuf, so the fd stays open and the same until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(EventStream { ring, malformed: 0, wait: COALESCE })
    }

    /// Wait until the kernel has written events, let more gather (`coalesce_after` the last
    /// drain), then move all available ones to `out`. Cancel-safe: nothing is consumed
    /// before the last await.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        tokio::time::sleep(self.wait).await;
        let ring = guard.get_inner_mut();
        let before = out.len();
        self.malformed += drain(ring, out);
        self.wait = coalesce_after(out.len() - before);
        guard.clear_ready();
        Ok(())
    }

    /// Take whatever is in the ring buffer now, without waiting (used at shutdown).
    pub fn drain_now(&mut self, out: &mut Vec<KernelEvent>) {
        self.malformed += drain(self.ring.get_mut(), out);
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<KernelEvent>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(ev) => out.push(ev),
            None => malformed += 1,
        }
    }
    malformed
}

/// What the kernel sends.
// Events live briefly in a reused batch Vec; boxing the large variant would allocate once
// per session instead.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
pub enum KernelEvent {
    Session(SessionEvent),
    Auth(AuthEvent),
}

/// Copy a ring buffer record into an owned event; `None` if its kind is unknown or it is
/// too short for its kind.
pub fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_SESSION => read::<SessionEvent>(bytes).map(KernelEvent::Session),
        EVENT_AUTH => read::<AuthEvent>(bytes).map(KernelEvent::Auth),
        _ => None,
    }
}

fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain #[repr(C)] data valid for any bytes (aya::Pod),
    // and read_unaligned copes with the record's alignment.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_lengthens_only_while_events_pour_in() {
        assert_eq!(coalesce_after(0), COALESCE);
        assert_eq!(coalesce_after(BUSY_BATCH - 1), COALESCE);
        assert_eq!(coalesce_after(BUSY_BATCH), BUSY_COALESCE);
        assert_eq!(coalesce_after(10_000), BUSY_COALESCE);
        // Busy findings still fit the 5 ms latency budget's order of magnitude.
        assert!(BUSY_COALESCE < Duration::from_millis(5) && COALESCE < BUSY_COALESCE);
    }

    #[test]
    fn records_are_decoded_by_kind_and_short_ones_rejected() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[1, 0, 0, 0, 0, 0]).is_none(), "a session kind but far too short");
        let mut bytes = vec![0u8; size_of::<SessionEvent>()];
        bytes[..4].copy_from_slice(&EVENT_SESSION.to_ne_bytes());
        bytes[8] = 42; // cookie, little-endian
        assert!(matches!(decode(&bytes), Some(KernelEvent::Session(ev)) if ev.cookie == 42));
        let mut auth = vec![0u8; size_of::<AuthEvent>()];
        auth[..4].copy_from_slice(&EVENT_AUTH.to_ne_bytes());
        assert!(matches!(decode(&auth), Some(KernelEvent::Auth(_))));
        bytes[..4].copy_from_slice(&7u32.to_ne_bytes());
        assert!(decode(&bytes).is_none(), "unknown kinds are rejected");
    }
}
