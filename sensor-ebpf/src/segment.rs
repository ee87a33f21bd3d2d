//! Both cgroup_skb hooks land here. A watched session has two ends, and the sensor can sit
//! at either: the client's socket (role client: its bytes go out, the server's come in) or
//! the server's accepted socket (role server: the other way round). The port filter comes
//! first (one array lookup); then the connection's state by socket cookie, or adoption of
//! a connection whose first byte the socket itself proves; then the bytes go to the flow.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, programs::SkBuffContext, EbpfContext};
use aya_log_ebpf::info;
use sensor_common::{
    event::{conn_flags, ConnState, ProcRecord},
    limits::Stat,
    pgwire::{auth_code, AUTH_PEEK_LEN},
    tracker::Phase,
    verdict::{Role, UnknownReason},
};

use crate::{
    counters,
    flow::{Direction, Flow},
    maps,
    packet::{self, TcpHeader, TCP_FIN, TCP_RST, TCP_SYN},
    proof,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

#[inline(always)]
pub fn on_segment(ctx: &SkBuffContext, hook: Hook) {
    let Some((l4, ports, tcp)) = packet::tcp_segment(ctx) else { return };
    let (role, direction) = match hook {
        Hook::Egress if maps::is_watched(ports.dst) => (Role::Client, Direction::ClientToServer),
        Hook::Ingress if maps::is_watched(ports.src) => (Role::Client, Direction::ServerToClient),
        Hook::Ingress if maps::is_watched(ports.dst) => (Role::Server, Direction::ClientToServer),
        Hook::Egress if maps::is_watched(ports.src) => (Role::Server, Direction::ServerToClient),
        _ => return,
    };
    if !maps::role_enabled(role) {
        return;
    }
    // A pure ACK carries nothing a session start is judged on (no bytes, no byte-0 marker,
    // no end): skip it before the socket and map lookups. About half of a short session's
    // packets are pure ACKs.
    if tcp.payload_len == 0 && tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return;
    }
    counters::stat(Stat::PacketsInspected);

    // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let state = match maps::CONNECTIONS.get_ptr_mut(cookie) {
        Some(state) => state,
        // Only the client's bytes can start tracking a connection nobody recorded.
        None if direction == Direction::ClientToServer => {
            match adopt(ctx, cookie, &tcp, role, ports) {
                Some(state) => state,
                None => {
                    counters::stat(Stat::PacketsUntracked);
                    return;
                }
            }
        }
        None => return,
    };
    // SAFETY: from a successful lookup; the socket's packets are serialised by its lock.
    let state: &mut ConnState = unsafe { &mut *state };
    let mut flow = Flow { ctx, l4, ports, direction, role, cookie, state };
    match direction {
        Direction::ClientToServer => client_segment(&mut flow, &tcp),
        Direction::ServerToClient => server_segment(&mut flow, &tcp),
    }
    if tcp.flags & (TCP_FIN | TCP_RST) != 0 {
        flow.closed();
    }
}

/// The client's bytes: where byte 0 is, then the message assembly.
#[inline(always)]
fn client_segment(flow: &mut Flow, tcp: &TcpHeader) {
    let syn = tcp.flags & TCP_SYN != 0;
    if syn {
        // Byte 0 of the stream follows the SYN's sequence number (also with Fast Open data).
        flow.state.client_base = tcp.seq.wrapping_add(1);
        flow.state.flags |= conn_flags::CLIENT_BASE;
        if tcp.payload_len > 0 {
            flow.state.flags |= conn_flags::FAST_OPEN;
        }
    }
    if tcp.payload_len == 0 {
        return;
    }
    if flow.state.flags & conn_flags::CLIENT_BASE == 0
        && !proof::client_start(flow.ctx, tcp, flow.role, flow.state)
    {
        // The SYN went by unseen and the socket cannot prove this is byte 0: never guess.
        info!(
            flow.ctx,
            "port {} -> {}: start not seen (no SYN, byte 0 unproven): unknown",
            flow.ports.src,
            flow.ports.dst
        );
        flow.abandon(UnknownReason::StartNotSeen, Stat::PacketsUntracked);
        return;
    }
    let rel = if syn { 0 } else { tcp.seq.wrapping_sub(flow.state.client_base) };
    flow.client_data(rel, tcp.payload_offset, tcp.payload_len);
}

/// The server's bytes: only its one-byte answer and its first authentication message.
#[inline(always)]
fn server_segment(flow: &mut Flow, tcp: &TcpHeader) {
    if tcp.flags & TCP_SYN != 0 {
        flow.state.server_base = tcp.seq.wrapping_add(1);
        flow.state.flags |= conn_flags::SERVER_BASE;
    } else if tcp.payload_len > 0
        && flow.state.flags & conn_flags::SERVER_BASE == 0
        && !proof::server_start(flow.ctx, tcp, flow.role, flow.state)
    {
        return;
    }
    if tcp.payload_len == 0 {
        return;
    }
    let rel = tcp.seq.wrapping_sub(flow.state.server_base);
    let at = flow.state.server_offset;
    let skip = at.wrapping_sub(rel);
    if skip >= tcp.payload_len {
        return;
    }
    let offset = tcp.payload_offset + skip;
    match flow.state.tracker.phase() {
        Phase::AwaitAnswer => {
            if let Some(answer) = packet::payload_byte(flow.ctx, offset) {
                flow.state.server_offset = at + 1;
                let e = flow.state.tracker.server_answer(answer);
                flow.apply(e);
            }
        }
        Phase::AwaitAuth => {
            // The whole peek when it is in this segment, else the type byte alone.
            let code = if tcp.payload_len - skip >= AUTH_PEEK_LEN as u32 {
                packet::payload_array::<AUTH_PEEK_LEN>(flow.ctx, offset).map(|m| auth_code(&m))
            } else {
                None
            };
            if let Some(msg_type) = packet::payload_byte(flow.ctx, offset) {
                let e = flow.state.tracker.server_auth(msg_type, code);
                flow.apply(e);
            }
        }
        _ => {}
    }
}

/// A connection with no connect record: opened before the sensor started, its record
/// evicted, or (role server) accepted from a remote client. Tracked only if this data
/// segment provably starts the client's stream.
#[inline(always)]
fn adopt(
    ctx: &SkBuffContext,
    cookie: u64,
    tcp: &TcpHeader,
    role: Role,
    ports: packet::Ports,
) -> Option<*mut ConnState> {
    if tcp.payload_len == 0 || tcp.flags & TCP_SYN != 0 {
        return None;
    }
    let role_flag = if role == Role::Server { conn_flags::ROLE_SERVER } else { 0 };
    let mut state = ConnState::new(ProcRecord::EMPTY, conn_flags::ADOPTED | role_flag);
    if !proof::client_start(ctx, tcp, role, &mut state) {
        // Verbose by nature (every later packet of a judged connection lands here too):
        // that is why kernel logging is off unless --kernel-log.
        info!(
            ctx,
            "port {} -> {}: not adopted (untracked, and its socket cannot prove byte 0)",
            ports.src,
            ports.dst
        );
        return None;
    }
    maps::CONNECTIONS.insert(cookie, state, 0).ok()?;
    info!(ctx, "port {} -> {}: adopted (opened before start, byte 0 proven)", ports.src, ports.dst);
    counters::stat(Stat::ConnectionsAdopted);
    maps::CONNECTIONS.get_ptr_mut(cookie)
}
