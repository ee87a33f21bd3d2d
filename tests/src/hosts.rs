//! Deployment shapes the sensor must see through: a client in its own network namespace
//! (as in a container), a client in a child cgroup (as under systemd or a container
//! runtime). Each is torn down on drop.

use std::process::Command;

use anyhow::{bail, Context};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A network namespace joined to the host by a veth pair: host side `HOST_ADDR`, namespace
/// side `NS_ADDR`. Addresses of this project's own test host, inside its own sandbox.
pub struct NetNs {
    pub name: String,
    veth: String,
}

pub const HOST_ADDR: &str = "10.231.0.1";
pub const NS_ADDR: &str = "10.231.0.2";

impl NetNs {
    pub fn create() -> anyhow::Result<NetNs> {
        let name = format!("pgs{}", std::process::id() % 100000);
        let veth = format!("vpgs{}", std::process::id() % 100000);
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &veth]);
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name: name.clone(), veth: veth.clone() };
        let peer = format!("{veth}p");
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &name])?;
        ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{NS_ADDR}/30"), "dev", &peer])?;
        ip(&["-n", &name, "link", "set", &peer, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A child cgroup under the cgroup v2 root.
pub struct ChildCgroup {
    pub path: std::path::PathBuf,
    /// Its path as /proc/PID/cgroup shows it.
    pub relative: String,
}

impl ChildCgroup {
    pub fn create(root: &std::path::Path) -> anyhow::Result<ChildCgroup> {
        let relative = format!("/pgwire-sensor-test-{}", std::process::id());
        let path = root.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ChildCgroup { path, relative })
    }

    /// A shell command line that moves itself into this cgroup, then execs `rest`.
    pub fn enter_then(&self, rest: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec {rest}", self.path.display()));
        cmd
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The cgroup v2 root, as the sensor finds it.
pub fn cgroup2_root() -> anyhow::Result<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .filter_map(|l| l.split_once(" - "))
        .find(|(a, b)| b.starts_with("cgroup2 ") && a.split_whitespace().nth(3) == Some("/"))
        .and_then(|(a, _)| a.split_whitespace().nth(4).map(std::path::PathBuf::from))
        .context("no cgroup2 mount")
}
