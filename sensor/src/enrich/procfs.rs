//! Reading one process's details from /proc. Every read is bounded; any failure (the
//! process exited, permissions) just leaves a field empty.

use std::{fs, io::Read};

use super::{redact::redact_command_line, ContainerOf, ProcDetails};

/// Command lines longer than this are cut (after redaction).
const MAX_CMDLINE: usize = 4096;

pub fn read(pid: u32) -> Option<ProcDetails> {
    let base = format!("/proc/{pid}");
    let comm = fs::read_to_string(format!("{base}/comm")).ok()?.trim_end().to_string();
    let exe = fs::read_link(format!("{base}/exe")).ok().map(|p| p.display().to_string().into());
    let cmdline = read_bounded(&format!("{base}/cmdline"), 64 * 1024).map(|raw| {
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut line = redact_command_line(&args);
        if line.len() > MAX_CMDLINE {
            let mut cut = MAX_CMDLINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        line.into()
    });
    let ppid = fs::read_to_string(format!("{base}/status")).ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
    });
    let parent_comm = ppid
        .filter(|&pp| pp > 0)
        .and_then(|pp| fs::read_to_string(format!("/proc/{pp}/comm")).ok())
        .map(|c| c.trim_end().into());
    let cgroup = fs::read_to_string(format!("{base}/cgroup")).ok().and_then(|s| v2_path(&s));
    let container = ContainerOf::from_cgroup(cgroup.as_deref());
    let cgroup = cgroup.map(Into::into);
    Some(ProcDetails { comm, exe, cmdline, ppid, parent_comm, cgroup, container })
}

/// The cgroup v2 path (`0::/path`) from /proc/PID/cgroup.
fn v2_path(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

fn read_bounded(path: &str, limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path).ok()?.take(limit).read_to_end(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_line() {
        let text = "12:pids:/user.slice\n0::/system.slice/app.service\n";
        assert_eq!(v2_path(text).as_deref(), Some("/system.slice/app.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }
}
