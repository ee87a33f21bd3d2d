//! One connection's state as the packet hooks see it: assembling client messages into the
//! capture buffer, feeding the shared `Tracker`, and carrying out its effects (count the
//! verdict, report the session, report authentication, forget the connection).

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::SkBuffContext,
    EbpfContext,
};
use aya_log_ebpf::info;
use sensor_common::{
    assembly::Placement,
    claim::Claim,
    event::{
        conn_flags, event_flags, AuthEvent, Capture, ConnState, ProcRecord, SessionEvent, COMM_LEN,
        EVENT_AUTH, EVENT_SESSION,
    },
    limits::{Stat, CAPTURE_LEN, PREFIX_LEN},
    pgwire::{classify_first, classify_tls_record, FirstMessage, TlsRecord, TLS_PEEK_LEN},
    tracker::{effect, AuthMethod, Phase},
    verdict::{Role, UnknownReason, Verdict},
};

use crate::{counters, maps, packet, sockets, tls_probe};

/// Which way the current packet goes between the session's client and server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

pub struct Flow<'a> {
    pub ctx: &'a SkBuffContext,
    /// The packet's socket (a full one): its storage holds `state`.
    pub sk: *mut bpf_sock,
    /// Which end of the session this socket is.
    pub role: Role,
    /// Socket cookie: names the session's capture and its events.
    pub cookie: u64,
    pub state: &'a mut ConnState,
}

