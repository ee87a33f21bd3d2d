//! nftables rules for tests: one table per purpose, loaded from a script and deleted when
//! its guard drops (also when a test fails).

use std::{io::Write, process::Command, process::Stdio};

use anyhow::bail;

/// Run `nft -f -` on `script`.
pub fn nft(script: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin is piped").write_all(script.as_bytes())?;
            child.wait_with_output()
        })?;
    if !out.status.success() {
        bail!("nft failed on {script:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A table of rules, `family name` (e.g. `inet pgwire_sensor_test_loss`), removed on drop.
pub struct Table {
    name: String,
}

impl Table {
    /// Replace any table of this name left by an earlier run with `body` (its chains).
    pub fn load(name: &str, body: &str) -> anyhow::Result<Table> {
        let _ = nft(&format!("delete table {name}\n"));
        nft(&format!("table {name} {{\n{body}\n}}\n"))?;
        Ok(Table { name: name.to_string() })
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table {}\n", self.name));
    }
}

/// Destination NAT of this host's own connections (a `nat` chain on the output hook), as
/// kube-proxy's nftables mode does for a Service: connections to `from` go to `to`.
pub fn dnat_output(
    from: std::net::SocketAddrV4,
    to: std::net::SocketAddrV4,
) -> anyhow::Result<Table> {
    Table::load(
        "ip pgwire_sensor_test_dnat",
        &format!(
            "  chain out {{\n    type nat hook output priority -100;\n    \
             ip daddr {} tcp dport {} dnat to {to}\n  }}",
            from.ip(),
            from.port()
        ),
    )
}
