//! Issue 7: the sensor as a daemon on every app host. Least privilege (non-root with exactly
//! the capabilities it needs, dropping two once attached), lifecycle (SIGKILL leaves nothing
//! attached, restarts attach once, one instance per host, findings file 0600 and reopened on
//! SIGHUP, write errors counted), and a metrics endpoint that bounded clients cannot starve.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    process::Command,
    time::Duration,
};

use tests::{
    clients::psql,
    hosts::cgroup2_root,
    metrics::http_get,
    pg::{PgOptions, PgServer},
    sensor::{sensor_binary, Sensor},
    serial,
    util::{repo_path, scratch_dir, wait_for},
};

/// Names of the programs attached at the cgroup v2 root that are ours, as bpftool (the
/// kernel) lists them.
fn our_attached_programs() -> anyhow::Result<Vec<String>> {
    let out =
        Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cgroup2_root()?).output()?;
    anyhow::ensure!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let list: serde_json::Value =
        if text.trim().is_empty() { serde_json::json!([]) } else { serde_json::from_str(&text)? };
    let mut names: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("sensor_"))
        .map(str::to_string)
        .collect();
    names.sort();
    Ok(names)
}

const ALL_FOUR: [&str; 4] =
    ["sensor_connect4", "sensor_connect6", "sensor_egress", "sensor_ingress"];

fn nothing_of_ours_attached() -> anyhow::Result<()> {
    wait_for("our programs to be detached", Duration::from_secs(5), || {
        our_attached_programs().ok().filter(|p| p.is_empty())
    })?;
    Ok(())
}

/// setpriv as user nobody, with no supplementary groups.
const AS_NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// `AS_NOBODY` with exactly `caps` (e.g. "+bpf,+perfmon,+net_admin") inheritable, ambient
/// and in the bounding set.
fn as_nobody_with(caps: &str) -> Vec<String> {
    let mut args: Vec<String> = AS_NOBODY.iter().map(|a| a.to_string()).collect();
    args.push(format!("--inh-caps=-all,{caps}"));
    args.push(format!("--ambient-caps=-all,{caps}"));
    args.push(format!("--bounding-set=-all,{caps}"));
    args
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn runs_as_nobody_with_exactly_three_capabilities_and_keeps_one_after_attach() -> anyhow::Result<()>
{
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("daemon-caps"))?;
    let dir = scratch_dir("nobody-findings");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
    let wrapper = as_nobody_with("+bpf,+perfmon,+net_admin");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let sensor = Sensor::launch(&wrapper, &[], Some(dir.join("findings.jsonl")))?;

    assert_eq!(status_field(sensor.pid(), "Uid:").split_whitespace().next(), Some("65534"));
    // Once attached only CAP_NET_ADMIN (bit 12, for asking the kernel what is attached)
    // is left: CAP_BPF and CAP_PERFMON are gone from every set.
    for set in ["CapEff:", "CapPrm:"] {
        assert_eq!(status_field(sensor.pid(), set), "0000000000001000", "{set}");
    }
    assert_eq!(status_field(sensor.pid(), "CapAmb:"), "0000000000000000");
    assert_eq!(status_field(sensor.pid(), "NoNewPrivs:"), "1");
    assert_eq!(our_attached_programs()?, ALL_FOUR);

    let plain = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    let found = sensor.wait_findings_of(plain.pid, 1)?;
    assert_eq!(found[0]["verdict"], "plaintext");
    assert_eq!(found[0]["process"]["comm"], "psql");
    assert!(found[0]["process"]["cmdline"].as_str().is_some_and(|c| c.contains("psql")));
    let metrics = sensor.metrics()?;
    assert!(metrics.sessions("plaintext", "client") >= 1.0, "counters still read without CAP_BPF");
    assert_eq!(http_get(sensor.metrics_addr, "/healthz")?.0, 200, "BPF_PROG_QUERY still works");
    let mode = std::fs::metadata(&sensor.findings_path)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    assert!(sensor.stop()?.success());
    nothing_of_ours_attached()
}

