//! Reading one process's details from /proc. Every read is bounded; any failure (the
//! process exited, permissions) just leaves a field empty.

use std::{fs, io::Read};

use super::{redact::redact_command_line, ContainerOf, ProcDetails};

/// Command lines longer than this are cut (after redaction).
const MAX_CMDLINE: usize = 4096;

/// `None` when the process is gone, or has exited and waits to be reaped (a zombie keeps
/// its comm but has no executable and an empty command line: its details would be blanks,
/// not the program's).
pub fn read(pid: u32) -> Option<ProcDetails> {
    let base = format!("/proc/{pid}");
    let status = fs::read_to_string(format!("{base}/status")).ok()?;
    if exited(&status) {
        return None;
    }
    let comm = fs::read_to_string(format!("{base}/comm")).ok()?.trim_end().to_string();
    let exe = fs::read_link(format!("{base}/exe")).ok().map(|p| p.display().to_string().into());
    let cmdline = read_bounded(&format!("{base}/cmdline"), 64 * 1024).and_then(|raw| {
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.is_empty() {
            return None; // a process that cleared its arguments (or a kernel thread)
        }
        let mut line = redact_command_line(&args);
        if line.len() > MAX_CMDLINE {
            let mut cut = MAX_CMDLINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        Some(line.into())
    });
    let ppid =
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok());
    let parent_comm = ppid
        .filter(|&pp| pp > 0)
        .and_then(|pp| fs::read_to_string(format!("/proc/{pp}/comm")).ok())
        .map(|c| c.trim_end().into());
    let cgroup = fs::read_to_string(format!("{base}/cgroup")).ok().and_then(|s| v2_path(&s));
    let container = ContainerOf::from_cgroup(cgroup.as_deref());
    let cgroup = cgroup.map(Into::into);
    Some(ProcDetails { comm, exe, cmdline, ppid, parent_comm, cgroup, container })
}

/// Whether /proc/PID/status says the process has exited: a zombie (`Z`) or dead (`X`).
fn exited(status: &str) -> bool {
    let state = status.lines().find_map(|l| l.strip_prefix("State:")).map(str::trim_start);
    state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
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

    /// A child that has exited and is not reaped yet is a zombie: no details, as if gone.
    #[test]
    fn an_exited_unreaped_process_has_no_details() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| exited(&s))
        });
        assert!(zombie, "the child never showed as exited");
        assert_eq!(read(pid), None);
        child.wait().unwrap();
        assert!(read(std::process::id()).is_some_and(|me| me.cmdline.is_some()));
    }

    #[test]
    fn status_states() {
        assert!(exited("Name:\tpsql\nState:\tZ (zombie)\nPPid:\t1\n"));
        assert!(exited("State:\tX (dead)\n"));
        assert!(!exited("State:\tS (sleeping)\n"));
        assert!(!exited("Name:\tpsql\n"));
    }

    #[test]
    fn cgroup_v2_line() {
        let text = "12:pids:/user.slice\n0::/system.slice/app.service\n";
        assert_eq!(v2_path(text).as_deref(), Some("/system.slice/app.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }
}
