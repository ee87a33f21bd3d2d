//! Bad input and missing requirements: a clear message and the documented exit code
//! (2 usage/config, 1 runtime), never a panic.

use std::{net::TcpListener, process::Command};

use tests::sensor::sensor_binary;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(sensor_binary().unwrap()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic on {args:?}: {stderr}");
    (out.status.code(), stderr)
}

#[test]
fn bad_flag_values_exit_2_with_the_flag_named() {
    for (args, needle) in [
        (&["run", "--ports", "0"][..], "--ports"),
        (&["run", "--ports", "70000"][..], "--ports"),
        (&["run", "--ports", "abc"][..], "--ports"),
        (&["run", "--metrics-addr", "nonsense"][..], "--metrics-addr"),
        (&["run", "--findings", ""][..], "--findings"),
        (&["run", "--cgroup", "/tmp"][..], "--cgroup"),
        (&["run", "--repeat-window", "soon"][..], "--repeat-window"),
        (&["run", "--repeat-window", "0s"][..], "--repeat-window"),
        (&["run", "--machine-id-file", "/nonexistent/machine-id"][..], "--machine-id-file"),
        (&["analyze", "--pcap", "/dev/null", "--repeat-window", "x"][..], "--repeat-window"),
        (&["run", "--alertmanager-url", "am:9093"][..], "--alertmanager-url"),
        (&["run", "--alertmanager-url", "https://u:p@am:9093"][..], "--alertmanager-url"),
        (
            &[
                "run",
                "--alertmanager-url",
                "https://am:9093",
                "--alertmanager-ca-file",
                "/nonexistent",
            ][..],
            "--alertmanager-ca-file",
        ),
        (
            &["run", "--alertmanager-url", "http://am:9093", "--alertmanager-basic-auth-user", "u"]
                [..],
            "--alertmanager-basic-auth-user",
        ),
        (
            &[
                "run",
                "--alertmanager-url",
                "http://am:9093",
                "--alertmanager-bearer-token-file",
                "/nonexistent",
            ][..],
            "--alertmanager-bearer-token-file",
        ),
        (&["run", "--alertmanager-bearer-token-file", "/etc/hostname"][..], "--alertmanager-url"),
        (
            &["run", "--alertmanager-url", "http://am:9093", "--runbook-base-url", "wiki"][..],
            "--runbook-base-url",
        ),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should name {needle}: {stderr}");
    }
}

#[test]
fn metrics_address_in_use_exits_1_and_says_so() {
    let _serial = tests::serial();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["run", "--metrics-addr", &addr, "--findings", "/dev/null"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--metrics-addr") && stderr.contains(&addr), "{stderr}");
}

// Missing capabilities, one by one: daemon.rs.

#[test]
fn check_passes_as_root_and_version_prints() {
    let (code, stderr) = run(&["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = Command::new(sensor_binary().unwrap()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sensor 0.1.0"));
}

/// `check` takes `run`'s settings and checks what `run` with them would meet; `--format
/// json` says the same for automation, every check with a status.
#[test]
fn check_takes_runs_settings_and_reports_json() {
    let _serial = tests::serial();
    let json = |args: &[&str]| -> (Option<i32>, serde_json::Value) {
        // A free metrics address unless the test picks one (flag or file): a sensor
        // running on this host holds the default.
        let picked = args.iter().any(|a| *a == "--metrics-addr" || *a == "--config");
        let free: &[&str] = if picked { &[] } else { &["--metrics-addr", "127.0.0.1:0"] };
        let out = Command::new(sensor_binary().unwrap())
            .args(["check", "--format", "json"])
            .args(free)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        (out.status.code(), report)
    };
    let status_of = |report: &serde_json::Value, name: &str| -> String {
        let checks = report["checks"].as_array().expect("a list of checks");
        let check = checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}"));
        check["status"].as_str().unwrap().to_string()
    };
    let (code, report) = json(&[]);
    assert_eq!((code, report["ok"].as_bool()), (Some(0), Some(true)), "{report}");
    for name in ["kernel version", "cgroup v2", "BPF ring buffer", "metrics address", "findings"] {
        assert_eq!(status_of(&report, name), "ok", "{report}");
    }

    // What run would meet: a taken metrics address, a --cgroup that is not one, a findings
    // directory that does not exist.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, report) = json(&["--metrics-addr", &addr]);
    assert_eq!((code, status_of(&report, "metrics address").as_str()), (Some(1), "missing"));
    let (code, report) = json(&["--cgroup", "/tmp"]);
    assert_eq!((code, status_of(&report, "cgroup v2").as_str()), (Some(1), "missing"));
    let (code, report) = json(&["--findings", "/nonexistent-dir/findings.jsonl"]);
    assert_eq!((code, status_of(&report, "findings").as_str()), (Some(1), "missing"));
    // TLS verification off: CAP_SYS_ADMIN is not needed at all.
    let (_, report) = json(&["--tls-verification", "off"]);
    let checks = report["checks"].as_array().unwrap();
    let sys_admin = checks.iter().find(|c| c["name"] == "CAP_SYS_ADMIN").unwrap();
    assert!(sys_admin["detail"].as_str().unwrap().contains("not needed"), "{sys_admin}");

    // The same settings from a config file; a bad one is a configuration error (exit 2).
    let dir = tests::util::scratch_dir("check-config");
    let config = dir.join("sensor.yaml");
    std::fs::write(&config, format!("metrics_addr: \"{addr}\"\n")).unwrap();
    let (code, report) = json(&["--config", config.to_str().unwrap()]);
    assert_eq!((code, status_of(&report, "metrics address").as_str()), (Some(1), "missing"));
    std::fs::write(&config, "portz: [1]\n").unwrap();
    let (code, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("portz"), "{stderr}");
    drop(taken);
}