#[test]
fn each_missing_capability_is_named_and_nothing_is_attached() -> anyhow::Result<()> {
    let _serial = serial();
    let binary = sensor_binary()?;
    for (missing, others) in [
        ("CAP_BPF", "+perfmon,+net_admin"),
        ("CAP_PERFMON", "+bpf,+net_admin"),
        ("CAP_NET_ADMIN", "+bpf,+perfmon"),
    ] {
        let wrapper = as_nobody_with(others);
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(&binary)
            .args(["run", "--findings", "/dev/null", "--metrics-addr", "127.0.0.1:0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{missing}: {stderr}");
        assert!(stderr.contains(missing), "names {missing}: {stderr}");
        assert!(stderr.contains("AmbientCapabilities"), "says how to grant it: {stderr}");
        assert!(our_attached_programs()?.is_empty());

        let out =
            Command::new(&wrapper[0]).args(&wrapper[1..]).arg(&binary).arg("check").output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&format!("MISSING  {missing}")), "{stdout}");
        assert_eq!(stdout.matches("MISSING").count(), 1, "only {missing} is missing: {stdout}");
    }
    Ok(())
}

#[test]
fn sigkill_leaves_nothing_attached_and_a_restart_attaches_exactly_once() -> anyhow::Result<()> {
    let _serial = serial();
    nothing_of_ours_attached()?;
    let first = Sensor::start(&[])?;
    assert_eq!(our_attached_programs()?, ALL_FOUR);
    first.kill9()?;
    nothing_of_ours_attached()?;

    let second = Sensor::start(&[])?;
    assert_eq!(our_attached_programs()?, ALL_FOUR, "attached once, not on top of old ones");
    let status = second.stop()?;
    assert_eq!(status.code(), Some(0), "SIGTERM: clean exit");
    nothing_of_ours_attached()
}

#[test]
fn a_second_instance_refuses_unless_asked() -> anyhow::Result<()> {
    let _serial = serial();
    let first = Sensor::start(&[])?;
    let out = Command::new(sensor_binary()?)
        .args(["run", "--findings", "/dev/null", "--metrics-addr", "127.0.0.1:0"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another sensor is already running"), "{stderr}");
    assert!(stderr.contains("--allow-second-instance"), "{stderr}");
    assert_eq!(our_attached_programs()?, ALL_FOUR, "the refused one attached nothing");

    let beside = Sensor::start(&["--allow-second-instance"])?;
    assert_eq!(our_attached_programs()?.len(), 8, "asked for: two sets");
    beside.stop()?;
    assert_eq!(our_attached_programs()?, ALL_FOUR);
    first.stop()?;
    nothing_of_ours_attached()
}

#[test]
fn findings_file_reopens_on_sighup_and_a_full_disk_is_counted_not_fatal() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("daemon-files"))?;
    let sensor = Sensor::start(&[])?;
    let one = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    sensor.wait_findings_of(one.pid, 1)?;

    // logrotate moves the file away, then signals.
    let rotated = sensor.findings_path.with_extension("jsonl.1");
    std::fs::rename(&sensor.findings_path, &rotated)?;
    sensor.signal(libc::SIGHUP);
    wait_for("the reopen", Duration::from_secs(5), || {
        sensor.stderr().contains("findings file reopened").then_some(())
    })?;
    let two = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    sensor.wait_findings_of(two.pid, 1)?;
    assert!(sensor.findings_of(one.pid)?.is_empty(), "the new file has only the new finding");
    let old = std::fs::read_to_string(&rotated)?;
    assert_eq!(old.lines().count(), 1, "the rotated file kept the old one: {old}");
    let mode = std::fs::metadata(&sensor.findings_path)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the new file is 0600 too");
    assert!(sensor.stop()?.success());

    // /dev/full: every write fails with ENOSPC.
    let full = Sensor::launch(&[], &[], Some("/dev/full".into()))?;
    let three = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    let errors = wait_for("a counted write error", Duration::from_secs(10), || {
        let m = full.metrics().ok()?;
        (m.get("pgwire_sensor_findings_write_errors_total") >= 1.0).then_some(m)
    })?;
    assert!(errors.sessions("plaintext", "client") >= 1.0, "the session itself is counted");
    assert_eq!(http_get(full.metrics_addr, "/healthz")?.0, 200, "still serving, still attached");
    assert!(full.stderr().contains("No space left"), "reported: {}", full.stderr());
    let _ = three;
    assert!(full.stop()?.success(), "a full disk is not a crash");
    Ok(())
}

