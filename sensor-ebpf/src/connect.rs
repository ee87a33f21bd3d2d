//! connect4/connect6: the one place that runs in the connecting process's own context, so
//! the process record is taken here, for every TCP connect.
//!
//! A connection to a watched port gets its state in the socket's own storage at once. Any
//! other connect() only leaves its record in this CPU's `CONNECTING` slot (no allocation:
//! this runs for every connection the host makes): the SYN leaves from inside the same
//! connect() call, and if a NAT rule on this host sent it to a watched port (a Kubernetes
//! Service whose port differs from its targetPort), the egress hook takes the record from
//! the slot, if the socket's cookie says it is this socket's.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    programs::SockAddrContext,
    EbpfContext,
};
use sensor_common::{
    event::{conn_flags, ProcRecord, COMM_LEN},
    limits::Stat,
    verdict::Role,
};

use crate::{counters, maps, sockets};

const IPPROTO_TCP: u32 = 6;

#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sock_addr = unsafe { &*ctx.sock_addr };
    // Only a client's connect() has anything to record. The role test is read-only data:
    // the verifier drops this early return when clients are watched.
    if sock_addr.protocol != IPPROTO_TCP || !maps::role_enabled(Role::Client) {
        return;
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sock_addr.user_port as u16);
    if maps::port_slot(port).is_none() {
        return leave_in_slot(ctx);
    }
    // SAFETY: `sk` of a connect hook's context is the connecting socket.
    let sk = unsafe { sock_addr.__bindgen_anon_1.sk };
    if sk.is_null() {
        return;
    }
    let Some(state) = sockets::create(sk) else {
        counters::stat(Stat::TrackFailed);
        return;
    };
    // Written in place: no copy through the stack. A socket connecting again after a
    // failed attempt starts over.
    fill(&mut state.proc_);
    state.start(conn_flags::PROC_KNOWN);
    counters::stat(Stat::ConnectionsTracked);
}

/// Any other connect(): its record, named by the socket's cookie, in this CPU's slot.
///
/// On a preemptible kernel another task's connect() can run on this CPU in the middle of
/// this one. Writers are therefore exclusive: one that does not find itself alone in the
/// slot writes nothing (its SYN will not find its cookie: process unknown, never mixed
/// with another's). The cookie is written first, so a SYN's program that this write
/// interrupts no longer finds its own cookie when it checks again after its copy.
#[inline(always)]
fn leave_in_slot(ctx: &SockAddrContext) {
    use core::ptr::{addr_of_mut, read_volatile, write_volatile};
    let Some(slot) = maps::CONNECTING.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, aligned, valid while the program runs; migration is
    // disabled. The helpers are valid in cgroup_sock_addr programs.
    unsafe {
        let writers = addr_of_mut!((*slot).writers);
        counters::atomic_add(writers, 1);
        if read_volatile(writers) == 1 {
            write_volatile(addr_of_mut!((*slot).cookie), bpf_get_socket_cookie(ctx.as_ptr()));
            write_volatile(addr_of_mut!((*slot).pid_tgid), bpf_get_current_pid_tgid());
            write_volatile(addr_of_mut!((*slot).uid_gid), bpf_get_current_uid_gid());
            bpf_get_current_comm((*slot).comm.as_mut_ptr().cast(), COMM_LEN as u32);
        }
        counters::atomic_add(writers, u64::MAX);
    }
}

/// The current task's record, written in place.
#[inline(always)]
fn fill(p: &mut ProcRecord) {
    p.pid_tgid = bpf_get_current_pid_tgid();
    p.uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper calls valid in cgroup_sock_addr programs; `comm` has room for
    // COMM_LEN bytes.
    unsafe {
        p.cgroup_id = bpf_get_current_cgroup_id();
        p.connect_ns = bpf_ktime_get_ns();
        bpf_get_current_comm(p.comm.as_mut_ptr().cast(), COMM_LEN as u32);
    }
}
