//! Process context for findings, read from procfs once per process and cached (bounded).
//!
//! The kernel's connect-time record (pid, comm, uid, cgroup id) is the ground truth; procfs
//! adds what only it has (exe, command line, parent, cgroup path, user name). A process that
//! already exited, or a pid that now belongs to another program, keeps the kernel's record
//! only: procfs details are used only when the live process still has the recorded comm.

mod cgroup_path;
mod procfs;
mod redact;
mod users;

use std::collections::VecDeque;

// pids from the kernel, looked up once per session: hashbrown's fast default hasher
// (foldhash), not SipHash.
use hashbrown::HashMap;

pub use cgroup_path::{container_id, pod_uid, systemd_unit};
pub use redact::redact_command_line;

use crate::finding::{Process, SharedText};

/// Processes remembered at once; the oldest is forgotten first.
pub const CACHE_ENTRIES: usize = 4096;

/// What procfs says about a process, already redacted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcDetails {
    pub comm: String,
    pub exe: Option<SharedText>,
    pub cmdline: Option<SharedText>,
    pub ppid: Option<u32>,
    pub parent_comm: Option<SharedText>,
    pub cgroup: Option<SharedText>,
    /// Read from `cgroup` once, when the process is first seen (not per session).
    pub container: ContainerOf,
}

/// What a process's cgroup path says about where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerOf {
    pub container_id: Option<SharedText>,
    pub pod_uid: Option<SharedText>,
    pub systemd_unit: Option<SharedText>,
}

impl ContainerOf {
    pub fn from_cgroup(path: Option<&str>) -> ContainerOf {
        let Some(path) = path else { return ContainerOf::default() };
        ContainerOf {
            container_id: container_id(path).map(Into::into),
            pod_uid: pod_uid(path).map(Into::into),
            systemd_unit: systemd_unit(path).map(Into::into),
        }
    }
}

pub struct Enricher {
    cache: HashMap<u32, ProcDetails>,
    order: VecDeque<u32>,
    users: users::UserNames,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    pub fn new() -> Self {
        Enricher { cache: HashMap::new(), order: VecDeque::new(), users: users::UserNames::load() }
    }

    /// Fill in `process` from procfs (cached) where the live process is still the one the
    /// kernel recorded.
    pub fn enrich(&mut self, process: &mut Process) {
        process.user = self.users.name(process.uid);
        let cached = self.cache.get(&process.pid).filter(|d| d.comm == process.comm).is_some();
        if !cached {
            if let Some(fresh) = procfs::read(process.pid) {
                self.remember(process.pid, fresh);
            }
        }
        // Fields shared from the cache (reference counts): no text copied per session.
        let Some(d) = self.cache.get(&process.pid).filter(|d| d.comm == process.comm) else {
            process.exited = true;
            return;
        };
        process.exe.clone_from(&d.exe);
        process.cmdline.clone_from(&d.cmdline);
        process.ppid = d.ppid;
        process.parent_comm.clone_from(&d.parent_comm);
        process.container_id.clone_from(&d.container.container_id);
        process.pod_uid.clone_from(&d.container.pod_uid);
        process.systemd_unit.clone_from(&d.container.systemd_unit);
        process.cgroup.clone_from(&d.cgroup);
    }

    fn remember(&mut self, pid: u32, details: ProcDetails) {
        if self.cache.insert(pid, details).is_none() {
            self.order.push_back(pid);
            while self.order.len() > CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.cache.remove(&old);
                }
            }
        }
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Process {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
        Process {
            pid: std::process::id(),
            tid: std::process::id(),
            comm,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            ..Process::default()
        }
    }

    #[test]
    fn enriches_a_live_process_from_procfs() {
        let mut e = Enricher::new();
        let mut p = me();
        e.enrich(&mut p);
        assert!(!p.exited);
        assert!(p.exe.as_deref().is_some_and(|x| x.starts_with('/')), "{p:?}");
        assert!(p.cmdline.is_some());
        assert!(p.ppid.is_some_and(|pp| pp > 0));
        assert!(p.cgroup.as_deref().is_some_and(|c| c.starts_with('/')), "{p:?}");
        assert_eq!(p.user.as_deref(), Some("root"));
        assert_eq!(e.cached(), 1);
    }

    #[test]
    fn a_reused_pid_or_exited_process_keeps_only_the_kernel_record() {
        let mut e = Enricher::new();
        let mut p = me();
        p.comm = "not-this-one".into();
        e.enrich(&mut p);
        assert!(p.exited);
        assert!(p.exe.is_none() && p.cmdline.is_none());
        let mut gone = Process { pid: u32::MAX - 1, comm: "x".into(), ..Process::default() };
        e.enrich(&mut gone);
        assert!(gone.exited);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut e = Enricher::new();
        for pid in 0..(CACHE_ENTRIES as u32 + 10) {
            e.remember(pid, ProcDetails::default());
        }
        assert_eq!(e.cached(), CACHE_ENTRIES);
        assert!(!e.cache.contains_key(&0), "the oldest went first");
    }
}
