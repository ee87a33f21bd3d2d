//! Packaging: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening; the Kubernetes DaemonSet asks for the capabilities and host mounts the sensor
//! needs and nothing more, and the whole bundle passes the Kubernetes and Prometheus
//! Operator schemas offline; the release binary (`cargo xtask dist`) is one self-contained
//! static file that runs with no shared library at all; the Debian packages and OCI images
//! (`cargo xtask package`) hold exactly that binary and what they should. The package
//! under a real systemd is `cargo xtask vm-test`'s (xtask/src/vm/systemd.rs).

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
    assert_eq!(unit_setting(&unit, "Restart").as_deref(), Some("always"));
    assert_eq!(unit_setting(&unit, "RestartPreventExitStatus").as_deref(), Some("2"));
    // The package's documentation, where the package puts it.
    assert_eq!(
        unit_setting(&unit, "Documentation").as_deref(),
        Some("file:/usr/share/doc/pgwire-sensor/README.md")
    );
    // The settings come from the file the package installs as a conffile: findings only
    // under its LogsDirectory, metrics on loopback; the sensor accepts the file.
    assert!(exec.ends_with("run --config /etc/pgwire-sensor/config.yaml"), "{exec}");
    let config = repo_path("deploy/debian/config.yaml");
    let settings: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&config)?)?;
    assert_eq!(settings["findings"], "/var/log/pgwire-sensor/findings.jsonl");
    assert_eq!(settings["metrics_addr"], "127.0.0.1:9477");
    let check = Command::new(sensor_binary()?)
        .args(["check", "--format", "json", "--config"])
        .arg(&config)
        .output()?;
    // 0 or 1 (ready or not on this machine); never 2 (the file refused) nor a crash.
    assert!(
        matches!(check.status.code(), Some(0 | 1)),
        "{:?}: {}",
        check.status,
        String::from_utf8_lossy(&check.stderr)
    );
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
    assert_eq!(pod["serviceAccountName"], "pgwire-sensor", "an account of its own, no token");
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
    // Findings to stdout (`kubectl logs`, log shippers) and to the node's file.
    assert!(args.contains(&"--findings=-"), "{args:?}");
    assert!(args.contains(&"--findings=/var/log/pgwire-sensor/findings.jsonl"), "{args:?}");
    let help = Command::new(sensor_binary()?).args(["run", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter_map(|a| a.strip_prefix("--")) {
        let name = flag.split('=').next().unwrap();
        assert!(help.contains(&format!("--{name}")), "the sensor has no --{name}");
    }
    Ok(())
}

/// Kubernetes minor versions the manifests are checked against (kubernetes-validate's own
/// copies of their schemas): those upstream supports and the ones managed clusters still
/// run under extended support.
const KUBERNETES_VERSIONS: [&str; 5] = ["1.33", "1.34", "1.35", "1.36", "1.37"];

fn yaml_documents(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).map_err(anyhow::Error::from))
        .collect()
}

