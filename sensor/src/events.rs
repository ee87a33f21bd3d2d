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

use std::{io, mem::size_of, time::Duration};

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
    /// The last drain stopped at `DRAIN_CAP` with records left in the ring.
    more: bool,
}

/// Events handled per drain at most, so that findings are flushed, ticks run and signals
/// are taken between drains however fast sessions come.
pub const DRAIN_CAP: usize = 4096;

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as it lives, and the AsyncFd owns
        // the RingBuf, so the fd stays open and the same until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(EventStream { ring, malformed: 0, wait: COALESCE, more: false })
    }

    /// Wait until the kernel has written events, then let more gather (`coalesce_after` the
    /// last drain); `drain` takes them. Cancel-safe: a wait cut short keeps the ring's
    /// readiness, so the next one returns at once.
    pub async fn wait(&mut self) -> io::Result<()> {
        if self.more {
            // The last drain stopped at its cap with records left: no wakeup will come for
            // them (readiness was cleared, the kernel sees a reader behind). Only let the
            // loop tick and take signals in between.
            tokio::task::yield_now().await;
            return Ok(());
        }
        let mut guard = self.ring.readable_mut().await?;
        tokio::time::sleep(self.wait).await;
        // Cleared before draining: events submitted from here on are either drained by
        // the `drain` that follows or, submitted after it caught up, wake the reader again.
        guard.clear_ready();
        Ok(())
    }

    /// Hand every event in the ring to `handle`, in place: a record is read where the
    /// kernel wrote it (no copy of the ~680-byte session event into a batch) and released
    /// when `handle` returns. Returns how many events were handled.
    pub fn drain(&mut self, mut handle: impl FnMut(KernelEvent<'_>)) -> usize {
        let ring = self.ring.get_mut();
        let mut scratch = Vec::new();
        let mut handled = 0;
        self.more = false;
        while let Some(item) = ring.next() {
            match decode(aligned(&item, &mut scratch)) {
                Some(event) => {
                    handle(event);
                    handled += 1;
                }
                None => self.malformed += 1,
            }
            if handled >= DRAIN_CAP {
                // Sessions arriving as fast as they are handled would keep this loop going
                // forever, with no flush, tick or SIGTERM in between.
                self.more = true;
                break;
            }
        }
        self.wait = coalesce_after(handled);
        handled
    }
}

/// What the kernel sends, borrowed from the ring buffer.
#[derive(Clone, Copy)]
pub enum KernelEvent<'a> {
    Session(&'a SessionEvent),
    Auth(&'a AuthEvent),
}

/// `bytes` if 8-byte aligned, as the kernel aligns every ring buffer record; otherwise a
/// copy in `scratch` that is.
fn aligned<'a>(bytes: &'a [u8], scratch: &'a mut Vec<u64>) -> &'a [u8] {
    if bytes.as_ptr().cast::<u64>().is_aligned() {
        return bytes;
    }
    scratch.clear();
    scratch.resize(bytes.len().div_ceil(8), 0);
    // SAFETY: `scratch` holds at least `bytes.len()` bytes, viewed as bytes while borrowed.
    let copy: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast(), bytes.len()) };
    copy.copy_from_slice(bytes);
    copy
}

/// A ring buffer record as an event; `None` if its kind is unknown, it is too short for
/// its kind, or it is not aligned for it (see `aligned`).
pub fn decode(bytes: &[u8]) -> Option<KernelEvent<'_>> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_SESSION => read::<SessionEvent>(bytes).map(KernelEvent::Session),
        EVENT_AUTH => read::<AuthEvent>(bytes).map(KernelEvent::Auth),
        _ => None,
    }
}

fn read<T: aya::Pod>(bytes: &[u8]) -> Option<&T> {
    let at = bytes.as_ptr().cast::<T>();
    if bytes.len() < size_of::<T>() || !at.is_aligned() {
        return None;
    }
    // SAFETY: length and alignment checked; T is plain #[repr(C)] data valid for any bytes
    // (aya::Pod); the kernel does not write a committed record until the reader releases
    // it, after the borrow ends.
    Some(unsafe { &*at })
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
        let size = size_of::<SessionEvent>();
        let mut bytes = vec![0u8; size];
        bytes[..4].copy_from_slice(&EVENT_SESSION.to_ne_bytes());
        bytes[8] = 42; // cookie, little-endian
                       // 8-byte aligned storage, as the kernel aligns every record: read in place.
        let mut words = vec![0u64; size.div_ceil(8) + 1];
        // SAFETY: the u64s' own memory, viewed as bytes for the test's lifetime.
        let storage: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
        storage[..size].copy_from_slice(&bytes);
        let mut scratch = Vec::new();
        let in_place = aligned(&storage[..size], &mut scratch);
        assert_eq!(in_place.as_ptr(), storage.as_ptr(), "no copy of an aligned record");
        assert!(matches!(decode(in_place), Some(KernelEvent::Session(ev)) if ev.cookie == 42));
        // One that is not aligned is refused by decode and copied by `aligned`.
        storage[1..=size].copy_from_slice(&bytes);
        assert!(decode(&storage[1..=size]).is_none(), "never read misaligned");
        let copied = aligned(&storage[1..=size], &mut scratch);
        assert!(matches!(decode(copied), Some(KernelEvent::Session(ev)) if ev.cookie == 42));
        let mut auth = vec![0u64; size_of::<AuthEvent>().div_ceil(8)];
        auth[0] = u64::from(EVENT_AUTH); // kind in the first 4 bytes (little-endian)
                                         // SAFETY: as above.
        let auth: &[u8] =
            unsafe { std::slice::from_raw_parts(auth.as_ptr().cast(), size_of::<AuthEvent>()) };
        assert!(matches!(decode(auth), Some(KernelEvent::Auth(_))));
        storage[..4].copy_from_slice(&7u32.to_ne_bytes());
        assert!(decode(&storage[..size]).is_none(), "unknown kinds are rejected");
    }
}
