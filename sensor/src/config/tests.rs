use std::path::Path;

use super::*;

fn validate(args: &[&str]) -> anyhow::Result<RunConfig> {
    let (settings, matches) = settings_from(args);
    settings.validate(&Origins::new(Some(&matches), None))
}

#[test]
fn ports_are_sorted_and_deduplicated() {
    assert_eq!(validate(&["--ports", "5432,26257,5432"]).unwrap().ports, vec![5432, 26257]);
}

#[test]
fn port_zero_and_empty_lists_are_refused() {
    let mut empty = Settings::default();
    empty.ports.clear();
    let err = empty.validate(&Origins::new(None, None)).unwrap_err().to_string();
    assert!(err.contains("--ports"), "{err}");
    let err = validate(&["--ports", "0"]).unwrap_err().to_string();
    assert!(err.contains("1-65535") && err.contains("--ports"), "{err}");
}

#[test]
fn too_many_ports_are_refused() {
    let many: Vec<String> = (1..=(MAX_WATCHED_PORTS as u16 + 1)).map(|p| p.to_string()).collect();
    assert!(validate(&["--ports", &many.join(",")]).is_err());
}

#[test]
fn alertmanager_settings() {
    let am = validate(&[
        "--alertmanager-url",
        "http://127.0.0.1:9093",
        "--alertmanager-min-severity",
        "high",
    ])
    .unwrap()
    .alertmanager
    .unwrap();
    assert_eq!(am.min_severity, Severity::High);
    assert!(validate(&["--alertmanager-url", "127.0.0.1:9093"]).is_err());
    let err =
        validate(&["--alertmanager-url", "http://am:9093", "--alertmanager-min-severity", "info"])
            .unwrap_err()
            .to_string();
    assert!(err.contains("--alertmanager-min-severity"), "{err}");
    assert_eq!(Settings::default().alertmanager_min_severity, Severity::Low);
    assert_eq!(am.runbook_base, RUNBOOK_BASE_URL);
}

fn error(args: &[&str]) -> String {
    format!("{:#}", validate(args).unwrap_err())
}

#[test]
fn every_alertmanager_peer_once_and_urls_without_secrets() {
    let am = validate(&[
        "--alertmanager-url",
        "http://am-0:9093",
        "--alertmanager-url",
        "https://am-1:9093/",
        "--alertmanager-url",
        "http://am-0:9093",
    ])
    .unwrap()
    .alertmanager
    .unwrap();
    let peers: Vec<String> = am.delivery.peers.iter().map(|p| p.to_string()).collect();
    assert_eq!(peers, ["http://am-0:9093", "https://am-1:9093"]);
    let err = error(&["--alertmanager-url", "https://sensor:hunter2@am:9093"]);
    assert!(err.starts_with("--alertmanager-url:") && !err.contains("hunter2"), "{err}");
    // A file takes one URL or a list.
    for text in ["alertmanager_url: http://am:9093\n", "alertmanager_url: [http://am:9093]\n"] {
        let file = crate::config_file::parse(Path::new("s.yaml"), text).unwrap();
        assert_eq!(file.alertmanager_url, ["http://am:9093"]);
    }
}

