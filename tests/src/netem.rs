//! Packet loss for one TCP flow, so the kernel really retransmits: an nftables rule drops a
//! random share of the flow's packets on the receiving side (prerouting), after the sending
//! side's cgroup egress hook has already seen them. Removed on drop.
//! (This kernel has no netem qdisc; nftables' numgen does the job.)

use crate::nft::Table;

/// Packet loss on one flow; the rule goes when this drops.
pub struct FlowLoss {
    _table: Table,
}

impl FlowLoss {
    /// Drop `percent`% of the packets from `client_port` to `server_port`.
    pub fn start(client_port: u16, server_port: u16, percent: u32) -> anyhow::Result<FlowLoss> {
        let table = Table::load(
            "inet pgwire_sensor_test_loss",
            &format!(
                "  chain pre {{\n    type filter hook prerouting priority -300;\n    \
                 tcp sport {client_port} tcp dport {server_port} numgen random mod 100 < {percent} drop\n  }}"
            ),
        )?;
        Ok(FlowLoss { _table: table })
    }
}

/// Total retransmissions of a TCP socket (`tcpi_total_retrans`).
pub fn total_retransmits(fd: std::os::fd::RawFd) -> u32 {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        info.tcpi_total_retrans
    } else {
        0
    }
}
