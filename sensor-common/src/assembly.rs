//! Where a client message's bytes land in the kernel's fixed capture buffer, as pure
//! arithmetic: segments arrive in any order, retransmitted, overlapping, or ahead of a hole
//! left by a lost segment. The kernel copies the bytes [`MessageAssembly::place`] names and
//! reports back what it stored; `sensor analyze` drives the same struct over a reassembled
//! stream. Every offset rule (the request skipped, the evidence kept, where the client's
//! reply to an authentication request lies) is here once.

use crate::{
    limits::{CAPTURE_LEN, PREFIX_LEN},
    pgwire::{capture_limit, FirstMessage, CANCEL_EVIDENCE_LEN, REQUEST_LEN},
    verdict::Verdict,
};

/// The client message being assembled. 20 bytes, `Copy`, kept per connection in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MessageAssembly {
    /// Client stream offset where the message starts.
    start: u32,
    /// Bytes of the message held contiguously from its start.
    have: u32,
    /// The message's length from its header, once known (0 before).
    len: u32,
    /// One run of bytes received ahead of a hole, as offsets from `start`; empty when
    /// `ahead_end == 0`.
    ahead_start: u32,
    ahead_end: u32,
}

/// What to do with one segment's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Nothing in it is new, or it cannot be kept.
    Nothing,
    /// Copy `n` bytes from payload offset `skip` to capture position `at`, which continues
    /// the contiguous bytes; then call [`MessageAssembly::appended`].
    Append { skip: u32, at: u32, n: u32 },
    /// Copy `n` bytes from payload offset `skip` to capture position `at`, ahead of a hole;
    /// then call [`MessageAssembly::stored_ahead`].
    AheadOfHole { skip: u32, at: u32, n: u32 },
}

impl MessageAssembly {
    pub const NEW: MessageAssembly =
        MessageAssembly { start: 0, have: 0, len: 0, ahead_start: 0, ahead_end: 0 };

    /// Client stream offset where the message starts.
    pub const fn start(&self) -> u32 {
        self.start
    }

    /// Contiguous bytes held from the message's start.
    pub const fn have(&self) -> u32 {
        self.have
    }

    /// The message's length from its header (0 while unknown).
    pub const fn message_len(&self) -> u32 {
        self.len
    }

    /// How many of the held bytes the classifier may look at.
    pub const fn prefix_avail(&self) -> usize {
        if self.have > PREFIX_LEN as u32 {
            PREFIX_LEN
        } else {
            self.have as usize
        }
    }

    /// Every byte that may be kept of this message is held.
    pub const fn complete(&self) -> bool {
        self.have >= capture_limit(self.len)
    }

    /// Where a segment of `len` payload bytes at client stream offset `rel` goes. Pure: the
    /// caller copies, then reports what it stored.
    #[inline(always)]
    pub fn place(&self, rel: u32, len: u32) -> Placement {
        let cap = CAPTURE_LEN as u32;
        let mut skip = 0;
        let mut len = len;
        // A segment may begin before the message (a retransmission spanning the previous
        // message): drop its head.
        let mut pos = rel.wrapping_sub(self.start);
        if pos > u32::MAX / 2 {
            let before = pos.wrapping_neg();
            if before >= len {
                return Placement::Nothing;
            }
            skip = before;
            len -= before;
            pos = 0;
        }
        let have = self.have;
        if pos > have {
            // Ahead of a hole: keep it if it forms (or touches) the single run tracked.
            let end = pos.saturating_add(len);
            let (run_start, run_end) = (self.ahead_start, self.ahead_end);
            let joins = run_end == 0 || (pos <= run_end && end >= run_start);
            if pos >= cap || !joins {
                return Placement::Nothing;
            }
            let n = if len > cap - pos { cap - pos } else { len };
            return Placement::AheadOfHole { skip, at: pos, n };
        }
        let already = have - pos;
        if have >= cap || already >= len {
            return Placement::Nothing; // everything here is already held
        }
        let mut n = len - already;
        if n > cap - have {
            n = cap - have;
        }
        Placement::Append { skip: skip + already, at: have, n }
    }

    /// `n` bytes were appended at `have`. When that fills the hole, the run ahead joins.
    #[inline(always)]
    pub fn appended(&mut self, n: u32) {
        let mut have = self.have + n;
        if self.ahead_end != 0 && have >= self.ahead_start {
            if self.ahead_end > have {
                have = self.ahead_end;
            }
            self.ahead_start = 0;
            self.ahead_end = 0;
        }
        self.have = have;
    }

    /// `n` bytes were stored at `at`, ahead of the hole.
    #[inline(always)]
    pub fn stored_ahead(&mut self, at: u32, n: u32) {
        let (run_start, run_end) = (self.ahead_start, self.ahead_end);
        self.ahead_start = if run_end == 0 || at < run_start { at } else { run_start };
        let end = at + n;
        self.ahead_end = if end > run_end { end } else { run_end };
    }

    /// The classifier read `first` from the held bytes: remember its length, and when it is
    /// a complete SSLRequest/GSSENCRequest start the client's next message right after it
    /// (the server's one-byte answer comes between; whatever the tracker then decides, the
    /// next client bytes are a new message).
    #[inline(always)]
    pub fn classified(&mut self, first: FirstMessage) {
        if first.is_encryption_request() {
            *self = MessageAssembly { start: self.start.wrapping_add(REQUEST_LEN), ..Self::NEW };
        } else if let Some(len) = first.message_len() {
            self.len = len;
        }
    }

    /// How many bytes of this message leave as evidence once `verdict` is decided: what is
    /// held, never past the message's own end, at most `CAPTURE_LEN`, and for a
    /// CancelRequest only its header (the rest is the backend's secret key).
    #[inline(always)]
    pub const fn evidence_len(&self, verdict: Verdict) -> u32 {
        let limit = capture_limit(self.len);
        let mut n = if self.have < limit { self.have } else { limit };
        if n > CAPTURE_LEN as u32 {
            n = CAPTURE_LEN as u32;
        }
        if matches!(verdict, Verdict::Cancel) && n > CANCEL_EVIDENCE_LEN {
            n = CANCEL_EVIDENCE_LEN;
        }
        // A ClientHello says nothing a reader needs (the alert and the verification do).
        if verdict.is_tls() {
            n = 0;
        }
        n
    }

    /// Where, in a segment of `len` bytes at client stream offset `rel`, the first byte after
    /// this message lies: the type byte of the client's reply to an authentication request.
    /// Only that byte is ever read, never the secret after it.
    #[inline(always)]
    pub const fn reply_type_offset(&self, rel: u32, len: u32) -> Option<u32> {
        let skip = self.start.wrapping_add(self.len).wrapping_sub(rel);
        if skip < len {
            Some(skip)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
