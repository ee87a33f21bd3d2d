//! cgroup_skb egress: the client's bytes to a watched port. Filters by port first (one array
//! lookup), then finds the connection's state by socket cookie; remembers the SYN's sequence
//! number, and on the first data segment classifies, counts, emits one event and forgets the
//! connection (its verdict is final, so later packets cost one failed lookup).

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SkBuffContext,
    EbpfContext,
};
use sensor_common::{
    event::{event_flags, ConnState, ProcRecord, SessionEvent, FLAG_SYN_SEEN},
    limits::{Stat, CAPTURE_LEN, PREFIX_LEN},
    pgwire::{classify_first, FirstMessage},
    verdict::{Role, UnknownReason, Verdict},
};

use crate::{
    counters, maps,
    packet::{self, Ports, L4, TCP_SYN},
};

/// Room for the classifier's prefix, rounded up to a power of two for `load_masked`.
const PREFIX_ROOM: usize = 32;
const _: () = assert!(PREFIX_ROOM >= PREFIX_LEN && PREFIX_ROOM.is_power_of_two());
const _: () = assert!(CAPTURE_LEN.is_power_of_two());

#[repr(C)]
struct Prefix {
    bytes: [u8; PREFIX_LEN],
    _room: [u8; PREFIX_ROOM - PREFIX_LEN],
}

#[inline(always)]
pub fn on_egress(ctx: &SkBuffContext) {
    let Some(l4) = packet::locate_tcp(ctx) else { return };
    let Some(ports) = packet::ports(ctx, l4) else { return };
    if !maps::is_watched(ports.dst) {
        return;
    }
    counters::stat(Stat::PacketsInspected);

    // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(state) = maps::CONNECTIONS.get_ptr_mut(cookie) else {
        counters::stat(Stat::PacketsUntracked);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; this CPU owns the packet's socket.
    let state: &mut ConnState = unsafe { &mut *state };
    let Some(tcp) = packet::tcp_header(ctx, l4) else { return };
    let payload_len = ctx.len().saturating_sub(tcp.payload_offset);

    let mut flags = event_flags::PROC_KNOWN;
    if tcp.flags & TCP_SYN != 0 {
        state.isn = tcp.seq;
        state.flags |= FLAG_SYN_SEEN;
        if payload_len == 0 {
            return;
        }
        // TCP Fast Open: the SYN itself carries byte 0 of the stream.
        flags |= event_flags::FAST_OPEN;
    } else if payload_len == 0 {
        return;
    }

    // Byte 0 is proven only when the SYN was seen and this segment starts right after it.
    let start = if state.flags & FLAG_SYN_SEEN == 0 {
        Err(UnknownReason::StartNotSeen)
    } else if flags & event_flags::FAST_OPEN == 0 && tcp.seq != state.isn.wrapping_add(1) {
        Err(UnknownReason::SequenceGap)
    } else {
        Ok(())
    };
    let proc_ = state.proc_;
    // The verdict is final from here on: stop tracking the connection.
    let _ = maps::CONNECTIONS.remove(cookie);

    let session = Session {
        ctx,
        l4,
        ports,
        cookie,
        proc_,
        flags,
        payload_offset: tcp.payload_offset,
        payload_len,
    };
    match start {
        Ok(()) => session.classify_and_report(),
        Err(reason) => session.report(Verdict::Unknown, reason, 0),
    }
}

struct Session<'a> {
    ctx: &'a SkBuffContext,
    l4: L4,
    ports: Ports,
    cookie: u64,
    proc_: ProcRecord,
    flags: u32,
    payload_offset: u32,
    payload_len: u32,
}

impl Session<'_> {
    #[inline(always)]
    fn classify_and_report(self) {
        let mut prefix = Prefix { bytes: [0; PREFIX_LEN], _room: [0; PREFIX_ROOM - PREFIX_LEN] };
        let avail = self.payload_len.min(PREFIX_LEN as u32);
        let loaded = packet::load_masked::<{ PREFIX_ROOM as u32 - 1 }>(
            self.ctx,
            self.payload_offset,
            (&mut prefix as *mut Prefix).cast(),
            avail,
        );
        let first = if loaded {
            classify_first(&prefix.bytes, avail as usize)
        } else {
            FirstMessage::NeedMore
        };

        // Copy no more than the first message itself: whatever follows it in the segment is
        // not the sensor's business (and could be a password from a pipelining client).
        let capture = match first {
            FirstMessage::TlsClientHello => self.payload_len,
            FirstMessage::Unknown => avail,
            other => match other.message_len() {
                Some(len) => len.min(self.payload_len),
                None => 0,
            },
        };
        self.report(first.verdict(), first.unknown_reason(), capture)
    }

    #[inline(always)]
    fn report(self, verdict: Verdict, reason: UnknownReason, capture: u32) {
        // Counted before the event: the count stays exact when the ring buffer is full.
        counters::session(Role::Client, verdict);

        let Some(mut entry) = maps::EVENTS.reserve::<SessionEvent>(0) else {
            counters::stat(Stat::EventsLost);
            return;
        };
        let ev = entry.as_mut_ptr();
        let (src_addr, dst_addr) = packet::addresses(self.ctx, self.l4);
        let mut flags = self.flags;
        let mut captured_len = capture;
        if captured_len > CAPTURE_LEN as u32 {
            captured_len = CAPTURE_LEN as u32;
            flags |= event_flags::TRUNCATED;
        }
        // SAFETY: `ev` points at a reserved, exclusively owned SessionEvent-sized record.
        unsafe {
            (*ev).cookie = self.cookie;
            (*ev).seen_ns = bpf_ktime_get_ns();
            (*ev).proc_ = self.proc_;
            (*ev).src_addr = src_addr;
            (*ev).dst_addr = dst_addr;
            (*ev).src_port = self.ports.src;
            (*ev).dst_port = self.ports.dst;
            (*ev).ip_version = self.l4.ip_version;
            (*ev).role = Role::Client as u8;
            (*ev).verdict = verdict as u8;
            (*ev).reason = reason as u8;
            (*ev).segment_len = self.payload_len;
            (*ev)._pad = 0;
            let captured = (*ev).captured.as_mut_ptr();
            if !packet::load_masked::<{ CAPTURE_LEN as u32 - 1 }>(
                self.ctx,
                self.payload_offset,
                captured,
                captured_len,
            ) {
                captured_len = 0;
            }
            (*ev).captured_len = captured_len;
            (*ev).flags = flags;
        }
        entry.submit(0);
        counters::stat(Stat::EventsSent);
    }
}
