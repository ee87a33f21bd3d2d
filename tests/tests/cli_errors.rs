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

#[test]
fn without_privileges_run_exits_1_and_check_names_the_missing_capabilities() {
    // setpriv (util-linux) drops to nobody with no capabilities at all.
    let binary = sensor_binary().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&binary)
        .args(["run", "--findings", "/dev/null", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("capabilities") && stderr.contains("CAP_BPF"), "{stderr}");
    assert!(stderr.contains("root"), "the message says how to fix it: {stderr}");

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&binary)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISSING  capabilities"), "{stdout}");
    assert!(stdout.contains("ok       kernel version"), "{stdout}");
}

#[test]
fn check_passes_as_root_and_version_prints() {
    let (code, stderr) = run(&["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = Command::new(sensor_binary().unwrap()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sensor 0.1.0"));
}