#[test]
fn the_metrics_endpoint_survives_idle_floods_and_huge_requests() -> anyhow::Result<()> {
    let _serial = serial();
    let sensor = Sensor::start(&[])?;
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", sensor.pid())).map(|d| d.count());
    let fds_before = fds()?;

    // 300 connections that never send a byte (slowloris).
    let idle: Vec<TcpStream> =
        (0..300).filter_map(|_| TcpStream::connect(sensor.metrics_addr).ok()).collect();
    assert!(idle.len() >= 250, "the kernel accepted the connections");
    std::thread::sleep(Duration::from_millis(500));
    let held = fds()? - fds_before;
    assert!(held <= 40, "the sensor holds at most its limit of connections, not all: {held}");

    // Idle ones time out; then a scrape works again, and the refusals were counted.
    let samples =
        wait_for("a scrape to succeed again", Duration::from_secs(15), || sensor.metrics().ok())?;
    assert!(samples.get("pgwire_sensor_http_connections_refused_total") >= 200.0);
    drop(idle);

    // A 1 MiB request head: refused (431) or cut off, never buffered.
    let mut big = TcpStream::connect(sensor.metrics_addr)?;
    big.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head =
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = big.write_all(head.as_bytes()); // the server may close mid-way
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert_eq!(http_get(sensor.metrics_addr, "/healthz")?.0, 200);
    let rss_kib: u64 = status_field(sensor.pid(), "VmRSS:")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(rss_kib < 64 * 1024, "memory stays bounded: {rss_kib} KiB");
    assert!(sensor.stop()?.success());
    Ok(())
}

/// Every syscall a set of systemd syscall-filter items allows, groups (`@name`) expanded
/// by systemd-analyze itself.
fn expand_syscall_filter(items: &[&str]) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut allowed = std::collections::HashSet::new();
    let mut todo: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    let mut seen_groups = std::collections::HashSet::new();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            allowed.insert(item);
            continue;
        }
        if !seen_groups.insert(item.clone()) {
            continue;
        }
        let out = Command::new("systemd-analyze").args(["syscall-filter", &item]).output()?;
        anyhow::ensure!(out.status.success(), "systemd-analyze syscall-filter {item}");
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let name = line.trim();
            if !name.is_empty() && !name.starts_with('#') {
                todo.push(name.to_string());
            }
        }
    }
    Ok(allowed)
}

