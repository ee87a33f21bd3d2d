//! Both cgroup_skb hooks land here. Everything starts from the packet's own socket: its
//! storage says whether it is followed, settled (nothing to follow, or its session decided:
//! one flag test), or new to the sensor. Only followed sockets have their packets read.
//!
//! A watched session has two ends, and the sensor can sit at either: the client's socket
//! (role client: its bytes go out, the server's come in) or the server's accepted socket
//! (role server: the other way round). A client socket is followed from connect() when the
//! first packet it sends goes to a watched port on the wire (after any NAT on this host),
//! or when the port it dialled is watched; the answers are matched by socket, whatever
//! port the reverse NAT gives them.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_cgroup_id},
    programs::SkBuffContext,
    EbpfContext,
};
use aya_log_ebpf::info;
use sensor_common::{
    event::{conn_flags, ConnState},
    limits::Stat,
    pgwire::{auth_code, AUTH_PEEK_LEN},
    tracker::Phase,
    verdict::{Role, UnknownReason},
};

use crate::{
    counters,
    flow::{Direction, Flow},
    maps,
    packet::{self, TcpHeader, L4, TCP_FIN, TCP_RST, TCP_SYN},
    proof, sockets,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

#[inline(always)]
pub fn on_segment(ctx: &SkBuffContext, hook: Hook) {
    let Some(socket) = packet::PacketSocket::of(ctx) else { return };
    if none_of_ours(&socket.ends(), hook) {
        return;
    }
    let (state, full) = sockets::of_packet(socket);
    if matches!(&state, Some(state) if state.flags & conn_flags::SETTLED != 0) {
        return;
    }
    let Some(sk) = full.or_else(|| socket.full()) else { return };
    let state = match state {
        Some(state) if state.flags & conn_flags::FOLLOWING != 0 => state,
        // Connected, its server not seen yet: the first packet it sends says where it goes.
        Some(state) if hook == Hook::Egress => match start_following(ctx, sk, state) {
            Some(state) => state,
            None => return,
        },
        Some(_) => return,
        None => match adopt(ctx, sk, hook) {
            Some(state) => state,
            None => return,
        },
    };
    let Some((_l4, _ports, tcp)) = packet::tcp_segment(ctx) else { return };
    let role = if state.flags & conn_flags::ROLE_SERVER != 0 { Role::Server } else { Role::Client };
    let direction = match (role, hook) {
        (Role::Client, Hook::Egress) | (Role::Server, Hook::Ingress) => Direction::ClientToServer,
        _ => Direction::ServerToClient,
    };
    // A pure ACK carries nothing a session start is judged on (no bytes, no byte-0 marker,
    // no end). About half of a short session's packets are pure ACKs.
    if tcp.payload_len == 0 && tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return;
    }
    counters::stat(Stat::PacketsInspected);
    let mut flow = Flow::new(ctx, sk, role, state);
    match direction {
        Direction::ClientToServer => client_segment(&mut flow, &tcp),
        Direction::ServerToClient => server_segment(&mut flow, &tcp),
    }
    if tcp.flags & (TCP_FIN | TCP_RST) != 0 {
        flow.closed();
    }
}

/// The rest of the host's traffic, told from the socket alone, before its storage is looked
/// up. Watching servers, a socket is ours if its own port is watched (accepted on one).
/// Watching clients, if the port it is connected to is watched (it connected to one, or
/// was adopted on one), or it is a SYN leaving (which NAT may send to a watched port:
/// `follow_from_syn`), or a NAT-followed session is open (the one kind of followed socket
/// whose own ports are not watched). The role tests cost nothing: the verifier drops the
/// branch of a role not watched.
#[inline(always)]
fn none_of_ours(ends: &packet::SocketEnds, hook: Hook) -> bool {
    !(maps::role_enabled(Role::Server) && maps::port_slot(ends.local_port).is_some())
        && !(maps::role_enabled(Role::Client)
            && (maps::port_slot(ends.remote_port).is_some()
                || (hook == Hook::Egress && ends.syn_sent())
                || maps::nat_following()))
}

