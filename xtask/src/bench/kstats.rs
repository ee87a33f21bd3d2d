//! Kernel cost per eBPF program, from the kernel's own statistics: with
//! `kernel.bpf_stats_enabled` = 1 the kernel times every program run and exposes the sums
//! (`run_time_ns`, `run_cnt`) in the fdinfo of each program fd. The sensor's programs are
//! found through its own open fds, so other BPF users on the host do not mix in.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::Context;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on, and back to what they were when dropped
/// (they cost two clock reads per program run while on).
pub struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    pub fn turn_on() -> anyhow::Result<StatsEnabled> {
        let before = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("{SYSCTL}: this kernel has no BPF run-time statistics"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("cannot write 1 to {SYSCTL}"))?;
        Ok(StatsEnabled { before: before.trim().to_string() })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// Run counts and total run time per program name, summed since the program was loaded.
#[derive(Clone, Default)]
pub struct ProgramTimes(pub BTreeMap<String, (u64, u64)>);

impl ProgramTimes {
    /// The programs held open by process `pid`.
    pub fn of_process(pid: u32) -> anyhow::Result<ProgramTimes> {
        let mut times = BTreeMap::new();
        let dir = format!("/proc/{pid}/fdinfo");
        for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
            let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
            let Some(run) = ProgramRuns::parse(&text) else { continue };
            let entry = times.entry(program_name(run.id)).or_insert((0, 0));
            entry.0 += run.runs;
            entry.1 += run.ns;
        }
        anyhow::ensure!(!times.is_empty(), "process {pid} holds no BPF program");
        Ok(ProgramTimes(times))
    }

    /// Program fds of this process, each under the name given (no lookup by id: these are
    /// programs this process loaded itself, such as [`super::floor`]'s).
    pub fn of_own_fds(
        fds: impl IntoIterator<Item = (String, std::os::fd::RawFd)>,
    ) -> anyhow::Result<ProgramTimes> {
        let mut times = BTreeMap::new();
        for (name, fd) in fds {
            let path = format!("/proc/self/fdinfo/{fd}");
            let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
            let run = ProgramRuns::parse(&text)
                .with_context(|| format!("{path} ({name}): not a BPF program fd"))?;
            let entry = times.entry(name).or_insert((0, 0));
            entry.0 += run.runs;
            entry.1 += run.ns;
        }
        Ok(ProgramTimes(times))
    }

    /// What ran between `earlier` and `self`: (program, runs, average ns per run).
    pub fn since(&self, earlier: &ProgramTimes) -> Vec<ProgramCost> {
        self.0
            .iter()
            .map(|(name, &(runs, ns))| {
                let (runs0, ns0) = earlier.0.get(name).copied().unwrap_or((0, 0));
                let runs = runs.saturating_sub(runs0);
                let ns = ns.saturating_sub(ns0);
                ProgramCost {
                    program: name.clone(),
                    runs,
                    avg_ns: if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
                }
            })
            .collect()
    }
}

/// One program fd's fdinfo: its id and the kernel's run statistics.
struct ProgramRuns {
    id: u64,
    runs: u64,
    ns: u64,
}

impl ProgramRuns {
    /// Program fds carry run_time_ns; link fds only name their program.
    fn parse(fdinfo: &str) -> Option<ProgramRuns> {
        let field = |key: &str| {
            fdinfo.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        Some(ProgramRuns {
            id: field("prog_id:")?,
            ns: field("run_time_ns:")?,
            runs: field("run_cnt:")?,
        })
    }
}

pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub avg_ns: f64,
}

/// The program's name as bpftool prints it (`ID: TYPE  name NAME  tag ...`); the id if
/// bpftool cannot tell.
pub(super) fn program_name(id: u64) -> String {
    let bpftool = ["/usr/sbin/bpftool", "/usr/bin/bpftool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("bpftool");
    Command::new(bpftool)
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut words = text.split_whitespace();
            words.find(|w| *w == "name")?;
            words.next().map(str::to_string)
        })
        .unwrap_or_else(|| format!("prog#{id}"))
}
