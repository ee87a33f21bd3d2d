//! Header parsing for cgroup_skb programs. The skb starts at the IP header (no Ethernet).
//! The IP and TCP headers of the usual layout are read in place (direct packet access, at
//! constant offsets); every other read goes through `bpf_skb_load_bytes` with a fixed size,
//! so non-linear skbs work and the verifier sees constant lengths; the one variable-length
//! copy is `load_masked`.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_tcp_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_skb_load_bytes, bpf_tcp_sock},
    programs::SkBuffContext,
    EbpfContext,
};
use core::mem::offset_of;

use sensor_common::event::{AF_INET, AF_INET6};

const IPPROTO_TCP: u8 = 6;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// Where the TCP header starts.
#[derive(Clone, Copy)]
pub struct L4 {
    pub ip_version: u8,
    pub offset: u32,
}

#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[derive(Clone, Copy)]
pub struct TcpHeader {
    pub seq: u32,
    pub flags: u8,
    pub payload_offset: u32,
    pub payload_len: u32,
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: u32) -> Option<T> {
    ctx.load::<T>(offset as usize).ok()
}

/// Find the TCP header of an IPv4 or IPv6 packet; `None` for anything else (other
/// protocols, IPv6 extension headers, non-first IPv4 fragments). One helper call, for the
/// packets `tcp_segment_in_place` leaves (IPv4 options, headers outside the linear part).
#[inline(always)]
fn locate_tcp(ctx: &SkBuffContext) -> Option<L4> {
    // Version/IHL at 0, IPv4 fragment field at 6..8 and protocol at 9, IPv6 next header
    // at 6: the first ten bytes hold all of it for both versions.
    let ip: [u8; 10] = load(ctx, 0)?;
    match ip[0] >> 4 {
        4 => {
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ip[9] != IPPROTO_TCP || frag & 0x1fff != 0 {
                return None;
            }
            let ihl = ((ip[0] & 0x0f) as u32) * 4;
            (ihl >= 20).then_some(L4 { ip_version: AF_INET, offset: ihl })
        }
        6 => (ip[6] == IPPROTO_TCP).then_some(L4 { ip_version: AF_INET6, offset: 40 }),
        _ => None,
    }
}

/// Where the TCP header is, its ports and the fields the flow needs, for TCP over
/// IPv4/IPv6. Read in place when the headers have their usual layout (no IPv4 options, no
/// IPv6 extension headers) and sit in the skb's linear part, as a TCP socket's always do;
/// else copied out (two helper calls: IP header, then the first 14 bytes of TCP).
#[inline(always)]
pub fn tcp_segment(ctx: &SkBuffContext) -> Option<(L4, Ports, TcpHeader)> {
    tcp_segment_in_place(ctx).or_else(|| tcp_segment_copied(ctx))
}

/// Bytes of IPv4 (no options) and of IPv6 (no extension headers) before the TCP header.
const IPV4_PLAIN_HEADER: u32 = 20;
const IPV6_HEADER: u32 = 40;

/// `tcp_segment` by direct packet access: no helper call (each costs 15-25 ns on hosts
/// whose kernels mitigate SRSO), constant offsets only, so the verifier's bounds test is
/// the one it understands. `None` for anything else, which `tcp_segment_copied` handles.
#[inline(always)]
fn tcp_segment_in_place(ctx: &SkBuffContext) -> Option<(L4, Ports, TcpHeader)> {
    // Every TCP segment is at least this long, over IPv4 or IPv6.
    let h: &[u8; (IPV4_PLAIN_HEADER + 14) as usize] = in_place(ctx)?;
    let version = h[0];
    if version == 0x45 {
        // IPv4 without options: protocol at 9, fragment field at 6..8, TCP at 20.
        if h[9] != IPPROTO_TCP || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return None;
        }
        let l4 = L4 { ip_version: AF_INET, offset: IPV4_PLAIN_HEADER };
        let tcp: [u8; 14] = core::array::from_fn(|i| h[IPV4_PLAIN_HEADER as usize + i]);
        tcp_fields(ctx, l4, &tcp)
    } else if version >> 4 == 6 {
        let h: &[u8; (IPV6_HEADER + 14) as usize] = in_place(ctx)?;
        if h[6] != IPPROTO_TCP {
            return None;
        }
        let l4 = L4 { ip_version: AF_INET6, offset: IPV6_HEADER };
        let tcp: [u8; 14] = core::array::from_fn(|i| h[IPV6_HEADER as usize + i]);
        tcp_fields(ctx, l4, &tcp)
    } else {
        None
    }
}

