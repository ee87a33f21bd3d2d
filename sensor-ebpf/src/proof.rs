//! Proving where byte 0 of a stream is from the socket's own counters, when its SYN was not
//! seen. The sending side proves it when no data of its own was acknowledged yet
//! (`bytes_acked` counts the SYN too, so at most 1) and the segment starts at its oldest
//! unacknowledged byte; the receiving side when it has received nothing yet and the segment
//! is exactly the next one expected.

use aya_ebpf::bindings::{bpf_sock, bpf_tcp_sock};
use sensor_common::{
    event::{conn_flags, ConnState},
    verdict::Role,
};

use crate::packet::{self, TcpHeader};

#[inline(always)]
fn sender_at_start(sock: &bpf_tcp_sock, seq: u32) -> bool {
    sock.bytes_acked <= 1 && seq == sock.snd_una
}

#[inline(always)]
fn receiver_at_start(sock: &bpf_tcp_sock, seq: u32) -> bool {
    sock.bytes_received == 0 && seq == sock.rcv_nxt
}

/// Is this client segment byte 0 of the client's stream? Learns the server's byte 0 too
/// when the server has not spoken yet.
#[inline(always)]
pub fn client_start(sk: *mut bpf_sock, tcp: &TcpHeader, role: Role, state: &mut ConnState) -> bool {
    let Some(sock) = packet::tcp_sock(sk) else { return false };
    let proven = match role {
        Role::Client => sender_at_start(sock, tcp.seq),
        Role::Server => receiver_at_start(sock, tcp.seq),
    };
    if !proven {
        return false;
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

/// Is this server segment byte 0 of the server's stream?
#[inline(always)]
pub fn server_start(sk: *mut bpf_sock, tcp: &TcpHeader, role: Role, state: &mut ConnState) -> bool {
    let Some(sock) = packet::tcp_sock(sk) else { return false };
    let proven = match role {
        Role::Client => receiver_at_start(sock, tcp.seq),
        Role::Server => sender_at_start(sock, tcp.seq),
    };
    if proven {
        state.server_base = tcp.seq;
        state.flags |= conn_flags::SERVER_BASE;
    }
    proven
}