fn output_of(command: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = command.output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

#[test]
fn the_kubernetes_bundle_passes_the_schemas_offline_and_carries_the_shipped_rules(
) -> anyhow::Result<()> {
    let bundle = repo_path("target/dist/pgwire-sensor-kubernetes.yaml");
    anyhow::ensure!(bundle.exists(), "{} missing: run `cargo xtask dist`", bundle.display());
    let text = std::fs::read_to_string(&bundle)?;
    let docs = yaml_documents(&text)?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "DaemonSet",
            "Service",
            "ServiceMonitor",
            "NetworkPolicy",
            "PrometheusRule"
        ]
    );
    // hostPID, hostPath and the added capabilities are what `baseline` forbids.
    assert_eq!(docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");

    // The built-in kinds, strictly (unknown fields refused), for each version.
    let validate = repo_path("tests/clients/.venv/bin/kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let (ok, out) =
            output_of(Command::new(&validate).args(["--strict", "-k", version]).arg(&bundle))?;
        assert!(ok, "Kubernetes {version}: {out}");
        assert_eq!(out.matches(" passed for resource ").count(), 5, "Kubernetes {version}: {out}");
    }
    // The Prometheus Operator's kinds against its CRD schemas.
    let (ok, out) = output_of(
        Command::new("node").arg(repo_path("tests/tools/crd-validate/validate.mjs")).arg(&bundle),
    )?;
    assert!(ok, "{out}");
    assert!(out.contains("ok ServiceMonitor/pgwire-sensor"), "{out}");
    assert!(out.contains("ok PrometheusRule/pgwire-sensor"), "{out}");

    // The PrometheusRule is deploy/prometheus/alerts.yml, not a copy that can drift, and its
    // groups load in Prometheus.
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let shipped = std::fs::read_to_string(repo_path("deploy/prometheus/alerts.yml"))?;
    assert_eq!(rule["spec"], yaml_documents(&shipped)?[0]);
    let groups = tests::util::scratch_dir("prometheusrule").join("groups.yml");
    std::fs::write(&groups, serde_yaml_ng::to_string(&rule["spec"])?)?;
    let (ok, out) = output_of(Command::new("promtool").args(["check", "rules"]).arg(&groups))?;
    assert!(ok && out.contains("SUCCESS"), "{out}");
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

/// The architectures released: (`uname -m` name, Debian's, OCI's).
const RELEASED: [(&str, &str, &str); 2] =
    [("x86_64", "amd64", "amd64"), ("aarch64", "arm64", "arm64")];

fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let (ok, out) = output_of(command)?;
    anyhow::ensure!(ok, "{command:?}: {out}");
    Ok(out)
}

fn sha256_of(path: &std::path::Path) -> anyhow::Result<String> {
    let out = run_ok(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_string())
}

#[test]
fn the_debian_packages_hold_the_release_binary_unit_config_and_docs() -> anyhow::Result<()> {
    for (arch, debian, _) in RELEASED {
        let deb = repo_path(&format!("target/dist/pgwire-sensor_0.1.0-1_{debian}.deb"));
        anyhow::ensure!(deb.exists(), "{} missing: run `cargo xtask package`", deb.display());
        let field =
            |name: &str| run_ok(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
        assert_eq!(field("Package")?.trim(), "pgwire-sensor");
        assert_eq!(field("Version")?.trim(), "0.1.0-1");
        assert_eq!(field("Architecture")?.trim(), debian);
        // A static binary: nothing but the helpers its maintainer scripts call.
        assert_eq!(field("Depends")?.trim(), "init-system-helpers");

        let dir = tests::util::scratch_dir(&format!("deb-{arch}"));
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
        run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(dir.join("control")))?;
        let root = dir.join("root");
        // The very binary `cargo xtask dist` released, the unit and files as shipped.
        let binary = root.join("usr/bin/pgwire-sensor");
        assert_eq!(
            sha256_of(&binary)?,
            sha256_of(&repo_path(&format!("target/dist/pgwire-sensor-{arch}")))?
        );
        for (installed, source) in [
            (
                "usr/lib/systemd/system/pgwire-sensor.service",
                "deploy/systemd/pgwire-sensor.service",
            ),
            ("etc/pgwire-sensor/config.yaml", "deploy/debian/config.yaml"),
            ("etc/logrotate.d/pgwire-sensor", "deploy/systemd/pgwire-sensor.logrotate"),
            ("usr/share/doc/pgwire-sensor/README.md", "README.md"),
            (
                "usr/share/doc/pgwire-sensor/examples/prometheus/alerts.yml",
                "deploy/prometheus/alerts.yml",
            ),
        ] {
            let shipped = std::fs::read(root.join(installed))?;
            // Not assert_eq: a whole README as a byte array helps nobody.
            let same = shipped == std::fs::read(repo_path(source))?;
            assert!(same, "{installed} differs from {source}: run `cargo xtask package`");
        }
        // The unit's Documentation= and the alerts' runbook_url point into the package.
        let unit =
            std::fs::read_to_string(root.join("usr/lib/systemd/system/pgwire-sensor.service"))?;
        let doc = unit_setting(&unit, "Documentation").unwrap();
        assert!(root.join(doc.trim_start_matches("file:/")).exists(), "{doc}");
        let runbooks = std::fs::read_dir(repo_path("docs/runbooks"))?.count();
        let packaged =
            std::fs::read_dir(root.join("usr/share/doc/pgwire-sensor/runbooks"))?.count();
        assert_eq!(packaged, runbooks);

        // Conffiles kept over upgrades; the unit enabled and started on install, findings
        // deleted only on purge.
        let control = dir.join("control");
        let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
        assert!(conffiles.contains("/etc/pgwire-sensor/config.yaml"), "{conffiles}");
        assert!(conffiles.contains("/etc/logrotate.d/pgwire-sensor"), "{conffiles}");
        let postinst = std::fs::read_to_string(control.join("postinst"))?;
        assert!(postinst.contains("deb-systemd-helper enable pgwire-sensor.service"), "{postinst}");
        assert!(postinst.contains("deb-systemd-invoke"), "{postinst}");
        let postrm = std::fs::read_to_string(control.join("postrm"))?;
        assert!(postrm.contains("rm -rf /var/log/private/pgwire-sensor"), "{postrm}");
    }
    Ok(())
}

