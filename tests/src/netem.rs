//! Packet loss for one TCP flow, so the kernel really retransmits: an nftables rule drops a
//! random share of the flow's packets on the receiving side (prerouting), after the sending
//! side's cgroup egress hook has already seen them. Removed on drop.
//! (This kernel has no netem qdisc; nftables' numgen does the job.)

use std::process::Command;

use anyhow::bail;

const TABLE: &str = "pgwire_sensor_test_loss";

pub struct FlowLoss;

fn nft(script: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })?;
    if !out.status.success() {
        bail!("nft failed on {script:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl FlowLoss {
    /// Drop `percent`% of the packets from `client_port` to `server_port`.
    pub fn start(client_port: u16, server_port: u16, percent: u32) -> anyhow::Result<FlowLoss> {
        let _ = nft(&format!("delete table inet {TABLE}\n"));
        nft(&format!(
            "table inet {TABLE} {{\n  chain pre {{\n    type filter hook prerouting priority -300;\n    \
             tcp sport {client_port} tcp dport {server_port} numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        ))?;
        Ok(FlowLoss)
    }
}

impl Drop for FlowLoss {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {TABLE}\n"));
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