/// The packet's first `N` bytes where they lie, if its linear part holds them.
#[inline(always)]
fn in_place<const N: usize>(ctx: &SkBuffContext) -> Option<&'static [u8; N]> {
    // SAFETY: the context is a valid __sk_buff; the verifier rewrites these two loads into
    // the linear part's start and end, and checks every access against the test below.
    let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    if data + N > end {
        return None;
    }
    // SAFETY: N bytes from `data` are inside the linear part (tested above), valid while
    // the program runs; a byte array has no alignment.
    Some(unsafe { &*(data as *const [u8; N]) })
}

/// `tcp_segment` by copying the headers out (any layout, any skb).
#[inline(always)]
fn tcp_segment_copied(ctx: &SkBuffContext) -> Option<(L4, Ports, TcpHeader)> {
    let l4 = locate_tcp(ctx)?;
    let raw: [u8; 14] = load(ctx, l4.offset)?;
    tcp_fields(ctx, l4, &raw)
}

/// The TCP header's first 14 bytes (ports, seq, ack, offset, flags), read.
#[inline(always)]
fn tcp_fields(ctx: &SkBuffContext, l4: L4, raw: &[u8; 14]) -> Option<(L4, Ports, TcpHeader)> {
    let ports = Ports {
        src: u16::from_be_bytes([raw[0], raw[1]]),
        dst: u16::from_be_bytes([raw[2], raw[3]]),
    };
    let header_len = ((raw[12] >> 4) as u32) * 4;
    if header_len < 20 {
        return None;
    }
    let payload_offset = l4.offset + header_len;
    let tcp = TcpHeader {
        seq: u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
        flags: raw[13],
        payload_offset,
        payload_len: ctx.len().saturating_sub(payload_offset),
    };
    Some((l4, ports, tcp))
}

/// The packet's own socket as the hook got it. In cgroup_skb programs this is always the
/// full socket the hook runs for (the kernel sets it so), but the verifier only knows a
/// `sock_common`: its ports and state can be read as they are (`socket_ends`, plain loads),
/// anything else needs `full()`. The ports are read before that helper call so that the
/// host's other traffic leaves without one.
#[derive(Clone, Copy)]
pub struct PacketSocket(*mut bpf_sock);

impl PacketSocket {
    #[inline(always)]
    pub fn of(ctx: &SkBuffContext) -> Option<Self> {
        // SAFETY: the context is a valid __sk_buff; `sk` may be null.
        let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
        (!sk.is_null()).then_some(Self(sk))
    }

    /// Ports and state: fields of `sock_common`, readable without `full()`.
    #[inline(always)]
    pub fn ends(self) -> SocketEnds {
        socket_ends(self.0)
    }

    /// The socket as the hook has it: a `sock_common` to the verifier, which only some
    /// helpers take (`sockets::of_packet`).
    #[inline(always)]
    pub fn as_sock_common(self) -> *mut bpf_sock {
        self.0
    }

    /// The full socket (not a request or time-wait one), for storage and helpers.
    #[inline(always)]
    pub fn full(self) -> Option<*mut bpf_sock> {
        // SAFETY: a socket pointer checked for null, as the helper requires.
        let full = unsafe { bpf_sk_fullsock(self.0) };
        (!full.is_null()).then_some(full)
    }
}

/// The kernel's own view of the TCP socket (sequence numbers and byte counters).
#[inline(always)]
pub fn tcp_sock(sk: *mut bpf_sock) -> Option<&'static bpf_tcp_sock> {
    // SAFETY: `sk` is a full socket; the helper returns null for anything not TCP.
    unsafe { bpf_tcp_sock(sk.cast()).as_ref() }
}

/// `bpf_sock::state` values (the kernel's TCP states).
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;
const SOCK_AF_INET: u32 = 2;

/// A socket's own view of its two ends (before NAT on this host for what it sent, after
/// the reverse NAT for what it received).
#[derive(Clone, Copy)]
pub struct SocketEnds {
    pub local_port: u16,
    pub remote_port: u16,
    /// `bpf_sock::state`.
    pub state: u32,
}

impl SocketEnds {
    pub fn listening(&self) -> bool {
        self.state == TCP_LISTEN
    }

    /// A client socket whose SYN is leaving (also a retransmitted one).
    pub fn syn_sent(&self) -> bool {
        self.state == TCP_SYN_SENT
    }
}

#[inline(always)]
pub fn socket_ends(sk: *mut bpf_sock) -> SocketEnds {
    // `dst_port` is read as the 4-byte field it was before Linux 5.18 (a 2-byte load is
    // refused there); the port sits in its first two bytes, in network order, everywhere.
    let remote = sock_field::<{ offset_of!(bpf_sock, dst_port) }>(sk);
    SocketEnds {
        local_port: sock_field::<{ offset_of!(bpf_sock, src_port) }>(sk) as u16,
        remote_port: u16::from_be(remote as u16),
        state: sock_field::<{ offset_of!(bpf_sock, state) }>(sk),
    }
}