impl<'a> Flow<'a> {
    #[inline(always)]
    pub fn new(
        ctx: &'a SkBuffContext,
        sk: *mut bpf_sock,
        role: Role,
        state: &'a mut ConnState,
    ) -> Flow<'a> {
        // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        Flow { ctx, sk, role, cookie, state }
    }

    /// Client payload at stream offset `rel` (bytes from `payload_offset`, `len` of them).
    #[inline(always)]
    pub fn client_data(&mut self, rel: u32, payload_offset: u32, len: u32) {
        let pending = self.state.flags & conn_flags::EVENT_PENDING != 0;
        // The reply to an authentication request is checked first, even while the startup
        // evidence is incomplete (a hole never filled): the password must not be missed.
        if self.state.tracker.phase() == Phase::AwaitPassword {
            // Only the type byte of the client's reply is read: never the secret itself.
            if let Some(skip) = self.state.message.reply_type_offset(rel, len) {
                if let Some(msg_type) = packet::payload_byte(self.ctx, payload_offset + skip) {
                    let e = self.state.tracker.client_auth_reply(msg_type);
                    self.apply(e);
                }
            }
        } else if self.state.tracker.wants_tls_record() {
            self.tls_record(rel, payload_offset, len);
        } else if self.state.tracker.wants_client_message() || pending {
            self.assemble(rel, payload_offset, len);
        }
    }

    /// The client's TLS record right after its ClientHello: only its header (and a clear
    /// alert's two bytes) is read. A segment that does not hold the record's start (a
    /// retransmit of earlier bytes) is passed over. Not inlined: its branches must not
    /// multiply the verifier's states on every other path of the packet programs.
    #[inline(never)]
    fn tls_record(&mut self, rel: u32, payload_offset: u32, len: u32) {
        let message = self.state.message;
        let at = message.start().wrapping_add(message.message_len());
        let skip = at.wrapping_sub(rel);
        if skip >= len {
            return;
        }
        let record = match packet::payload_array::<TLS_PEEK_LEN>(self.ctx, payload_offset + skip) {
            Some(peek) => classify_tls_record(&peek, TLS_PEEK_LEN),
            // Fewer than TLS_PEEK_LEN bytes here: not a whole clear alert.
            None => TlsRecord::Other,
        };
        let e = self.state.tracker.client_tls_record(record);
        self.apply(e);
    }

    /// Store the segment's part of the current message in the capture, then let the
    /// tracker decide. The capture may hold bytes past the message's end (a pipelining
    /// client); only the evidence length, never past the message, ever leaves the kernel.
    #[inline(always)]
    fn assemble(&mut self, rel: u32, payload_offset: u32, len: u32) {
        let Some(capture) = self.capture() else {
            info!(self.ctx, "capture evicted (too many sessions starting at once): unknown");
            return self.abandon(UnknownReason::CaptureEvicted, Stat::CapturesEvicted);
        };
        self.store(capture, rel, payload_offset, len);
        if self.state.tracker.wants_client_message() {
            self.classify(capture);
        }
        if self.state.flags & conn_flags::EVENT_PENDING != 0 && self.state.message.complete() {
            self.emit_session(capture);
        }
    }

    /// Copy the segment's bytes where the shared assembly rules put them.
    #[inline(always)]
    fn store(&mut self, capture: *mut Capture, rel: u32, payload_offset: u32, len: u32) {
        match self.state.message.place(rel, len) {
            Placement::Nothing => {}
            Placement::Append { skip, at, n } => {
                if self.copy_in(capture, at, payload_offset + skip, n) {
                    self.state.message.appended(n);
                }
            }
            Placement::AheadOfHole { skip, at, n } => {
                if self.copy_in(capture, at, payload_offset + skip, n) {
                    self.state.message.stored_ahead(at, n);
                }
            }
        }
    }

    /// Copy `n` payload bytes from `offset` to capture position `at` (< CAPTURE_LEN).
    #[inline(always)]
    fn copy_in(&self, capture: *mut Capture, at: u32, offset: u32, n: u32) -> bool {
        // SAFETY: the masked position is below CAPTURE_LEN and at most CAPTURE_LEN bytes are
        // copied, inside the 2 * CAPTURE_LEN buffer.
        let at = packet::opaque(at) & (CAPTURE_LEN as u32 - 1);
        let dst = unsafe { (*capture).bytes.as_mut_ptr().add(at as usize) };
        packet::load_masked::<{ CAPTURE_LEN as u32 - 1 }>(self.ctx, offset, dst, n)
    }

    #[inline(always)]
    fn classify(&mut self, capture: *mut Capture) {
        let mut prefix = [0u8; PREFIX_LEN];
        // SAFETY: the capture buffer is larger than PREFIX_LEN.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (*capture).bytes.as_ptr(),
                prefix.as_mut_ptr(),
                PREFIX_LEN,
            )
        };
        let first = classify_first(&prefix, self.state.message.prefix_avail());
        self.state.message.classified(first);
        // The client's own ClientHello leaving its host: its TLS library may have told the
        // uprobes whether it verifies the server. (On the server's end the client is
        // elsewhere, and an adopted connection has no connect record to check against.)
        if matches!(first, FirstMessage::TlsClientHello { .. }) {
            self.hello_verification();
        }
        let e = self.state.tracker.client_message(first);
        self.apply(e);
    }

    /// The client's ClientHello is leaving: tell the tracker what the client's TLS library
    /// announced for it. Not inlined (see `tls_record`).
    #[inline(never)]
    fn hello_verification(&mut self) {
        if self.role == Role::Client && self.state.flags & conn_flags::PROC_KNOWN != 0 {
            let verification = tls_probe::verification_for_hello(&self.state.proc_);
            self.state.tracker.client_verification(verification);
        }
    }

    /// The connection closed (FIN or RST from either side).
    #[inline(always)]
    pub fn closed(&mut self) {
        let partial = self.state.message.have() > 0 && self.state.tracker.wants_client_message();
        let e = self.state.tracker.closed(partial);
        self.apply(e);
    }

    /// The session cannot be followed further: count why, and let the tracker conclude.
    #[inline(always)]
    pub fn abandon(&mut self, reason: UnknownReason, stat: Stat) {
        counters::stat(stat);
        let e = self.state.tracker.abandon(reason);
        self.apply(e);
    }

    /// Carry out the tracker's effects, in order: count, report, forget. Inlined: most
    /// callers pass effects the compiler knows, and each copy keeps only what they need.
    #[inline(always)]
    pub fn apply(&mut self, effects: u8) {
        // The socket's two directions can run at once on two CPUs (the ingress hook runs
        // before the socket's lock is taken), and both may finish the session: one forgets
        // it, and its verdict is counted once even when the first to finish had none.
        let done = effects & effect::DONE != 0;
        if done {
            match sockets::claim_decision(self.state, effects & effect::VERDICT != 0) {
                Claim::All => {
                    counters::stat(Stat::ConnectionsForgotten);
                    if self.state.flags & conn_flags::NAT != 0 {
                        maps::nat_following_add(u64::MAX);
                        counters::stat(Stat::NatDecided);
                    }
                }
                Claim::VerdictOnly => {}
                Claim::Nothing => return,
            }
            sockets::settle(self.state);
        }
        if effects & effect::VERDICT != 0 {
            if let Some(verdict) = self.state.tracker.verdict() {
                let slot = self.state.port_slot as u32;
                counters::session(slot, self.role, verdict);
                if verdict.is_tls() {
                    counters::verification(slot, self.role, self.state.tracker.verification());
                }
                // Sessions with nothing wrong are counted only: no evidence to ship.
                if !verdict.counted_only() {
                    self.state.flags |= conn_flags::EVENT_PENDING;
                }
            }
        }
        let pending = self.state.flags & conn_flags::EVENT_PENDING != 0;
        if pending && effects & (effect::AUTH | effect::DONE) != 0 {
            // The session must be reported before its authentication (or before it is
            // forgotten), with whatever of its message was captured. Only looked up: a
            // capture created now would be empty. (`state` stays readable after its record
            // is removed: map memory is freed only after every program running has ended.)
            let capture = maps::CAPTURES.get_ptr_mut(self.cookie).unwrap_or(core::ptr::null_mut());
            self.emit_session(capture);
        }
        if effects & effect::AUTH != 0 {
            self.report_auth();
        }
        if done {
            // Both finishers remove it: this one may have created it after the other's
            // removal.
            let _ = maps::CAPTURES.remove(self.cookie);
        }
    }

    /// The capture buffer of this connection, created zeroed on first use. `None` when it
    /// held bytes and was evicted (they are gone), or when no memory is left.
    #[inline(always)]
    fn capture(&self) -> Option<*mut Capture> {
        if let Some(c) = maps::CAPTURES.get_ptr_mut(self.cookie) {
            return Some(c);
        }
        if self.state.message.have() > 0 {
            return None;
        }
        let zero = maps::ZERO_CAPTURE.get_ptr(0)?;
        // SAFETY: a valid map value pointer of the right type. Passed by reference on
        // purpose: by value would copy 1 KiB onto the 512-byte BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        maps::CAPTURES.insert(self.cookie, unsafe { &*zero }, 0).ok()?;
        maps::CAPTURES.get_ptr_mut(self.cookie)
    }

    /// Not inlined (it is called from several places); takes a plain pointer (null: no
    /// capture) because a BPF-to-BPF call passes each argument in one register.
    #[inline(never)]
    fn emit_session(&mut self, capture: *mut Capture) {
        self.state.flags &= !conn_flags::EVENT_PENDING;
        let Some(mut entry) = maps::EVENTS.reserve::<SessionEvent>(0) else {
            counters::stat(Stat::EventsLost);
            return;
        };
        let ev = entry.as_mut_ptr();
        // The client's end as its socket has it; the server's as on the wire; what the
        // client dialled as its socket has it (it differs from the wire under NAT).
        let ends = packet::socket_ends(self.sk);
        let (client_addr, client_family, client_port, dialled_addr, dialled_port) = match self.role
        {
            Role::Client => {
                let (local, family) = packet::socket_address::<false>(self.sk);
                let (remote, _) = packet::socket_address::<true>(self.sk);
                (local, family, ends.local_port, remote, ends.remote_port)
            }
            Role::Server => {
                let (remote, family) = packet::socket_address::<true>(self.sk);
                (remote, family, ends.remote_port, [0u8; 16], 0)
            }
        };
        let t = &self.state.tracker;
        let verdict = t.verdict().unwrap_or(Verdict::Unknown);
        let message = self.state.message;
        let mut flags = self.state.flags
            & (event_flags::PROC_KNOWN | event_flags::FAST_OPEN | event_flags::ADOPTED);
        if t.auth_follows() {
            flags |= event_flags::AUTH_FOLLOWS;
        }
        let mut captured_len = message.evidence_len(verdict);
        // SAFETY: `ev` points at a reserved, exclusively owned SessionEvent-sized record.
        unsafe {
            (*ev).kind = EVENT_SESSION;
            (*ev).cookie = self.cookie;
            (*ev).seen_ns = bpf_ktime_get_ns();
            copy_proc(&mut (*ev).proc_, &self.state.proc_);
            (*ev).client_addr = client_addr;
            (*ev).server_addr = self.state.server_addr;
            (*ev).dialled_addr = dialled_addr;
            (*ev).client_port = client_port;
            (*ev).server_port = self.state.server_port;
            (*ev).dialled_port = dialled_port;
            (*ev).client_family = client_family;
            (*ev).ip_version = self.state.ip_version;
            (*ev).role = self.role as u8;
            (*ev).verdict = verdict as u8;
            (*ev).reason = t.reason_code();
            (*ev).requests = t.requests();
            (*ev).answers = t.answers();
            (*ev).verification = t.verification_code();
            (*ev).tls_alert = t.tls_alert_code();
            (*ev)._pad = 0;
            (*ev).message_len = message.message_len();
            if capture.is_null() {
                captured_len = 0;
            } else {
                copy_exact((*capture).bytes.as_ptr(), (*ev).captured.as_mut_ptr(), captured_len);
            }
            (*ev).captured_len = captured_len;
            (*ev).flags = flags;
        }
        entry.submit(0);
        counters::stat(Stat::EventsSent);
    }

    #[inline(never)]
    fn report_auth(&mut self) {
        let t = &self.state.tracker;
        counters::stat(Stat::AuthSeen);
        if t.password_sent() {
            match t.auth() {
                AuthMethod::Cleartext => counters::stat(Stat::PasswordsCleartext),
                AuthMethod::Md5 => counters::stat(Stat::PasswordsMd5),
                _ => {}
            }
        }
        let Some(mut entry) = maps::EVENTS.reserve::<AuthEvent>(0) else {
            counters::stat(Stat::AuthEventsLost);
            return;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points at a reserved, exclusively owned AuthEvent-sized record.
        unsafe {
            (*ev).kind = EVENT_AUTH;
            (*ev)._pad = 0;
            (*ev).cookie = self.cookie;
            (*ev).seen_ns = bpf_ktime_get_ns();
            (*ev).method = t.auth_code();
            (*ev).password_sent = t.password_sent() as u8;
            (*ev)._pad2 = [0; 6];
        }
        entry.submit(0);
        counters::stat(Stat::EventsSent);
    }
}

