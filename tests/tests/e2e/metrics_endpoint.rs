//! The metrics endpoint behind `--web-config` (node_exporter's format): TLS and basic auth
//! enforced as curl sees them, and a real Prometheus scraping through both.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use tests::{
    certs,
    promstack::Prometheus,
    util::{free_port, scratch_dir, serial, wait_for},
};

/// What curl got: the HTTP status (0 when no HTTP answer came: refused, a TLS failure) and
/// the body.
fn curl(args: &[impl AsRef<std::ffi::OsStr>], url: &str) -> anyhow::Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--write-out", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .context("running curl (scripts/bootstrap.sh --test-deps installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM: the sensor detaches and exits.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `sensor run --web-config web_config`, ready once curl with `client` (the CA, and a
/// client certificate where one is required) gets 200 from /healthz.
fn start_sensor(
    web_config: &Path,
    addr: SocketAddr,
    dir: &Path,
    client: &[String],
) -> anyhow::Result<Running> {
    let log = dir.join("sensor.log");
    let child = Command::new(tests::sensor::sensor_binary()?)
        .arg("run")
        .arg("--web-config")
        .arg(web_config)
        .args(["--metrics-addr", &addr.to_string(), "--findings"])
        .arg(dir.join("findings.jsonl"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut running = Running(child);
    let healthz = format!("https://localhost:{}/healthz", addr.port());
    let ready = wait_for("the sensor to attach", Duration::from_secs(30), || {
        if let Ok(Some(status)) = running.0.try_wait() {
            return Some(Err(anyhow::anyhow!("sensor exited early ({status})")));
        }
        matches!(curl(client, &healthz), Ok((200, _))).then_some(Ok(()))
    });
    match ready {
        Ok(Ok(())) => Ok(running),
        Ok(Err(err)) | Err(err) => {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{err:#}: {log}")
        }
    }
}

#[test]
fn tls_and_basic_auth_from_a_web_config_hold_for_curl_and_prometheus() -> anyhow::Result<()> {
    let _guard = serial();
    let dir = scratch_dir("web-config");
    certs::generate(&dir)?;
    let password = format!("scrape-{}", std::process::id());
    let hash = bcrypt::hash(&password, 4)?;
    let web_config = dir.join("web.yml");
    // Relative paths: from the file's own directory, as node_exporter reads them.
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )?;
    // The same file passes Prometheus's own checker of this format.
    let check =
        Command::new("promtool").arg("check").arg("web-config").arg(&web_config).output()?;
    assert!(check.status.success(), "promtool: {}", String::from_utf8_lossy(&check.stderr));

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let trusting = vec!["--cacert".to_string(), dir.join("ca.crt").display().to_string()];
    let _sensor = start_sensor(&web_config, addr, &dir, &trusting)?;
    let https = format!("https://localhost:{}", addr.port());
    let ca = dir.join("ca.crt");
    let ca = ["--cacert", ca.to_str().unwrap()];
    let with = |extra: &[&'static str]| -> Vec<String> {
        ca.iter().chain(extra).map(|arg| arg.to_string()).collect()
    };
    let creds = format!("prometheus:{password}");

    let authorized: Vec<String> = with(&["--user"]).into_iter().chain([creds.clone()]).collect();
    let (code, body) = curl(&authorized, &format!("{https}/metrics"))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pgwire_sensor_build_info{"), "{body}");
    // No credentials, a wrong password, an unknown user: 401, and nothing of the metrics.
    for user in [None, Some("prometheus:wrong".to_string()), Some(format!("other:{password}"))] {
        let args = match &user {
            Some(user) => with(&["--user"]).into_iter().chain([user.clone()]).collect(),
            None => with(&[]),
        };
        let (code, body) = curl(&args, &format!("{https}/metrics"))?;
        assert_eq!(code, 401, "{user:?}: {body}");
        assert!(!body.contains("pgwire_sensor"), "{user:?}: {body}");
    }
    // Plain HTTP gets no answer at all; a client that does not trust the CA gets nothing.
    let (code, _) = curl(&["--user", &creds], &format!("http://{addr}/metrics"))?;
    assert_eq!(code, 0, "plain HTTP must not be served");
    let (code, _) = curl(&["--user", &creds], &format!("{https}/metrics"))?;
    assert_eq!(code, 0, "a certificate from an unknown CA must fail verification");
    // The probe path stays open (kubelet sends no credentials) over TLS.
    assert_eq!(curl(&with(&[]), &format!("{https}/healthz"))?.0, 200);

    // A real Prometheus scrapes it as a central one would: https, the CA, basic auth.
    let password_file = dir.join("scrape-password");
    std::fs::write(&password_file, &password)?;
    let prometheus = Prometheus::start_with_config(&format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgwire-sensor\n    \
         scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    \
         basic_auth:\n      username: prometheus\n      password_file: {}\n    \
         static_configs:\n      - targets: [\"{addr}\"]\n",
        dir.join("ca.crt").display(),
        password_file.display(),
    ))?;
    let up = wait_for("Prometheus to scrape the sensor", Duration::from_secs(30), || {
        let series = prometheus.query("pgwire_sensor_build_info").ok()?;
        (!series.is_empty()).then_some(series)
    })
    .with_context(|| prometheus.log())?;
    assert_eq!(up[0]["metric"]["job"], "pgwire-sensor");
    let health = prometheus.query("up{job=\"pgwire-sensor\"}")?;
    assert_eq!(health[0]["value"][1], "1", "{health:?}");
    Ok(())
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() -> anyhow::Result<()> {
    let _guard = serial();
    let dir = scratch_dir("web-config-mtls");
    certs::generate(&dir)?;
    let (cert, key) = certs::client(&dir, "prometheus", true)?;
    let (rogue_cert, rogue_key) = certs::client(&dir, "rogue", false)?;
    let web_config = dir.join("web.yml");
    std::fs::write(
        &web_config,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    )?;
    let check =
        Command::new("promtool").arg("check").arg("web-config").arg(&web_config).output()?;
    assert!(check.status.success(), "promtool: {}", String::from_utf8_lossy(&check.stderr));
    let args = |cert: &Path, key: &Path| -> Vec<String> {
        ["--cacert", dir.join("ca.crt").to_str().unwrap(), "--cert", cert.to_str().unwrap()]
            .into_iter()
            .chain(["--key", key.to_str().unwrap()])
            .map(str::to_string)
            .collect()
    };
    let admitted = args(&cert, &key);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let _sensor = start_sensor(&web_config, addr, &dir, &admitted)?;
    let metrics = format!("https://localhost:{}/metrics", addr.port());

    let (code, body) = curl(&admitted, &metrics)?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pgwire_sensor_build_info{"), "{body}");
    // No certificate, or one no CA vouches for: no HTTP answer at all, not even /healthz.
    let no_certificate = ["--cacert".to_string(), dir.join("ca.crt").display().to_string()];
    assert_eq!(curl(&no_certificate, &metrics)?.0, 0, "no client certificate");
    assert_eq!(curl(&args(&rogue_cert, &rogue_key), &metrics)?.0, 0, "a self-signed one");
    let healthz = format!("https://localhost:{}/healthz", addr.port());
    assert_eq!(curl(&no_certificate, &healthz)?.0, 0, "mutual TLS covers every path");
    Ok(())
}