#[test]
fn the_systemd_units_syscall_filter_allows_every_syscall_the_sensor_makes() -> anyhow::Result<()> {
    let _serial = serial();
    let unit = std::fs::read_to_string(repo_path("deploy/systemd/pgwire-sensor.service"))?;
    let filter: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!filter.is_empty(), "the unit has a SystemCallFilter");
    let allowed = expand_syscall_filter(&filter)?;

    // The whole life of a sensor under strace: start, attach, a real session, a scrape,
    // a reopen, a clean stop.
    let pg = PgServer::start(PgOptions::no_tls("daemon-syscalls"))?;
    let trace = scratch_dir("strace").join("trace");
    let trace_arg = trace.display().to_string();
    let sensor = Sensor::launch(&["strace", "-f", "-qq", "-o", &trace_arg], &[], None)?;
    let plain = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    sensor.wait_findings_of(plain.pid, 1)?;
    sensor.metrics()?;
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", sensor.pid()))?;
    let sensor_pid: i32 = children.split_whitespace().next().unwrap().parse()?;
    // SAFETY: kill(2) on the traced sensor: SIGHUP to reopen, then SIGTERM to stop.
    unsafe { libc::kill(sensor_pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(sensor_pid, libc::SIGTERM) };
    assert!(sensor.wait_exit()?.success());

    let text = std::fs::read_to_string(&trace)?;
    let mut used = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((_pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        if rest.starts_with('<') || rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some(name) = rest.split('(').next().filter(|n| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }) {
            used.insert(name.to_string());
        }
    }
    assert!(used.contains("bpf") && used.contains("capset"), "the trace is real: {used:?}");
    let refused: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(refused.is_empty(), "the unit's SystemCallFilter would refuse {refused:?}");

    // And every socket family it opens is one RestrictAddressFamilies= lets through.
    let families: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .flat_map(str::split_whitespace)
        .collect();
    let opened: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split_once("socket(")?.1.split(',').next()).collect();
    assert!(opened.contains("AF_INET") && opened.contains("AF_UNIX"), "{opened:?}");
    for family in &opened {
        assert!(families.contains(family), "RestrictAddressFamilies would refuse {family}");
    }
    Ok(())
}

#[test]
fn runs_on_a_read_only_root_writing_only_its_findings_directory() -> anyhow::Result<()> {
    // What ProtectSystem=strict (systemd) and readOnlyRootFilesystem (Kubernetes) leave it:
    // a private mount namespace where every mount is read-only, the findings directory the
    // one writable place.
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("daemon-readonly"))?;
    let dir = scratch_dir("readonly-findings");
    let script = format!(
        "for m in $(awk '{{print $2}}' /proc/self/mounts); do \
           mount -o remount,bind,ro \"$m\" 2>/dev/null; done; \
         mount --bind {0} {0} && mount -o remount,bind,rw {0} && exec \"$0\" \"$@\"",
        dir.display()
    );
    let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &script];
    let sensor = Sensor::launch(&wrapper, &[], Some(dir.join("findings.jsonl")))?;
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", sensor.pid()))?;
    let findings_dir = dir.display().to_string();
    // Only the last mount at a path is visible (stacked mounts hide the ones below).
    let mut visible = std::collections::BTreeMap::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        visible.insert(fields[1], fields[3].split(',').any(|o| o == "ro"));
    }
    let writable: Vec<&str> = visible.iter().filter(|(_, ro)| !**ro).map(|(m, _)| *m).collect();
    assert_eq!(writable, [findings_dir.as_str()], "only the findings directory is writable");

    let plain = psql(&pg, "sslmode=disable", "postgres", "postgres")?.expect_success()?;
    sensor.wait_findings_of(plain.pid, 1)?;
    sensor.signal(libc::SIGHUP);
    wait_for("the reopen", Duration::from_secs(5), || {
        sensor.stderr().contains("findings file reopened").then_some(())
    })?;
    assert!(sensor.stop()?.success());
    Ok(())
}

#[test]
fn an_unprivileged_squatter_on_the_lock_cannot_keep_the_sensor_from_starting() -> anyhow::Result<()>
{
    let _serial = serial();
    for listen in ["s.listen(1)", "pass"] {
        // nobody binds the lock's name first (listening like a sensor, or not at all).
        let code = format!(
            "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0pgwire-sensor')\n\
             {listen}\nprint('bound', flush=True)\ntime.sleep(60)\n"
        );
        let mut squatter = Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args(["/usr/bin/python3", "-c", &code])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(squatter.stdout.take().unwrap()),
            &mut line,
        )?;
        assert_eq!(line.trim(), "bound");
        let sensor = Sensor::start(&[]);
        squatter.kill()?;
        squatter.wait()?;
        let sensor = sensor?;
        assert!(sensor.stderr().contains("not a sensor"), "warned: {}", sensor.stderr());
        assert_eq!(our_attached_programs()?, ALL_FOUR);
        assert!(sensor.stop()?.success());
    }
    Ok(())
}
