//! Proving where byte 0 of a stream is from the socket's own counters, when its SYN was not
//! seen. The sending side proves it when no data of its own was acknowledged yet
//! (`bytes_acked` counts the SYN too, so at most 1) and the segment starts at its oldest
//! unacknowledged byte; the receiving side when it has received nothing yet and the segment
//! is exactly the next one expected.

use aya_ebpf::{bindings::bpf_tcp_sock, programs::SkBuffContext};
use sensor_common::{
    event::{conn_flags, ConnState},
    verdict::Role,
};

use crate::{
    flow::Direction,
    packet::{self, TcpHeader},
};

#[inline(always)]
fn sender_at_start(sock: &bpf_tcp_sock, seq: u32) -> bool {
    sock.bytes_acked <= 1 && seq == sock.snd_una
}

#[inline(always)]
fn receiver_at_start(sock: &bpf_tcp_sock, seq: u32) -> bool {
    sock.bytes_received == 0 && seq == sock.rcv_nxt
}

/// Is the segment at `seq` byte 0 of its stream, judged by the sending socket's counters when
/// this socket `sent` it, else by the receiving socket's?
#[inline(always)]
fn at_start(sock: &bpf_tcp_sock, seq: u32, sent: bool) -> bool {
    if sent {
        sender_at_start(sock, seq)
    } else {
        receiver_at_start(sock, seq)
    }
}

/// Is this segment byte 0 of its stream (the client's or the server's, by `direction`)?
/// Records the base it proves; a client segment also proves the server's byte 0 when the
/// server has not spoken yet.
#[inline(always)]
pub fn stream_start(
    ctx: &SkBuffContext,
    tcp: &TcpHeader,
    role: Role,
    direction: Direction,
    state: &mut ConnState,
) -> bool {
    let Some(sock) = packet::tcp_sock(ctx) else { return false };
    let from_client = direction == Direction::ClientToServer;
    // This socket sent the segment when it is the end the segment comes from.
    if !at_start(sock, tcp.seq, from_client == (role == Role::Client)) {
        return false;
    }
    if !from_client {
        state.server_base = tcp.seq;
        state.flags |= conn_flags::SERVER_BASE;
        return true;
    }
    state.client_base = tcp.seq;
    state.flags |= conn_flags::CLIENT_BASE;
    if state.flags & conn_flags::SERVER_BASE == 0 {
        let server_silent = match role {
            Role::Client => sock.bytes_received == 0,
            Role::Server => sock.bytes_acked <= 1 && sock.snd_nxt == sock.snd_una,
        };
        if server_silent {
            state.server_base = if role == Role::Client { sock.rcv_nxt } else { sock.snd_nxt };
            state.flags |= conn_flags::SERVER_BASE;
        }
    }
    true
}
