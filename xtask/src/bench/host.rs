//! The machine a bench ran on: the same binary's figures differ by 2x between hosts (an AMD
//! EPYC with its "Safe RET" return-stack mitigation against the host of earlier runs), so
//! every report names its CPU, kernel and the CPU-vulnerability mitigations in force.

use std::fs;

pub struct Host {
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu: String,
    pub cpus: usize,
    /// The running kernel's release.
    pub kernel: String,
    /// Each vulnerability the kernel mitigates (or is exposed to), as
    /// `name: state` from /sys/devices/system/cpu/vulnerabilities; "Not affected" left out.
    pub mitigations: Vec<String>,
}

impl Host {
    /// What can be read; a missing file leaves its field empty rather than failing the bench.
    pub fn read() -> Host {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_string();
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mut mitigations: Vec<String> = fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let state = fs::read_to_string(e.path()).ok()?;
                let state = state.trim();
                (state != "Not affected")
                    .then(|| format!("{}: {state}", e.file_name().to_string_lossy()))
            })
            .collect();
        mitigations.sort();
        Host { cpu, cpus, kernel, mitigations }
    }

    pub fn line(&self) -> String {
        format!(
            "host: {}, {} CPUs, Linux {}; {}",
            self.cpu,
            self.cpus,
            self.kernel,
            if self.mitigations.is_empty() {
                "no CPU vulnerability listed".to_string()
            } else {
                self.mitigations.join("; ")
            }
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu": self.cpu,
            "cpus": self.cpus,
            "kernel": self.kernel,
            "mitigations": self.mitigations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let host = Host::read();
        assert!(host.cpus >= 1, "no processor line in /proc/cpuinfo");
        assert!(!host.kernel.is_empty());
        // (A state may end in "Not affected" for one of its parts: spectre_v2's PBRSB-eIBRS.)
        for m in &host.mitigations {
            let (_, state) = m.split_once(": ").expect("name: state");
            assert_ne!(state, "Not affected", "{m}");
        }
    }

    #[test]
    fn names_cpu_kernel_and_mitigations() {
        let host = Host {
            cpu: "AMD EPYC".into(),
            cpus: 2,
            kernel: "6.18.44".into(),
            mitigations: vec!["spec_rstack_overflow: Mitigation: Safe RET".into()],
        };
        assert_eq!(
            host.line(),
            "host: AMD EPYC, 2 CPUs, Linux 6.18.44; spec_rstack_overflow: Mitigation: Safe RET"
        );
        assert_eq!(host.json()["mitigations"][0], "spec_rstack_overflow: Mitigation: Safe RET");
        assert_eq!(host.json()["cpus"], 2);
    }
}
