//! connect4/connect6: the one place that runs in the connecting process's own context, so
//! the process record is taken here and stored per socket (by cookie) for the packet hooks.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
    },
    programs::SockAddrContext,
    EbpfContext,
};
use sensor_common::{
    event::{conn_flags, ConnState, ProcRecord, COMM_LEN},
    limits::Stat,
};

use crate::{counters, maps};

const IPPROTO_TCP: u32 = 6;

#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sock_addr = unsafe { &*ctx.sock_addr };
    if sock_addr.protocol != IPPROTO_TCP {
        return;
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sock_addr.user_port as u16);
    if !maps::is_watched(port) {
        return;
    }
    // SAFETY: plain helper calls valid in cgroup_sock_addr programs.
    let (cookie, cgroup_id, now) = unsafe {
        (bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_current_cgroup_id(), bpf_ktime_get_ns())
    };
    let proc_ = ProcRecord {
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        cgroup_id,
        connect_ns: now,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    let state = ConnState::new(proc_, conn_flags::PROC_KNOWN);
    match maps::CONNECTIONS.insert(cookie, state, 0) {
        Ok(()) => counters::stat(Stat::ConnectionsTracked),
        Err(_) => counters::stat(Stat::TrackFailed),
    }
}
