//! cgroup_skb ingress: the server's bytes arriving on a client socket. Only connections the
//! egress side tracks are looked at; the server's one-byte answer to SSLRequest and its
//! first authentication message are read, nothing else.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, programs::SkBuffContext, EbpfContext};
use sensor_common::{event::conn_flags, limits::Stat, tracker::Phase};

use crate::{
    counters,
    flow::{Direction, Flow},
    maps,
    packet::{self, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn on_ingress(ctx: &SkBuffContext) {
    let Some((l4, ports)) = packet::tcp_ports(ctx) else { return };
    if !maps::is_watched(ports.src) {
        return;
    }
    counters::stat(Stat::PacketsInspected);
    // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(state) = maps::CONNECTIONS.get_ptr_mut(cookie) else { return };
    // SAFETY: from a successful lookup.
    let state = unsafe { &mut *state };
    let Some(tcp) = packet::tcp_header(ctx, l4) else { return };

    if tcp.flags & TCP_SYN != 0 {
        state.server_base = tcp.seq.wrapping_add(1);
        state.flags |= conn_flags::SERVER_BASE;
    } else if tcp.payload_len > 0 && state.flags & conn_flags::SERVER_BASE == 0 {
        // No SYN-ACK seen: the socket proves this is the server's byte 0 if it has received
        // nothing yet and this segment is the next one expected.
        match packet::tcp_sock(ctx) {
            Some(sock) if sock.bytes_received == 0 && sock.rcv_nxt == tcp.seq => {
                state.server_base = tcp.seq;
                state.flags |= conn_flags::SERVER_BASE;
            }
            _ => return,
        }
    }

    let mut flow = Flow { ctx, l4, ports, direction: Direction::ServerToClient, cookie, state };
    if tcp.payload_len > 0 {
        let rel = tcp.seq.wrapping_sub(flow.state.server_base);
        let at = flow.state.server_offset;
        let skip = at.wrapping_sub(rel);
        if skip < tcp.payload_len {
            let offset = tcp.payload_offset + skip;
            let phase = flow.state.tracker.phase();
            if phase == Phase::AwaitAnswer {
                if let Some(answer) = packet::payload_byte(ctx, offset) {
                    flow.state.server_offset = at + 1;
                    let e = flow.state.tracker.server_answer(answer);
                    flow.apply(e);
                }
            } else if phase == Phase::AwaitAuth {
                // Byte1 type, Int32 length, Int32 code (for 'R'): nine bytes when they are
                // all in this segment, else the type alone.
                let code = if tcp.payload_len - skip >= 9 {
                    packet::payload_array::<9>(ctx, offset)
                        .map(|m| u32::from_be_bytes([m[5], m[6], m[7], m[8]]))
                } else {
                    None
                };
                if let Some(msg_type) = packet::payload_byte(ctx, offset) {
                    let e = flow.state.tracker.server_auth(msg_type, code);
                    flow.apply(e);
                }
            }
        }
    }
    if tcp.flags & (TCP_FIN | TCP_RST) != 0 {
        flow.closed();
    }
}
