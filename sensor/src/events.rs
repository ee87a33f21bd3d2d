//! Draining the kernel's ring buffer without blocking the runtime, paced by the rate at
//! which sessions come.
//!
//! The kernel wakes the reader only when it submits into a ring the reader has caught up
//! with, and that wakeup runs inside the submitting program (a self-IPI), on the
//! application's own send path: one wakeup per event cost the host more than the agent's
//! whole per-event work. So the agent never drains at once:
//!
//! - **Woken** (the usual pace): the ring's fd is registered with tokio; after the kernel's
//!   wakeup the agent waits `COALESCE` (about 2 ms in all with tokio's millisecond timer;
//!   finding latency budget 5 ms at p99) and drains. Events submitted meanwhile find the
//!   reader behind and wake nobody.
//! - **Polled** (sessions pouring in, `Pace`): the fd is taken out of epoll and the agent
//!   drains every `BUSY_COALESCE` on its timer alone. A wakeup (sleeping in epoll and
//!   waking) costs about 50 us of CPU on a VM like CI's against 1-2 us to handle a session;
//!   woken pacing pays two per drain (the kernel's, then the timer's), polled pacing one.
//!   (The kernel still queues its wakeup work when it submits into a caught-up ring; with
//!   the fd out of epoll that work finds no one to wake.)
//!   Leaving it, the fd is registered again, and epoll reports it at once if the ring holds
//!   anything: nothing submitted in between waits for a wakeup that will not come.
//!
//! Findings wait up to `BUSY_COALESCE` more while polled; the rate falls below
//! `Pace::LEAVE_PER_SEC` when the load stops and the next drain goes back to woken pacing.

use std::{io, mem::size_of, time::Duration};

use aya::maps::{MapData, RingBuf};
use sensor_common::event::{AuthEvent, SessionEvent, EVENT_AUTH, EVENT_SESSION};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};
use tracing::{debug, warn};

/// How long the agent lets events gather after the kernel's wakeup before draining them.
pub const COALESCE: Duration = Duration::from_millis(1);
/// How often a polled reader drains.
pub const BUSY_COALESCE: Duration = Duration::from_millis(4);

/// Events handled per drain at most, so that findings are flushed, ticks run and signals
/// are taken between drains however fast sessions come.
pub const DRAIN_CAP: usize = 4096;

/// How the agent learns that the ring holds events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// The kernel wakes it; it drains `COALESCE` later.
    Woken,
    /// Its timer wakes it every `BUSY_COALESCE`; the kernel wakes nobody.
    Polled,
}

impl Pace {
    /// Events a second, over the time since the previous drain, that switch to polling:
    /// about 2,000 plaintext sessions a second (each sends two events, its verdict and then
    /// its auth outcome).
    pub const ENTER_PER_SEC: u64 = 4_000;
    /// ... and back to woken pacing: half that, so that a rate near the threshold does not
    /// move the fd in and out of epoll at every drain. A steady 500 sessions a second
    /// (1,000 events) stays woken, at the 5 ms latency budget's pace.
    pub const LEAVE_PER_SEC: u64 = 2_000;

    /// The pace after a drain that found `events` events `window` after the previous one.
    /// A rate, not a count per drain: a polled window is longer than a woken one and would
    /// otherwise look busier at the same rate.
    pub fn after_drain(self, events: usize, window: Duration) -> Pace {
        // events / window >= per_sec, without dividing by a window that may be zero.
        let at_least = |per_sec: u64| {
            events > 0 && events as u128 * 1_000_000_000 >= u128::from(per_sec) * window.as_nanos()
        };
        match self {
            Pace::Woken if at_least(Self::ENTER_PER_SEC) => Pace::Polled,
            Pace::Polled if !at_least(Self::LEAVE_PER_SEC) => Pace::Woken,
            unchanged => unchanged,
        }
    }
}

type Ring = RingBuf<MapData>;

enum Reader {
    /// Registered with the runtime's epoll.
    Woken(AsyncFd<Ring>),
    /// Out of epoll: the kernel's wakeups find nobody waiting.
    Polled(Ring),
}