/// A client socket recorded at connect() (it dialled a watched port) sends its first packet
/// (its SYN): followed under the port on the wire if that is watched too (else the one
/// dialled); settled if the client's end is not watched. Not inlined: it runs once per
/// connection and must not weigh on the per-packet path.
#[inline(never)]
fn start_following(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    state: &'static mut ConnState,
) -> Option<&'static mut ConnState> {
    let (l4, ports, _tcp) = packet::tcp_segment(ctx)?;
    let slot = maps::port_slot(ports.dst)
        .or_else(|| maps::port_slot(packet::socket_ends(sk).remote_port))
        .filter(|_| maps::role_enabled(Role::Client));
    let Some(slot) = slot else {
        state.flags |= conn_flags::SETTLED;
        return None;
    };
    follow(ctx, state, l4, ports, slot);
    Some(state)
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
        && !proof::client_start(flow.sk, tcp, flow.role, flow.state)
    {
        // The SYN went by unseen and the socket cannot prove this is byte 0: never guess.
        info!(flow.ctx, "start not seen (no SYN, byte 0 unproven): unknown");
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
        && !proof::server_start(flow.sk, tcp, flow.role, flow.state)
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

/// A socket with no state: connected to a port not watched (its SYN may still go to one
/// through NAT), opened before the sensor started, or (role server) accepted from a
/// client. Its own ports say whether it is watched (no packet read for the rest of the
/// host's traffic). Not inlined: it runs on sockets the sensor has not decided about yet.
#[inline(never)]
fn adopt(ctx: &SkBuffContext, sk: *mut bpf_sock, hook: Hook) -> Option<&'static mut ConnState> {
    let ends = packet::socket_ends(sk);
    if hook == Hook::Egress && ends.syn_sent() {
        return follow_from_syn(ctx, sk);
    }
    // Only the client's bytes can start following a connection.
    let (role, port) = match hook {
        Hook::Egress => (Role::Client, ends.remote_port),
        Hook::Ingress => (Role::Server, ends.local_port),
    };
    let slot = maps::port_slot(port)?;
    if ends.listening() || !maps::role_enabled(role) {
        return None;
    }
    let (l4, ports, tcp) = packet::tcp_segment(ctx)?;
    if tcp.payload_len == 0 || tcp.flags & TCP_SYN != 0 {
        return None;
    }
    let Some(state) = sockets::create(sk) else {
        counters::stat(Stat::TrackFailed);
        return None;
    };
    let role_flag = if role == Role::Server { conn_flags::ROLE_SERVER } else { 0 };
    state.start(conn_flags::ADOPTED | role_flag);
    if !proof::client_start(sk, &tcp, role, state) {
        info!(
            ctx,
            "port {} -> {}: not adopted (under way at start, byte 0 unproven)",
            ports.src,
            ports.dst
        );
        // Settled at once (nothing was decided, so nothing to claim): its later packets
        // take the short path.
        sockets::settle(state);
        counters::stat(Stat::PacketsUntracked);
        return None;
    }
    follow(ctx, state, l4, ports, slot);
    info!(ctx, "port {} -> {}: adopted (opened before start, byte 0 proven)", ports.src, ports.dst);
    counters::stat(Stat::ConnectionsAdopted);
    Some(state)
}

/// The SYN of a connection whose connect() went to a port not watched: followed if it goes
/// to a watched port on the wire (a NAT rule on this host rewrote it), with the process
/// its connect() left in this CPU's slot if the slot still names this socket (the SYN
/// leaves from inside connect(); a migration or another connect() in between leaves the
/// process unknown, never wrong).
#[inline(never)]
fn follow_from_syn(ctx: &SkBuffContext, sk: *mut bpf_sock) -> Option<&'static mut ConnState> {
    let (l4, ports, _tcp) = packet::tcp_segment(ctx)?;
    let slot = maps::port_slot(ports.dst)?;
    if !maps::role_enabled(Role::Client) {
        return None;
    }
    let Some(state) = sockets::create(sk) else {
        counters::stat(Stat::TrackFailed);
        return None;
    };
    state.start(0);
    // SAFETY: helper valid for cgroup_skb; the skb pointer is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = maps::CONNECTING.get_ptr(0) {
        // Read volatile, field by field: another task's connect() may write the slot in the
        // middle of this copy (it writes its own cookie first), so the cookie is checked
        // before and after.
        // SAFETY: this CPU's slot, aligned, valid while the program runs.
        let word = |p: *const u64| unsafe { core::ptr::read_volatile(p) };
        let names_this = || word(unsafe { core::ptr::addr_of!((*record).cookie) }) == cookie;
        if names_this() {
            let p = &mut state.proc_;
            // SAFETY: as above; `comm` is 16 bytes, 8-aligned: two words, each side.
            unsafe {
                p.pid_tgid = word(core::ptr::addr_of!((*record).pid_tgid));
                p.uid_gid = word(core::ptr::addr_of!((*record).uid_gid));
                let (from, to) = (
                    core::ptr::addr_of!((*record).comm).cast::<u64>(),
                    p.comm.as_mut_ptr().cast::<u64>(),
                );
                to.write(word(from));
                to.add(1).write(word(from.add(1)));
            }
            // SAFETY: `sk` is a full socket; both helpers are valid for cgroup_skb. The
            // socket's cgroup is its creator's; the SYN leaves inside connect().
            unsafe {
                p.cgroup_id = bpf_sk_cgroup_id(sk.cast());
                p.connect_ns = bpf_ktime_get_ns();
            }
            if names_this() {
                state.flags |= conn_flags::PROC_KNOWN;
            }
        }
    }
    if state.flags & conn_flags::PROC_KNOWN == 0 {
        counters::stat(Stat::NatProcessUnknown);
    }
    state.flags |= conn_flags::NAT;
    maps::nat_following_add(1);
    follow(ctx, state, l4, ports, slot);
    counters::stat(Stat::ConnectionsNat);
    counters::stat(Stat::ConnectionsTracked);
    Some(state)
}

/// Start following a session whose client's packet (this one) shows the server as reached.
#[inline(always)]
fn follow(ctx: &SkBuffContext, state: &mut ConnState, l4: L4, ports: packet::Ports, slot: u32) {
    let (_src, dst) = packet::addresses(ctx, l4);
    state.server_addr = dst;
    state.server_port = ports.dst;
    state.ip_version = l4.ip_version;
    state.port_slot = slot as u8;
    state.flags |= conn_flags::FOLLOWING;
}
