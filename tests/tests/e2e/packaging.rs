//! Issue 7, packaging: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening; the Kubernetes DaemonSet asks for the capabilities and host mounts the sensor
//! needs and nothing more; the release binary (`cargo xtask dist`) is one self-contained
//! static file that runs with no shared library at all.

use std::process::Command;

use tests::{sensor::sensor_binary, util::repo_path};

/// `Key=value` lines of a unit file (last one wins, as in systemd).
fn unit_setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(repo_path("deploy/systemd/pgwire-sensor.service"))?;
    // verify checks that ExecStart exists: point it at the binary under test.
    let exec = unit_setting(&unit, "ExecStart").expect("ExecStart");
    let program = exec.split_whitespace().next().unwrap().to_string();
    let dir = tests::util::scratch_dir("systemd-unit");
    let copy = dir.join("pgwire-sensor.service");
    std::fs::write(&copy, unit.replace(&program, &sensor_binary()?.display().to_string()))?;
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(!stderr.contains("pgwire-sensor.service:"), "warnings about the unit: {stderr}");

    let caps = "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE CAP_SYS_ADMIN";
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", caps),
        ("AmbientCapabilities", caps),
        ("LogsDirectory", "pgwire-sensor"),
        ("LogsDirectoryMode", "0700"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelModules", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(unit_setting(&unit, key).as_deref(), Some(want), "{key}");
    }
    assert!(unit_setting(&unit, "User").is_none(), "not root: DynamicUser, no fixed User");
    assert!(
        exec.contains("--findings /var/log/pgwire-sensor/"),
        "writes only to its LogsDirectory"
    );
    assert!(exec.contains("127.0.0.1:"), "metrics on loopback");
    Ok(())
}

#[test]
fn the_daemonset_asks_for_exactly_what_the_sensor_needs() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_path("deploy/kubernetes/daemonset.yaml"))?;
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "kernel events carry host pids");
    assert_ne!(pod["hostNetwork"], true, "metrics stay in the pod's network namespace");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "SYS_ADMIN"])
    );

    // Host mounts: the cgroup v2 root (read-only), the findings directory and the node's
    // machine id (read-only, for findings' host.id); nothing else.
    let volumes = pod["volumes"].as_array().unwrap();
    let host_paths: Vec<&str> =
        volumes.iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(host_paths, ["/sys/fs/cgroup", "/var/log/pgwire-sensor", "/etc/machine-id"]);
    let mounts = c["volumeMounts"].as_array().unwrap();
    let cgroup_mount = mounts.iter().find(|m| m["name"] == "cgroup").unwrap();
    assert_eq!(cgroup_mount["readOnly"], true);
    let machine_id = mounts.iter().find(|m| m["name"] == "machine-id").unwrap();
    assert_eq!(machine_id["readOnly"], true);
    // The node's name from the downward API: findings' `node`, alerts' `instance`.
    let env = c["env"].as_array().unwrap();
    let node = env.iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    // The arguments are ones the sensor accepts, and point at those mounts.
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    for (flag, mount) in [("--cgroup", cgroup_mount), ("--machine-id-file", machine_id)] {
        let arg = format!("{flag}={}", mount["mountPath"].as_str().unwrap());
        assert!(args.contains(&arg.as_str()), "{arg} missing from {args:?}");
    }
    let help = Command::new(sensor_binary()?).args(["run", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter_map(|a| a.strip_prefix("--")) {
        let name = flag.split('=').next().unwrap();
        assert!(help.contains(&format!("--{name}")), "the sensor has no --{name}");
    }
    Ok(())
}

/// A release binary as `cargo xtask dist` (which `cargo xtask test` runs first) leaves it:
/// present, its `.sha256` holding its current sum, statically linked for `machine`
/// (as `file` names the architecture).
fn released_binary(arch: &str, machine: &str) -> anyhow::Result<std::path::PathBuf> {
    let dist = repo_path(&format!("target/dist/pgwire-sensor-{arch}"));
    anyhow::ensure!(dist.exists(), "{} missing: run `cargo xtask dist`", dist.display());
    let file = Command::new("file").arg(&dist).output()?;
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("statically linked") || file.contains("static-pie"), "{file}");
    assert!(file.contains(machine), "{file}");
    let sum = Command::new("sha256sum").arg(&dist).output()?;
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap_or_default();
    let written =
        std::fs::read_to_string(repo_path(&format!("target/dist/pgwire-sensor-{arch}.sha256")))?;
    assert_eq!(written.trim_end(), format!("{sum}  pgwire-sensor-{arch}"));
    Ok(dist)
}

#[test]
fn the_aarch64_release_binary_is_static_and_summed() -> anyhow::Result<()> {
    // It runs in `cargo xtask vm-test`'s aarch64 guest; here only what it is.
    released_binary("aarch64", "ARM aarch64")?;
    Ok(())
}

#[test]
fn the_release_binary_is_self_contained() -> anyhow::Result<()> {
    // This machine's own: it is run here.
    let machine = if cfg!(target_arch = "aarch64") { "ARM aarch64" } else { "x86-64" };
    let dist = released_binary(std::env::consts::ARCH, machine)?;
    // No shared library at all: it runs in an empty root.
    let root = tests::util::scratch_dir("empty-root");
    std::fs::copy(&dist, root.join("pgwire-sensor"))?;
    let out = Command::new("chroot").arg(&root).args(["/pgwire-sensor", "--version"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sensor "));
    let out = Command::new("chroot").arg(&root).args(["/pgwire-sensor", "check"]).output()?;
    // In the empty root there is no /proc: check must say so, not crash.
    assert!(out.status.code() == Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