pub struct EventStream {
    /// `None` only inside `set_pace`, while the ring moves from one reader to the other.
    reader: Option<Reader>,
    /// Records too short to be a `SessionEvent` (a kernel/user version mismatch).
    pub malformed: u64,
    /// When the last drain started: the window of the next drain's rate.
    last_drain: Instant,
    /// When a polled reader drains next; kept across waits cut short by the run loop's
    /// ticker or a signal, so that those do not postpone the drain.
    next_poll: Option<Instant>,
    /// The last drain stopped at `DRAIN_CAP` with records left in the ring.
    more: bool,
}

/// The ring registered with the runtime's epoll, interested in reading only.
#[allow(clippy::result_large_err, reason = "the error hands the ring back, to be polled")]
fn register(ring: Ring) -> Result<AsyncFd<Ring>, tokio::io::unix::AsyncFdRegisterError<Ring>> {
    // SAFETY: the RingBuf owns its map fd for as long as it lives, and the AsyncFd owns
    // the RingBuf, so the fd stays open and the same until the AsyncFd is dropped or gives
    // the RingBuf back (`into_inner`, which deregisters it first).
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
}

impl EventStream {
    pub fn new(ring: Ring) -> io::Result<Self> {
        let reader = register(ring).map_err(|err| err.into_parts().1)?;
        Ok(EventStream {
            reader: Some(Reader::Woken(reader)),
            malformed: 0,
            last_drain: Instant::now(),
            next_poll: None,
            more: false,
        })
    }

    fn pace(&self) -> Pace {
        match self.reader {
            Some(Reader::Polled(_)) => Pace::Polled,
            _ => Pace::Woken,
        }
    }

    /// Wait until it is time to drain (see the module's comment); `drain` takes the events.
    /// Cancel-safe: a woken wait cut short keeps the ring's readiness, so the next one
    /// returns at once; a polled one keeps its deadline.
    pub async fn wait(&mut self) -> io::Result<()> {
        if self.more {
            // The last drain stopped at its cap with records left: no wakeup will come for
            // them (readiness was cleared, the kernel sees a reader behind). Only let the
            // loop tick and take signals in between.
            tokio::task::yield_now().await;
            return Ok(());
        }
        match &mut self.reader {
            Some(Reader::Woken(ring)) => {
                let mut guard = ring.readable_mut().await?;
                tokio::time::sleep(COALESCE).await;
                // Cleared before draining: events submitted from here on are either drained
                // by the `drain` that follows or, submitted after it caught up, wake the
                // reader again.
                guard.clear_ready();
            }
            Some(Reader::Polled(_)) => {
                let at = *self.next_poll.get_or_insert_with(|| Instant::now() + BUSY_COALESCE);
                tokio::time::sleep_until(at).await;
                self.next_poll = None;
            }
            None => return Err(io::Error::other("the ring buffer's reader was lost")),
        }
        Ok(())
    }

