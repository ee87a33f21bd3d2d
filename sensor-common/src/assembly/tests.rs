use super::*;
use proptest::prelude::*;
use std::{vec, vec::Vec};

/// The kernel's side, simulated: a 2 * CAPTURE_LEN buffer filled as `place` says.
struct Sim {
    m: MessageAssembly,
    buf: Vec<u8>,
}

impl Sim {
    fn new() -> Self {
        Sim { m: MessageAssembly::NEW, buf: vec![0; 2 * CAPTURE_LEN] }
    }

    fn segment(&mut self, stream: &[u8], rel: u32, len: u32) {
        let payload = &stream[rel as usize..(rel + len) as usize];
        match self.m.place(rel, len) {
            Placement::Nothing => {}
            Placement::Append { skip, at, n } => {
                self.copy(payload, skip, at, n);
                self.m.appended(n);
            }
            Placement::AheadOfHole { skip, at, n } => {
                self.copy(payload, skip, at, n);
                self.m.stored_ahead(at, n);
            }
        }
    }

    fn copy(&mut self, payload: &[u8], skip: u32, at: u32, n: u32) {
        assert!(at < CAPTURE_LEN as u32, "a copy starts inside the capture");
        assert!(n <= CAPTURE_LEN as u32, "a copy fits the 2 * CAPTURE_LEN buffer");
        let (skip, at, n) = (skip as usize, at as usize, n as usize);
        self.buf[at..at + n].copy_from_slice(&payload[skip..skip + n]);
    }

    /// The held bytes, which must be the stream's bytes from the message's start.
    fn held(&self) -> &[u8] {
        &self.buf[..self.m.have() as usize]
    }
}

fn stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn in_order_segments_append() {
    let s = stream(100);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 40);
    sim.segment(&s, 40, 60);
    assert_eq!(sim.held(), &s[..]);
}

#[test]
fn a_lost_segment_is_joined_when_retransmitted() {
    let s = stream(100);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 30);
    sim.segment(&s, 60, 40); // ahead of the hole 30..60
    assert_eq!(sim.m.have(), 30);
    sim.segment(&s, 30, 30); // the retransmission fills it
    assert_eq!(sim.held(), &s[..]);
}

#[test]
fn a_second_run_ahead_of_another_hole_is_not_kept() {
    let s = stream(100);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 10);
    sim.segment(&s, 30, 10);
    assert_eq!(sim.m.place(60, 10), Placement::Nothing, "one run ahead of a hole at most");
}

#[test]
fn retransmissions_spanning_the_previous_message_keep_only_this_one() {
    let s = stream(100);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 8);
    sim.m.classified(FirstMessage::SslRequest);
    assert_eq!(sim.m.start(), REQUEST_LEN);
    // The client's next message, retransmitted together with the request's bytes.
    sim.segment(&s, 0, 50);
    assert_eq!(sim.m.have(), 42);
    assert_eq!(&sim.buf[..42], &s[8..50]);
}

#[test]
fn capture_stops_at_capture_len() {
    let s = stream(2000);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 1500);
    assert_eq!(sim.m.have(), CAPTURE_LEN as u32);
    assert_eq!(sim.m.place(1500, 500), Placement::Nothing);
}

#[test]
fn evidence_never_passes_the_message_and_cancel_keeps_its_header_only() {
    let s = stream(100);
    let mut sim = Sim::new();
    sim.segment(&s, 0, 100);
    sim.m.classified(FirstMessage::Startup { len: 60, minor: 0 });
    assert_eq!(sim.m.evidence_len(Verdict::Plaintext), 60);
    let mut cancel = Sim::new();
    cancel.segment(&s, 0, 16);
    cancel.m.classified(FirstMessage::CancelRequest { len: 16 });
    assert_eq!(cancel.m.evidence_len(Verdict::Cancel), CANCEL_EVIDENCE_LEN);
    // Before the length is known, only the classifier's prefix.
    let mut early = Sim::new();
    early.segment(&s, 0, 100);
    assert_eq!(early.m.evidence_len(Verdict::Unknown), PREFIX_LEN as u32);
}

#[test]
fn the_reply_type_byte_is_found_after_the_message() {
    let mut m = MessageAssembly::NEW;
    m.classified(FirstMessage::SslRequest);
    m.classified(FirstMessage::Startup { len: 40, minor: 0 });
    // The reply starts at stream offset 8 + 40 = 48.
    assert_eq!(m.reply_type_offset(48, 10), Some(0));
    assert_eq!(m.reply_type_offset(40, 10), Some(8));
    assert_eq!(m.reply_type_offset(40, 8), None);
    assert_eq!(m.reply_type_offset(60, 10), None, "past it: already gone by");
}

/// Cut `len` bytes into segments at the given cut points.
fn segments(len: usize, cuts: &[usize]) -> Vec<(u32, u32)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % len.max(1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0] as u32, (w[1] - w[0]) as u32)).collect()
}

proptest! {
    /// Whatever the order, duplicates and losses: the held bytes are the stream's bytes.
    #[test]
    fn held_bytes_are_always_the_streams(
        len in 1usize..1200,
        cuts in prop::collection::vec(0usize..1200, 0..12),
        order in prop::collection::vec(0usize..64, 0..40),
    ) {
        let s = stream(len);
        let segs = segments(len, &cuts);
        let mut sim = Sim::new();
        for i in order {
            let (rel, n) = segs[i % segs.len()];
            sim.segment(&s, rel, n);
            prop_assert_eq!(sim.held(), &s[..sim.m.have() as usize]);
            prop_assert!(sim.m.have() <= CAPTURE_LEN as u32);
        }
    }

    /// In order, with any retransmissions, or with one segment delayed past the others:
    /// everything up to CAPTURE_LEN is held.
    #[test]
    fn one_hole_at_a_time_loses_nothing(
        len in 1usize..1200,
        cuts in prop::collection::vec(0usize..1200, 0..12),
        delayed in 0usize..64,
        resent in 0usize..64,
    ) {
        let s = stream(len);
        let segs = segments(len, &cuts);
        let delayed = delayed % segs.len();
        let mut sim = Sim::new();
        for (i, &(rel, n)) in segs.iter().enumerate() {
            if i != delayed {
                sim.segment(&s, rel, n);
            }
            if i == resent % segs.len() {
                sim.segment(&s, rel, n);
            }
        }
        let (rel, n) = segs[delayed];
        sim.segment(&s, rel, n);
        let want = len.min(CAPTURE_LEN);
        prop_assert_eq!(sim.held(), &s[..want]);
    }
}