/// `sensor ARGS` in a container's view of the cgroups: a cgroup of its own, a private cgroup
/// namespace rooted there, and (with `remount`) cgroup2 mounted anew inside, which then
/// shows that cgroup as its root (as a container runtime sets it up). Without `remount`
/// the host's cgroup2 mount stays visible (as a host bind mount would be).
fn in_private_cgroup_namespace(remount: bool, args: &[&str]) -> (Option<i32>, String, String) {
    // Wherever the host has it (/sys/fs/cgroup/unified on a hybrid host).
    let root = tests::hosts::cgroup2_root().unwrap();
    let cgroup = root.join(format!("pgwire-sensor-test-cgns-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let inner = if remount {
        // In its own mount namespace: the host's mount is left alone. (Mounting over it
        // without unmounting is refused: the same filesystem on its own root.)
        format!("umount -l {root} && mount -t cgroup2 none {root} && ", root = root.display())
    } else {
        String::new()
    };
    let script = format!(
        // timeout: a run that no longer refuses fails the test instead of hanging it.
        "echo $$ > {cgroup}/cgroup.procs && exec timeout 60 unshare --mount --cgroup \
         sh -c '{inner}exec \"$0\" \"$@\"' \"$@\"",
        cgroup = cgroup.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(sensor_binary().unwrap())
        .args(args)
        .output()
        .unwrap();
    // Every process in it has exited: the cgroup can go.
    std::fs::remove_dir(&cgroup).unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_containers_cgroup_namespace_is_named_and_refused() {
    let _serial = tests::serial();
    let check = ["check", "--format", "json", "--metrics-addr", "127.0.0.1:0"];
    let scope_of = |stdout: &str| -> serde_json::Value {
        let report: serde_json::Value =
            serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let checks = report["checks"].as_array().expect("a list of checks");
        checks.iter().find(|c| c["name"] == "cgroup scope").expect("a cgroup scope check").clone()
    };
    // In the host's namespace: the whole host.
    let out = Command::new(sensor_binary().unwrap()).args(check).output().unwrap();
    let host = scope_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(host["status"], "ok", "{host}");
    assert!(host["detail"].as_str().unwrap().contains("host's cgroup namespace"), "{host}");

    // A container's own cgroup2 mount: only the container would be watched. check fails
    // and says why; run refuses to start.
    let (code, stdout, stderr) = in_private_cgroup_namespace(true, &check);
    let scope = scope_of(&stdout);
    assert_eq!((code, scope["status"].as_str()), (Some(1), Some("missing")), "{stdout}{stderr}");
    let detail = scope["detail"].as_str().unwrap();
    assert!(
        detail.contains("private cgroup namespace") && detail.contains("not the host's"),
        "{scope}"
    );
    assert!(scope["fix"].as_str().unwrap().contains("--cgroupns=host"), "{scope}");
    let (code, _, stderr) = in_private_cgroup_namespace(
        true,
        &["run", "--metrics-addr", "127.0.0.1:0", "--findings", "/dev/null"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cgroup scope") && stderr.contains("--cgroupns=host"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The host's hierarchy still mounted (a bind mount of the host's root): the whole host,
    // though from a private namespace.
    let (code, stdout, stderr) = in_private_cgroup_namespace(false, &check);
    let scope = scope_of(&stdout);
    assert_eq!(scope["status"], "ok", "{stdout}{stderr}");
    assert!(scope["detail"].as_str().unwrap().contains("private cgroup namespace"), "{scope}");
    assert_eq!(code, Some(0), "{stdout}");
}

#[test]
fn config_file_errors_name_the_key_and_exit_2() {
    let dir = tests::util::scratch_dir("config-errors");
    for (name, text, needle) in [
        ("typo.yaml", "portz: [26257]\n", "portz"),
        ("range.toml", "ports = [0]\n", "ports"),
        ("addr.yaml", "metrics_addr: nowhere\n", "metrics_addr"),
        ("type.toml", "max_connections = \"lots\"\n", "max_connections"),
        ("settings.ini", "ports=1\n", ".toml"),
        ("peers.yaml", "alertmanager_url: [http://am:9093, am-1]\n", "alertmanager_url"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name} should name {needle}: {stderr}");
    }
}

#[test]
fn config_file_settings_apply_and_flags_win() -> anyhow::Result<()> {
    let _serial = tests::serial();
    let dir = tests::util::scratch_dir("config-apply");
    let path = dir.join("sensor.yaml");
    std::fs::write(
        &path,
        "ports: [26257, 5432]\nmax_connections: 128\nmetrics_addr: 127.0.0.1:1\n",
    )?;
    // The flag's metrics address wins over the file's (port 1 would fail to bind).
    let sensor = tests::sensor::Sensor::start(&["--config", path.to_str().unwrap()])?;
    let samples = sensor.metrics()?;
    for port in ["26257", "5432"] {
        assert!(
            samples.0.iter().any(|s| s.name == "pgwire_sensor_sessions_total"
                && s.labels.get("port").map(String::as_str) == Some(port)),
            "port {port} from the file is watched"
        );
    }
    // A retired setting (the connection table went when state moved into the sockets)
    // still loads, with a warning that names it.
    let log = sensor.stderr();
    assert!(
        log.contains("no longer used") && log.contains("max_connections"),
        "no warning about max_connections:\n{log}"
    );
    Ok(())
}