#[test]
fn alertmanager_tls_and_auth_are_checked_at_start_and_errors_name_the_flag() {
    let files = [("password", "pw\n"), ("token", "t0ken"), ("empty", "")];
    let dir = crate::test_files::scratch_dir("config-am-auth", &files);
    let path = |name: &str| dir.join(name).display().to_string();
    let (password, token, empty) = (path("password"), path("token"), path("empty"));
    fn with<'a>(more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--alertmanager-url", "https://am:9093"];
        args.extend_from_slice(more);
        args
    }

    let basic = with(&["--alertmanager-basic-auth-user", "sensor"]);
    let basic = [&basic[..], &["--alertmanager-basic-auth-password-file", &password]].concat();
    let delivery = validate(&basic).unwrap().alertmanager.unwrap().delivery;
    assert!(
        matches!(delivery.credentials, Some(Credentials::Basic { ref user, .. }) if user == "sensor")
    );
    let bearer = validate(&with(&["--alertmanager-bearer-token-file", &token])).unwrap();
    assert!(matches!(
        bearer.alertmanager.unwrap().delivery.credentials,
        Some(Credentials::Bearer { .. })
    ));

    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            with(&["--alertmanager-basic-auth-user", "sensor"]),
            "--alertmanager-basic-auth-user:",
            "password-file",
        ),
        (
            with(&["--alertmanager-basic-auth-password-file", &password]),
            "--alertmanager-basic-auth-password-file:",
            "needs --alertmanager-basic-auth-user",
        ),
        (
            [&basic[..], &["--alertmanager-bearer-token-file", &token]].concat(),
            "--alertmanager-bearer-token-file:",
            "not both",
        ),
        (
            with(&["--alertmanager-bearer-token-file", &empty]),
            "--alertmanager-bearer-token-file:",
            "is empty",
        ),
        (
            with(&["--alertmanager-bearer-token-file", "/nonexistent/token"]),
            "--alertmanager-bearer-token-file:",
            "cannot read",
        ),
        (with(&["--alertmanager-ca-file", &token]), "--alertmanager-ca-file:", "PEM"),
        (
            vec!["--alertmanager-url", "http://am:9093", "--alertmanager-ca-file", &token],
            "--alertmanager-ca-file:",
            "no --alertmanager-url is https",
        ),
        (
            vec!["--alertmanager-bearer-token-file", &token],
            "--alertmanager-bearer-token-file:",
            "needs --alertmanager-url",
        ),
        (with(&["--runbook-base-url", "runbooks"]), "--runbook-base-url:", "not a URL"),
        (
            vec!["--runbook-base-url", "https://wiki/rb"],
            "--runbook-base-url:",
            "needs --alertmanager-url",
        ),
    ];
    for (args, flag, says) in cases {
        let err = error(&args);
        assert!(err.starts_with(flag) && err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("t0ken") && !err.contains("pw\n"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn roles() {
    let both = validate(&["--roles", "server,client,server"]).unwrap().roles;
    assert_eq!(both, vec![Role::Client, Role::Server]);
    assert_eq!(role_bits(&both), 3);
    assert_eq!(role_bits(&[Role::Server]), 2);
    assert_eq!(Settings::default().roles, vec![Role::Client]);
}

#[test]
fn ring_buffer_sizes() {
    assert_eq!(validate(&["--ring-buffer-bytes", "4096"]).unwrap().ring_buffer_bytes, 4096);
    assert!(validate(&["--ring-buffer-bytes", "5000"]).is_err());
    assert!(validate(&["--ring-buffer-bytes", "2048"]).is_err());
}

#[test]
fn findings_target() {
    assert_eq!("-".parse::<FindingsTarget>().unwrap(), FindingsTarget::Stdout);
    assert_eq!(
        "/var/log/f.jsonl".parse::<FindingsTarget>().unwrap(),
        FindingsTarget::File("/var/log/f.jsonl".into())
    );
    assert!("".parse::<FindingsTarget>().is_err());
}

#[test]
fn findings_go_to_every_target_given_each_once() {
    let both = validate(&["--findings", "-", "--findings", "/var/log/f.jsonl"]).unwrap().findings;
    assert_eq!(both, [FindingsTarget::Stdout, FindingsTarget::File("/var/log/f.jsonl".into())]);
    let err = error(&["--findings", "/var/log/f.jsonl", "--findings", "/var/log/f.jsonl"]);
    assert!(err.contains("--findings") && err.contains("given twice"), "{err}");
    let file =
        crate::config_file::parse(Path::new("s.yaml"), "findings: [\"-\", /var/log/f.jsonl]\n")
            .unwrap();
    assert_eq!(file.findings, both);
    let one = crate::config_file::parse(Path::new("s.yaml"), "findings: /var/log/f.jsonl\n");
    assert_eq!(one.unwrap().findings, both[1..]);
}

#[test]
fn a_web_config_is_loaded_at_start_and_its_errors_name_the_flag() {
    assert_eq!(validate(&[]).unwrap().web.scheme(), "http");
    let dir = crate::test_files::scratch_dir(
        "config-web",
        &[("web.yml", "basic_auth_users:\n  a: plain\n")],
    );
    let err = error(&["--web-config", dir.join("web.yml").to_str().unwrap()]);
    assert!(err.contains("--web-config") && err.contains("not a bcrypt hash"), "{err}");
    let err = error(&["--web-config", "/nonexistent/web.yml"]);
    assert!(err.contains("--web-config") && err.contains("cannot read"), "{err}");
}

#[test]
fn defaults_come_from_the_flags() {
    let d = validate(&[]).unwrap();
    assert_eq!(d.ports, vec![26257]);
    assert_eq!(d.metrics_addr, SocketAddr::from(([127, 0, 0, 1], 9477)));
    assert_eq!(d.findings, [FindingsTarget::Stdout]);
    assert_eq!(d.ring_buffer_bytes, EVENTS_RING_BYTES);
    assert_eq!(d.auth_wait, Duration::from_secs(1));
    assert!(d.ignored_settings.is_empty());
}

#[test]
fn file_values_apply_and_flags_given_win() {
    let file = crate::config_file::parse(
        Path::new("s.yaml"),
        "ports: [5432]\nring_buffer_bytes: 8192\nroles: [server]\n",
    )
    .unwrap();
    let (flags, matches) = settings_from(&["--ring-buffer-bytes", "16384"]);
    let path = Path::new("s.yaml");
    let origins = Origins::new(Some(&matches), Some(path));
    let merged = Settings::overlay(file, flags, &origins).validate(&origins).unwrap();
    assert_eq!(merged.ports, vec![5432], "from the file");
    assert_eq!(merged.roles, vec![Role::Server], "from the file");
    assert_eq!(merged.ring_buffer_bytes, 16384, "the flag wins");
    assert_eq!(merged.metrics_addr.port(), 9477, "neither: the default");
}

#[test]
fn errors_name_the_file_key_when_the_file_set_it() {
    let file = crate::config_file::parse(Path::new("s.toml"), "ports = [0]\n").unwrap();
    let (flags, matches) = settings_from(&[]);
    let path = Path::new("s.toml");
    let origins = Origins::new(Some(&matches), Some(path));
    let err = Settings::overlay(file, flags, &origins).validate(&origins).unwrap_err();
    assert!(err.to_string().contains("key `ports` in --config s.toml"), "{err}");
}

#[test]
fn a_retired_setting_still_loads_and_is_named_for_the_warning() {
    let file = crate::config_file::parse(Path::new("s.yaml"), "max_connections: 128\n").unwrap();
    let (flags, matches) = settings_from(&[]);
    let origins = Origins::new(Some(&matches), Some(Path::new("s.yaml")));
    let merged = Settings::overlay(file, flags, &origins).validate(&origins).unwrap();
    assert_eq!(merged.ignored_settings, vec!["max_connections"]);
    let (flags, _) = settings_from(&["--max-connections", "256"]);
    assert_eq!(flags.max_connections, Some(256), "the old flag is still accepted");
}