    /// Hand every event in the ring to `handle`, in place: a record is read where the
    /// kernel wrote it (no copy of the ~680-byte session event into a batch) and released
    /// when `handle` returns; then set the pace from the rate. Returns how many events were
    /// handled.
    pub fn drain(&mut self, mut handle: impl FnMut(KernelEvent<'_>)) -> usize {
        let started = Instant::now();
        let ring = match &mut self.reader {
            Some(Reader::Woken(ring)) => ring.get_mut(),
            Some(Reader::Polled(ring)) => ring,
            None => return 0,
        };
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
        let window = started.duration_since(self.last_drain);
        self.last_drain = started;
        self.set_pace(self.pace().after_drain(handled, window));
        handled
    }

    /// At shutdown: drain until the ring is empty, however many `DRAIN_CAP`s that takes,
    /// but for no more rounds than a ring of `ring_bytes` holds records (the programs still
    /// run, and a flood must not keep the agent from detaching). Returns the events handled.
    pub fn drain_remaining(
        &mut self,
        ring_bytes: u32,
        mut handle: impl FnMut(KernelEvent<'_>),
    ) -> usize {
        let mut handled = 0;
        for _ in 0..final_drain_rounds(ring_bytes) {
            let drained = self.drain(&mut handle);
            handled += drained;
            if drained < DRAIN_CAP {
                break;
            }
        }
        handled
    }

    /// Move the ring to the reader of `pace`. Registering again makes epoll look at the
    /// ring at once: events submitted while it was polled are reported, not left waiting.
    fn set_pace(&mut self, pace: Pace) {
        if pace == self.pace() {
            return;
        }
        let Some(reader) = self.reader.take() else { return };
        self.reader = Some(match reader {
            Reader::Woken(ring) => {
                self.next_poll = None;
                Reader::Polled(ring.into_inner())
            }
            Reader::Polled(ring) => match register(ring) {
                Ok(ring) => Reader::Woken(ring),
                Err(err) => {
                    // Stays polled: findings keep coming every BUSY_COALESCE.
                    let (ring, cause) = err.into_parts();
                    warn!(%cause, "cannot register the ring buffer again; polling it");
                    Reader::Polled(ring)
                }
            },
        });
        debug!(pace = ?self.pace(), "event pacing changed");
    }
}

/// Drains of `DRAIN_CAP` that take everything a ring of `ring_bytes` can hold: as many
/// records as fit of the smallest kind (an auth event behind the ring's 8-byte header).
fn final_drain_rounds(ring_bytes: u32) -> usize {
    let most = ring_bytes as usize / (size_of::<AuthEvent>() + 8);
    most / DRAIN_CAP + 1
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
    fn polling_only_while_sessions_pour_in() {
        let ms = Duration::from_millis;
        // A steady 500 plaintext sessions a second: two events every 2 ms; woken, whatever
        // the window (a polled window of 4-5 ms holds twice as many at the same rate).
        assert_eq!(Pace::Woken.after_drain(2, ms(2)), Pace::Woken);
        assert_eq!(Pace::Polled.after_drain(5, ms(5)), Pace::Woken);
        assert_eq!(Pace::Polled.after_drain(4, ms(4)), Pace::Woken);
        // Thousands a second: polled, and kept there while the rate holds.
        assert_eq!(Pace::Woken.after_drain(44, ms(2)), Pace::Polled);
        assert_eq!(Pace::Polled.after_drain(88, ms(4)), Pace::Polled);
        // The first drain of a burst after a quiet spell: its window holds the quiet.
        assert_eq!(Pace::Woken.after_drain(40, Duration::from_secs(10)), Pace::Woken);
        // Between the thresholds the pace stays as it was (hysteresis).
        assert_eq!(Pace::Woken.after_drain(6, ms(2)), Pace::Woken);
        assert_eq!(Pace::Polled.after_drain(12, ms(4)), Pace::Polled);
        // The load stops.
        assert_eq!(Pace::Polled.after_drain(0, ms(4)), Pace::Woken);
        // Degenerate windows decide by the events alone.
        assert_eq!(Pace::Woken.after_drain(0, Duration::ZERO), Pace::Woken);
        assert_eq!(Pace::Woken.after_drain(1, Duration::ZERO), Pace::Polled);
        // Busy findings still fit the 5 ms latency budget's order of magnitude.
        assert!(BUSY_COALESCE < ms(5) && COALESCE < BUSY_COALESCE);
    }

    #[test]
    fn the_final_drain_can_take_a_full_ring_and_no_more() {
        let records = |bytes: u32| bytes as usize / (size_of::<AuthEvent>() + 8);
        for bytes in [4096, 256 * 1024, 16 << 20, 1 << 31] {
            let rounds = final_drain_rounds(bytes);
            assert!(rounds * DRAIN_CAP >= records(bytes), "{bytes}: {rounds} rounds too few");
            assert!((rounds - 1) * DRAIN_CAP <= records(bytes), "{bytes}: {rounds} too many");
        }
        assert_eq!(final_drain_rounds(4096), 1);
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
