//! cgroup_skb egress: the client's bytes to a watched port. Filters by port first (one array
//! lookup); finds the connection by socket cookie, or adopts one opened before the sensor
//! started when the socket proves it has sent nothing yet; then hands the bytes to the flow.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, programs::SkBuffContext, EbpfContext};
use sensor_common::{
    event::{conn_flags, ConnState, ProcRecord},
    limits::Stat,
    verdict::UnknownReason,
};

use crate::{
    counters,
    flow::{Direction, Flow},
    maps,
    packet::{self, TcpHeader, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn on_egress(ctx: &SkBuffContext) {
    let Some((l4, ports)) = packet::tcp_ports(ctx) else { return };
    if !maps::is_watched(ports.dst) {
        return;
    }
    counters::stat(Stat::PacketsInspected);
    let Some(tcp) = packet::tcp_header(ctx, l4) else { return };

    // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let state = match maps::CONNECTIONS.get_ptr_mut(cookie) {
        Some(state) => state,
        None => match adopt(ctx, cookie, &tcp) {
            Some(state) => state,
            None => {
                counters::stat(Stat::PacketsUntracked);
                return;
            }
        },
    };
    // SAFETY: from a successful lookup; the socket's packets are serialised by its lock.
    let state: &mut ConnState = unsafe { &mut *state };
    let syn = tcp.flags & TCP_SYN != 0;
    if syn {
        // Byte 0 of the stream follows the SYN's sequence number (also with Fast Open data).
        state.client_base = tcp.seq.wrapping_add(1);
        state.flags |= conn_flags::CLIENT_BASE;
        if tcp.payload_len > 0 {
            state.flags |= conn_flags::FAST_OPEN;
        }
    }
    let mut flow = Flow { ctx, l4, ports, direction: Direction::ClientToServer, cookie, state };
    if tcp.payload_len > 0 {
        if flow.state.flags & conn_flags::CLIENT_BASE == 0 && !prove_start(ctx, &tcp, flow.state) {
            // The SYN went by unseen and the socket cannot prove this is byte 0: never guess.
            flow.finish_unknown(UnknownReason::StartNotSeen, Stat::PacketsUntracked);
            return;
        }
        let rel = if syn { 0 } else { tcp.seq.wrapping_sub(flow.state.client_base) };
        flow.client_data(rel, tcp.payload_offset, tcp.payload_len);
    }
    if tcp.flags & (TCP_FIN | TCP_RST) != 0 {
        flow.closed();
    }
}

/// Byte 0 is proven when the socket has had no data acknowledged and this segment starts at
/// its oldest unacknowledged byte. `bytes_acked` counts the SYN's sequence number too, so
/// "no data" is at most 1. Also learns the server's byte 0 if nothing came from it yet.
#[inline(always)]
fn prove_start(ctx: &SkBuffContext, tcp: &TcpHeader, state: &mut ConnState) -> bool {
    let Some(sock) = packet::tcp_sock(ctx) else { return false };
    if sock.bytes_acked > 1 || tcp.seq != sock.snd_una {
        return false;
    }
    state.client_base = tcp.seq;
    state.flags |= conn_flags::CLIENT_BASE;
    if sock.bytes_received == 0 && state.flags & conn_flags::SERVER_BASE == 0 {
        state.server_base = sock.rcv_nxt;
        state.flags |= conn_flags::SERVER_BASE;
    }
    true
}

/// A connection with no connect record (opened before the sensor started, or its record
/// was evicted): track it only if this data segment provably starts the stream.
#[inline(always)]
fn adopt(ctx: &SkBuffContext, cookie: u64, tcp: &TcpHeader) -> Option<*mut ConnState> {
    if tcp.payload_len == 0 || tcp.flags & TCP_SYN != 0 {
        return None;
    }
    let mut state = ConnState::new(ProcRecord::EMPTY, conn_flags::ADOPTED);
    if !prove_start(ctx, tcp, &mut state) {
        return None;
    }
    maps::CONNECTIONS.insert(cookie, state, 0).ok()?;
    counters::stat(Stat::ConnectionsAdopted);
    maps::CONNECTIONS.get_ptr_mut(cookie)
}
