//! Draining the kernel's ring buffer without blocking the runtime: the ring buffer fd is
//! registered with tokio and read whenever the kernel signals data.

use std::{io, mem::size_of, ptr};

use aya::maps::{MapData, RingBuf};
use sensor_common::event::SessionEvent;
use tokio::io::{unix::AsyncFd, Interest};

pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records too short to be a `SessionEvent` (a kernel/user version mismatch).
    pub malformed: u64,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as it lives, and the AsyncFd owns
        // the RingBuf, so the fd stays open and the same until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(EventStream { ring, malformed: 0 })
    }

    /// Wait until the kernel has written events, then move all available ones to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<SessionEvent>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        self.malformed += drain(ring, out);
        guard.clear_ready();
        Ok(())
    }

    /// Take whatever is in the ring buffer now, without waiting (used at shutdown).
    pub fn drain_now(&mut self, out: &mut Vec<SessionEvent>) {
        self.malformed += drain(self.ring.get_mut(), out);
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<SessionEvent>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(ev) => out.push(ev),
            None => malformed += 1,
        }
    }
    malformed
}

/// Copy a ring buffer record into an owned event; `None` if it is too short.
pub fn decode(bytes: &[u8]) -> Option<SessionEvent> {
    if bytes.len() < size_of::<SessionEvent>() {
        return None;
    }
    // SAFETY: length checked; SessionEvent is plain #[repr(C)] data valid for any bytes,
    // and read_unaligned copes with the record's alignment.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<SessionEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_rejected_not_read() {
        assert!(decode(&[0u8; 16]).is_none());
        let mut bytes = vec![0u8; size_of::<SessionEvent>()];
        bytes[0] = 42; // cookie, little-endian
        assert_eq!(decode(&bytes).unwrap().cookie, 42);
    }
}
