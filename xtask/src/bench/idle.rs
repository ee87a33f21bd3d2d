//! What the agent costs a host when nothing happens: CPU time per second of each of its
//! threads, and how often each was put on a CPU (its wakeups); the sensor attached as
//! installed (TLS libraries followed), no sessions. The tick, the library scanner's rescans
//! of /proc and the HTTP server are what is left; the scanner's share grows with the number
//! of processes on the host, reported alongside.

use std::{path::Path, time::Duration};

use super::sensor_proc::{thread_times, SensorProc, ThreadTime};

/// Time for the start-up scans (every process's maps, the system's libraries) to end
/// before the window opens.
const SETTLE: Duration = Duration::from_secs(2);

pub struct Idle {
    pub seconds: f64,
    /// Processes on the host during the window: what the scanner walks each rescan.
    pub processes: usize,
    pub threads: Vec<IdleThread>,
}

pub struct IdleThread {
    pub name: String,
    pub cpu_ms_per_s: f64,
    /// Times the thread was put on a CPU: its wakeups, plus any return after preemption.
    pub scheduled_per_s: f64,
}

impl Idle {
    pub fn cpu_ms_per_s(&self) -> f64 {
        self.threads.iter().map(|t| t.cpu_ms_per_s).sum()
    }

    pub fn scheduled_per_s(&self) -> f64 {
        self.threads.iter().map(|t| t.scheduled_per_s).sum()
    }
}

pub fn measure(sensor_bin: &Path, window: Duration) -> anyhow::Result<Idle> {
    let sensor = SensorProc::start_as_installed(sensor_bin)?;
    std::thread::sleep(SETTLE);
    let before = thread_times(sensor.pid());
    anyhow::ensure!(
        !before.is_empty(),
        "no CPU times in /proc/PID/task/*/schedstat (a kernel without CONFIG_SCHED_INFO)"
    );
    std::thread::sleep(window);
    let after = thread_times(sensor.pid());
    let processes = count_processes();
    sensor.stop()?;
    Ok(Idle {
        seconds: window.as_secs_f64(),
        processes,
        threads: per_second(&before, &after, window),
    })
}

/// Each thread alive at both ends of the window, its use per second in between.
fn per_second(before: &[ThreadTime], after: &[ThreadTime], window: Duration) -> Vec<IdleThread> {
    let seconds = window.as_secs_f64();
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.tid == a.tid)?;
            Some(IdleThread {
                name: a.name.clone(),
                // Saturating: a thread id reused within the window is another thread.
                cpu_ms_per_s: a.cpu_ns.saturating_sub(b.cpu_ns) as f64 / 1e6 / seconds,
                scheduled_per_s: a.runs.saturating_sub(b.runs) as f64 / seconds,
            })
        })
        .collect()
}

fn count_processes() -> usize {
    std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u32, name: &str, cpu_ns: u64, runs: u64) -> ThreadTime {
        ThreadTime { tid, name: name.into(), cpu_ns, runs }
    }

    #[test]
    fn per_second_takes_threads_alive_at_both_ends() {
        let before =
            [t(1, "sensor", 1_000_000, 10), t(2, "tls-libraries", 0, 0), t(3, "gone", 5, 5)];
        let after =
            [t(1, "sensor", 3_000_000, 30), t(2, "tls-libraries", 8_000_000, 4), t(4, "new", 9, 9)];
        let idle = Idle {
            seconds: 2.0,
            processes: 1,
            threads: per_second(&before, &after, Duration::from_secs(2)),
        };
        let names: Vec<&str> = idle.threads.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sensor", "tls-libraries"]);
        assert_eq!(idle.threads[0].cpu_ms_per_s, 1.0);
        assert_eq!(idle.threads[0].scheduled_per_s, 10.0);
        assert_eq!(idle.cpu_ms_per_s(), 5.0);
        assert_eq!(idle.scheduled_per_s(), 12.0);
    }

    #[test]
    fn this_process_has_thread_times() {
        let me = thread_times(std::process::id());
        assert!(me.iter().any(|t| t.tid == std::process::id()), "{me:?}");
    }
}