#[test]
fn the_oci_images_hold_only_the_release_binary_and_run_as_nobody() -> anyhow::Result<()> {
    for (arch, _, oci) in RELEASED {
        let archive = repo_path(&format!("target/dist/pgwire-sensor-image-{arch}.tar"));
        anyhow::ensure!(
            archive.exists(),
            "{} missing: run `cargo xtask package`",
            archive.display()
        );
        let dir = tests::util::scratch_dir(&format!("image-{arch}"));
        run_ok(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&dir))?;
        let json = |path: std::path::PathBuf| -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::from_slice(&std::fs::read(path)?)?)
        };
        let blob = |digest: &serde_json::Value| {
            dir.join("blobs/sha256")
                .join(digest.as_str().unwrap_or_default().trim_start_matches("sha256:"))
        };
        let index = json(dir.join("index.json"))?;
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        let manifest = json(blob(&manifests[0]["digest"]))?;
        let config = json(blob(&manifest["config"]["digest"]))?;
        assert_eq!(config["architecture"], oci, "{config}");
        assert_eq!(config["os"], "linux");
        let run = &config["config"];
        assert_eq!(run["User"], "65534:65534", "not root by default");
        assert_eq!(run["Entrypoint"], serde_json::json!(["/usr/bin/pgwire-sensor"]));
        assert_eq!(run["Cmd"], serde_json::json!(["run"]));
        let labels = &run["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], "pgwire-sensor");
        assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
        assert!(
            revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit()),
            "{labels}"
        );

        // FROM scratch: one layer, holding the binary and nothing else.
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{manifest}");
        let layer = blob(&layers[0]["digest"]);
        let listing = run_ok(Command::new("tar").arg("-tf").arg(&layer))?;
        let files: Vec<&str> = listing.lines().filter(|l| !l.ends_with('/')).collect();
        assert_eq!(files, ["usr/bin/pgwire-sensor"], "{listing}");
        let unpacked = dir.join("layer");
        std::fs::create_dir_all(&unpacked)?;
        run_ok(Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&unpacked))?;
        let binary = unpacked.join("usr/bin/pgwire-sensor");
        assert_eq!(
            sha256_of(&binary)?,
            sha256_of(&repo_path(&format!("target/dist/pgwire-sensor-{arch}")))?
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&binary)?.permissions().mode() & 0o777, 0o755);
    }
    Ok(())
}
