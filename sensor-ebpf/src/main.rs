//! eBPF programs of the pgwire sensor. This file only declares entry points; each hook family
//! lives in its own module and every entry point returns "allow": the sensor observes, it
//! never blocks traffic.
#![no_std]
#![no_main]
// The atomic add of the counters (see counters.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

// This package's library is only the host stub (lib.rs) that lets the agent's build script
// depend on the kernel crate.
use sensor_ebpf as _;

mod connect;
mod counters;
mod flow;
mod maps;
mod packet;
mod proof;
mod segment;
mod sockets;
mod tls_probe;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, SkBuffContext, SockAddrContext},
};

/// cgroup_sock_addr programs: 1 lets the connect() proceed.
const SOCK_ADDR_ALLOW: i32 = 1;
/// cgroup_skb programs: 1 lets the packet pass.
const SKB_PASS: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn sensor_connect4(ctx: SockAddrContext) -> i32 {
    connect::on_connect(&ctx);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn sensor_connect6(ctx: SockAddrContext) -> i32 {
    connect::on_connect(&ctx);
    SOCK_ADDR_ALLOW
}

#[cgroup_skb(egress)]
pub fn sensor_egress(ctx: SkBuffContext) -> i32 {
    segment::on_segment(&ctx, segment::Hook::Egress);
    SKB_PASS
}

#[cgroup_skb(ingress)]
pub fn sensor_ingress(ctx: SkBuffContext) -> i32 {
    segment::on_segment(&ctx, segment::Hook::Ingress);
    SKB_PASS
}

// Uprobes on the client's OpenSSL; each returns 0 (a uprobe's return value is ignored).

#[uretprobe]
pub fn tls_ssl_ctx_new_return(ctx: RetProbeContext) -> u32 {
    tls_probe::ctx_created(&ctx);
    0
}

#[uprobe]
pub fn tls_ssl_ctx_set_verify(ctx: ProbeContext) -> u32 {
    tls_probe::ctx_set_verify(&ctx);
    0
}

#[uprobe]
pub fn tls_ssl_new(ctx: ProbeContext) -> u32 {
    tls_probe::ssl_new(&ctx);
    0
}

#[uretprobe]
pub fn tls_ssl_new_return(ctx: RetProbeContext) -> u32 {
    tls_probe::ssl_created(&ctx);
    0
}

#[uprobe]
pub fn tls_ssl_set_verify(ctx: ProbeContext) -> u32 {
    tls_probe::ssl_set_verify(&ctx);
    0
}

#[uprobe]
pub fn tls_ssl_handshake(ctx: ProbeContext) -> u32 {
    tls_probe::handshake(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