/// One 4-byte field of `struct bpf_sock`, as a load at a constant offset from `sk`: the
/// verifier refuses any arithmetic on a socket pointer, and a volatile load keeps the
/// compiler from merging two branches' loads into one from a computed address.
#[inline(always)]
fn sock_field<const OFFSET: usize>(sk: *mut bpf_sock) -> u32 {
    // SAFETY: `sk` is a full socket and OFFSET a 4-byte field of the UAPI struct.
    unsafe { core::ptr::read_volatile(sk.cast::<u8>().add(OFFSET).cast::<u32>()) }
}

/// The socket's local (`REMOTE` false) or remote address, IPv4 in the first 4 bytes, and
/// its family (4 or 6; an IPv6 socket may hold IPv4-mapped addresses).
#[inline(always)]
pub fn socket_address<const REMOTE: bool>(sk: *mut bpf_sock) -> ([u8; 16], u8) {
    let mut addr = [0u8; 16];
    if sock_field::<{ offset_of!(bpf_sock, family) }>(sk) == SOCK_AF_INET {
        let ip4 = if REMOTE {
            sock_field::<{ offset_of!(bpf_sock, dst_ip4) }>(sk)
        } else {
            sock_field::<{ offset_of!(bpf_sock, src_ip4) }>(sk)
        };
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
        return (addr, AF_INET);
    }
    let words = if REMOTE {
        [
            sock_field::<{ offset_of!(bpf_sock, dst_ip6) }>(sk),
            sock_field::<{ offset_of!(bpf_sock, dst_ip6) + 4 }>(sk),
            sock_field::<{ offset_of!(bpf_sock, dst_ip6) + 8 }>(sk),
            sock_field::<{ offset_of!(bpf_sock, dst_ip6) + 12 }>(sk),
        ]
    } else {
        [
            sock_field::<{ offset_of!(bpf_sock, src_ip6) }>(sk),
            sock_field::<{ offset_of!(bpf_sock, src_ip6) + 4 }>(sk),
            sock_field::<{ offset_of!(bpf_sock, src_ip6) + 8 }>(sk),
            sock_field::<{ offset_of!(bpf_sock, src_ip6) + 12 }>(sk),
        ]
    };
    for (i, word) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    (addr, AF_INET6)
}

/// Load one byte of the payload.
#[inline(always)]
pub fn payload_byte(ctx: &SkBuffContext, offset: u32) -> Option<u8> {
    load(ctx, offset)
}

/// Load `N` bytes of the payload.
#[inline(always)]
pub fn payload_array<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    load(ctx, offset)
}

/// Source and destination addresses, IPv4 in the first four bytes.
#[inline(always)]
pub fn addresses(ctx: &SkBuffContext, l4: L4) -> ([u8; 16], [u8; 16]) {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if l4.ip_version == AF_INET {
        if let Some(a) = load::<[u8; 8]>(ctx, 12) {
            src[..4].copy_from_slice(&a[..4]);
            dst[..4].copy_from_slice(&a[4..]);
        }
    } else {
        if let Some(a) = load::<[u8; 16]>(ctx, 8) {
            src = a;
        }
        if let Some(a) = load::<[u8; 16]>(ctx, 24) {
            dst = a;
        }
    }
    (src, dst)
}

/// Copy `len` bytes (1 ..= MASK + 1) from `offset` to `dst`, which must have room for
/// `MASK + 1` bytes. `MASK + 1` is a power of two; the `& MASK` keeps the length provably in
/// range for the verifier, whatever the compiler does with the caller's bounds checks.
#[inline(always)]
pub fn load_masked<const MASK: u32>(
    ctx: &SkBuffContext,
    offset: u32,
    dst: *mut u8,
    len: u32,
) -> bool {
    if len == 0 {
        return false;
    }
    // `opaque` keeps LLVM from dropping the mask as redundant; the verifier then sees the
    // masked value, provably in 1 ..= MASK + 1.
    let n = (opaque(len).wrapping_sub(1) & MASK) + 1;
    // SAFETY: `dst` has room for MASK + 1 bytes and n <= MASK + 1.
    let ret = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), offset, dst.cast(), n) };
    ret == 0
}

/// The value, with everything the compiler knows about its range forgotten (a volatile
/// read). Masks applied after it survive optimisation, so the verifier can see the bound
/// even where the code already checked it in a way the verifier cannot follow.
#[inline(always)]
pub fn opaque(value: u32) -> u32 {
    // SAFETY: reading a local.
    unsafe { core::ptr::read_volatile(&value) }
}
