//! Uprobes on the client's OpenSSL (attached by the agent to every copy of the library it
//! finds, by exported symbol): they record what each context and SSL was set to verify,
//! and announce each handshake on its thread. The egress hook takes the announcement when
//! the ClientHello goes out ([`verification_for_hello`]). Only pointers, modes and thread
//! ids are read: never a certificate, key or buffer.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use sensor_common::{
    event::ProcRecord,
    limits::Stat,
    tls::{Handshake, LibraryMode, ObjectKey, ANNOUNCED},
    verdict::Verification,
};

use crate::{counters, maps};

/// Set by the agent at load: 1 where cgroup_skb programs may read the current thread
/// (`bpf_get_current_pid_tgid`; not on 6.1), 0 elsewhere. Read-only data fixed at load, so
/// the verifier drops the path the kernel does not allow.
#[unsafe(no_mangle)]
static TLS_LINK_BY_SENDING_THREAD: u8 = 0;

#[inline(always)]
fn by_sending_thread() -> bool {
    // SAFETY: a read of a read-only global; volatile so the compiler keeps the load the
    // agent's value is patched into.
    unsafe { core::ptr::read_volatile(&TLS_LINK_BY_SENDING_THREAD) != 0 }
}

/// `SSL_CTX_new`/`SSL_CTX_new_ex` returned `ctx`: a new context verifies nothing. (Also
/// clears what an earlier context at the same address was set to.)
#[inline(always)]
pub fn ctx_created(ctx: &RetProbeContext) {
    let addr: u64 = ctx.ret();
    if addr != 0 {
        let key = ObjectKey::new(bpf_get_current_pid_tgid(), addr);
        let _ = maps::TLS_CONTEXTS.insert(key, LibraryMode::NoneAtAll as u8, 0);
    }
}

/// `SSL_CTX_set_verify(ctx, mode, callback)`.
#[inline(always)]
pub fn ctx_set_verify(ctx: &ProbeContext) {
    record_set_verify(ctx, &maps::TLS_CONTEXTS);
}

/// A `*_set_verify(object, mode, callback)` call: the object's mode, per process.
#[inline(always)]
fn record_set_verify(ctx: &ProbeContext, modes: &LruHashMap<ObjectKey, u8>) {
    let (Some(addr), Some(mode), Some(callback)) =
        (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u64>(2))
    else {
        return;
    };
    let key = ObjectKey::new(bpf_get_current_pid_tgid(), addr);
    let _ = modes.insert(key, LibraryMode::from_call(mode, callback) as u8, 0);
}

/// `SSL_new(ctx)` entry: remember the context until it returns the SSL.
#[inline(always)]
pub fn ssl_new(ctx: &ProbeContext) {
    if let Some(addr) = ctx.arg::<u64>(0) {
        let _ = maps::TLS_NEW_SSL.insert(bpf_get_current_pid_tgid(), addr, 0);
    }
}

/// `SSL_new` returned `ssl`: it starts with its context's mode, if that is known.
#[inline(always)]
pub fn ssl_created(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a plain copy out of a map value.
    let Some(parent) = (unsafe { maps::TLS_NEW_SSL.get(pid_tgid) }).copied() else { return };
    let _ = maps::TLS_NEW_SSL.remove(pid_tgid);
    let addr: u64 = ctx.ret();
    if addr == 0 {
        return;
    }
    let key = ObjectKey::new(pid_tgid, addr);
    // SAFETY: a plain copy out of a map value.
    match unsafe { maps::TLS_CONTEXTS.get(ObjectKey::new(pid_tgid, parent)) }.copied() {
        Some(mode) => {
            let _ = maps::TLS_SSLS.insert(key, mode, 0);
        }
        // The context predates the sensor: whatever an earlier SSL at this address was set
        // to must not be taken for this one's.
        None => {
            let _ = maps::TLS_SSLS.remove(key);
        }
    }
}

/// `SSL_set_verify(ssl, mode, callback)`.
#[inline(always)]
pub fn ssl_set_verify(ctx: &ProbeContext) {
    record_set_verify(ctx, &maps::TLS_SSLS);
}

/// `SSL_connect(ssl)`/`SSL_do_handshake(ssl)` entry: the first call on an SSL writes its
/// ClientHello from this thread; announce it there with the SSL's mode.
#[inline(always)]
pub fn handshake(ctx: &ProbeContext) {
    let Some(addr) = ctx.arg::<u64>(0) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = ObjectKey::new(pid_tgid, addr);
    let mode = match maps::TLS_SSLS.get_ptr_mut(key) {
        Some(stored) => {
            // SAFETY: a valid map value pointer.
            let value = unsafe { *stored };
            if value & ANNOUNCED != 0 {
                return;
            }
            // SAFETY: as above.
            unsafe { *stored = value | ANNOUNCED };
            LibraryMode::from_stored(value)
        }
        None => LibraryMode::NotSeen,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a plain copy out of a map value.
    let old = unsafe { maps::TLS_HANDSHAKES.get(pid_tgid) }.copied();
    let announced = Handshake::announce(old.as_ref(), mode, now);
    let _ = maps::TLS_HANDSHAKES.insert(pid_tgid, announced, 0);
    counters::stat(Stat::TlsHandshakesSeen);
}

/// The verification of the ClientHello going out now, on a connection whose connect()
/// was recorded as `proc_`: the announcement of the sending thread (where the kernel lets
/// the packet hook read it; else of the thread that called connect()), if that thread is in
/// the connecting process and announced after the connect. Taken (removed) either way.
#[inline(always)]
pub fn verification_for_hello(proc_: &ProcRecord) -> Verification {
    let thread = if by_sending_thread() {
        let current = bpf_get_current_pid_tgid();
        // A softirq send (a retransmit) runs in whatever task it interrupted: only the
        // connecting process's own threads are believed.
        if (current >> 32) as u32 != proc_.tgid() {
            return Verification::Unknown;
        }
        current
    } else {
        proc_.pid_tgid
    };
    // SAFETY: a plain copy out of a map value.
    let Some(announced) = (unsafe { maps::TLS_HANDSHAKES.get(thread) }).copied() else {
        return Verification::Unknown;
    };
    let _ = maps::TLS_HANDSHAKES.remove(thread);
    let (verification, ambiguous) = announced.judge(proc_.connect_ns);
    if ambiguous {
        counters::stat(Stat::TlsVerificationAmbiguous);
    }
    verification
}