/// Copy a process record word by word. A plain assignment becomes a call to the
/// byte-by-byte `memcpy` (48 iterations the verifier walks on every path into
/// `emit_session`; older verifiers run out of budget on it).
#[inline(always)]
fn copy_proc(dst: &mut ProcRecord, src: &ProcRecord) {
    dst.pid_tgid = src.pid_tgid;
    dst.uid_gid = src.uid_gid;
    dst.cgroup_id = src.cgroup_id;
    dst.connect_ns = src.connect_ns;
    copy_comm(&mut dst.comm, &src.comm);
}

/// Copy a command name as two words (see `copy_proc`). Both arrays sit at 8-aligned
/// offsets of `repr(C)` records.
#[inline(always)]
fn copy_comm(dst: &mut [u8; COMM_LEN], src: &[u8; COMM_LEN]) {
    let (d, s) = (dst.as_mut_ptr().cast::<u64>(), src.as_ptr().cast::<u64>());
    // SAFETY: 16 bytes each, 8-aligned: two aligned words.
    unsafe {
        core::ptr::write(d, core::ptr::read(s));
        core::ptr::write(d.add(1), core::ptr::read(s.add(1)));
    }
}

/// Copy exactly `len` (<= CAPTURE_LEN) bytes, so no byte past `len` (a pipelined message,
/// the cancel key) reaches the ring buffer; the record's bytes past `len` are left as they
/// are (`SessionEvent::captured` says they are undefined; they only ever held earlier
/// events' evidence).
///
/// One helper call, no loop: a copy loop that stops at `len` forks the verifier's state at
/// every word, for each way into `emit_session`, which exhausts its budget.
#[inline(always)]
unsafe fn copy_exact(src: *const u8, dst: *mut u8, len: u32) {
    if len == 0 {
        return;
    }
    // 1 ..= CAPTURE_LEN, in a form every verifier follows (older ones lose a `min` the
    // compiler rewrites); `len` never exceeds CAPTURE_LEN, so the mask changes nothing.
    let n = (packet::opaque(len).wrapping_sub(1) & (CAPTURE_LEN as u32 - 1)) + 1;
    // SAFETY: both buffers hold CAPTURE_LEN bytes and n <= CAPTURE_LEN. A failed read leaves
    // the bytes undefined, as documented for bytes past `captured_len`.
    unsafe {
        bpf_probe_read_kernel(dst.cast(), n, src.cast());
    }
}
