//! Issue 5 end to end: real Prometheus scraping the sensor and evaluating
//! deploy/prometheus/alerts.yml, real Alertmanager (deploy/alertmanager/alertmanager.yml)
//! receiving the sensor's pushed alerts and delivering to a webhook. A plaintext session by
//! a real psql must (a) fire the Prometheus alert and (b) reach the webhook with its
//! process and user.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    certs,
    clients::{psql, psql_at, FlaskApp},
    metrics::http_get,
    pg::{PgOptions, PgServer},
    promstack::{Alertmanager, AlertmanagerOptions, Prometheus, Webhook},
    sensor::Sensor,
    serial,
    util::{free_port, scratch_dir, wait_for},
};

#[test]
fn a_plaintext_session_fires_the_rule_and_reaches_on_call_through_alertmanager(
) -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-alerting"))?;
    pg.admin_sql("CREATE ROLE billing LOGIN")?;
    let webhook = Webhook::start()?;
    let alertmanager = Alertmanager::start(&webhook)?;
    let am_url = format!("http://{}", alertmanager.addr);
    let sensor = Sensor::start(&["--alertmanager-url", &am_url])?;
    let prometheus = Prometheus::start(sensor.metrics_addr, alertmanager.addr)?;
    wait_for("Prometheus to scrape the sensor", Duration::from_secs(30), || {
        let up = prometheus.api("/api/v1/query?query=up%7Bjob%3D%22pgwire-sensor%22%7D").ok()?;
        (up["data"]["result"][0]["value"][1] == "1").then_some(())
    })?;
    // Let Prometheus see the counter at zero first, so increase() has a baseline.
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    let client =
        psql(&pg, "sslmode=disable gssencmode=disable", "billing", "postgres")?.expect_success()?;

    // (b) The sensor's own alert, delivered by Alertmanager to the webhook.
    let delivered = wait_for("the sensor's alert at the webhook", Duration::from_secs(30), || {
        webhook.alerts().into_iter().find(|a| {
            a["labels"]["alertname"] == "PgwirePlaintextSession"
                && a["annotations"]["pid"].as_str() == Some(client.pid.to_string().as_str())
        })
    })?;
    let push_latency = started.elapsed();
    assert_eq!(delivered["labels"]["severity"], "warning");
    assert_eq!(delivered["labels"]["sensor_severity"], "high");
    assert_eq!(delivered["annotations"]["sessions"], "1");
    assert!(delivered["labels"]["identity"].as_str().is_some_and(|i| i.len() == 16));
    assert_eq!(delivered["labels"]["verdict"], "plaintext");
    assert_eq!(delivered["labels"]["port"], "26257");
    assert!(delivered["labels"].get("method").is_none(), "no password: no method");
    assert_eq!(delivered["annotations"]["process"], "psql");
    assert!(delivered["annotations"]["exe"].as_str().unwrap().ends_with("/psql"));
    assert_eq!(delivered["annotations"]["user"], "root");
    assert_eq!(delivered["annotations"]["db_user"], "billing");
    assert_eq!(delivered["annotations"]["database"], "postgres");
    assert!(delivered["annotations"]["summary"].as_str().unwrap().contains("psql"));
    assert!(delivered["labels"].get("pid").is_none(), "no pid label");

    // (a) The Prometheus rule from alerts.yml, from the kernel-counted metric.
    let fired = wait_for("PgwirePlaintextSession to fire", Duration::from_secs(60), || {
        prometheus.firing("PgwirePlaintextSession").ok().filter(|a| !a.is_empty())
    })
    .map_err(|e| e.context(prometheus.log()))?;
    let rule_latency = started.elapsed();
    assert_eq!(fired[0]["labels"]["port"], "26257");
    assert_eq!(fired[0]["labels"]["severity"], "warning");
    assert_eq!(fired[0]["labels"]["sensor_severity"], "high");
    // The same host as the sensor's alert, though Prometheus's instance is an address.
    assert_eq!(fired[0]["labels"]["host"], delivered["labels"]["host"]);
    assert_ne!(fired[0]["labels"]["instance"], delivered["labels"]["instance"]);
    assert!(delivered["annotations"]["runbook_url"]
        .as_str()
        .is_some_and(|u| u.ends_with("/PgwirePlaintextSession.md")));

    // Alertmanager holds the rule's alert back while the sensor's own fires (inhibit_rules
    // in alertmanager.yml): on-call gets the alert that names the process, once.
    // The rule's alert is the one without an `identity`.
    let rules_alert = |a: &Value| {
        a["labels"]["alertname"] == "PgwirePlaintextSession"
            && a["labels"]["port"] == "26257"
            && a["labels"].get("identity").is_none()
    };
    let inhibited = wait_for("the rule's alert, inhibited", Duration::from_secs(30), || {
        alertmanager.alerts().ok()?.into_iter().find(|a| {
            rules_alert(a) && a["status"]["inhibitedBy"].as_array().is_some_and(|by| !by.is_empty())
        })
    })?;
    let rule_delivery_latency = started.elapsed();
    assert_eq!(inhibited["status"]["state"], "suppressed");
    std::thread::sleep(Duration::from_secs(3)); // several group intervals
    let rule_alerts_delivered = webhook.alerts().iter().filter(|a| rules_alert(a)).count();
    assert_eq!(rule_alerts_delivered, 0, "the inhibited rule alert reached on-call");

    let metrics = sensor.metrics()?;
    assert!(metrics.get("pgwire_sensor_alerts_sent_total") >= 1.0);
    assert_eq!(metrics.get("pgwire_sensor_alerts_failed_total"), 0.0);
    eprintln!(
        "measured: sensor push delivered by Alertmanager in {:.2} s; Prometheus rule firing \
         in {:.2} s, inhibited by the push in {:.2} s (1 s scrape/evaluation intervals, 1 s \
         group_wait)",
        push_latency.as_secs_f64(),
        rule_latency.as_secs_f64(),
        rule_delivery_latency.as_secs_f64()
    );
    Ok(())
}

#[test]
fn an_unreachable_alertmanager_never_blocks_findings_and_is_counted() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-alerting-down"))?;
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", tests::util::free_port());
    let sensor = Sensor::start(&["--alertmanager-url", &dead])?;
    // Three apps (their command lines differ), so three alerts that cannot be delivered.
    let mut pids = Vec::new();
    for app in 0..3 {
        let settings = format!("sslmode=disable gssencmode=disable application_name=app{app}");
        pids.push(psql(&pg, &settings, "postgres", "postgres")?.pid);
    }
    for pid in pids {
        sensor.wait_findings_of(pid, 1)?; // findings flow at once, whatever Alertmanager does
    }
    pushes_fail_as_unreachable(&sensor, 3.0, Duration::from_secs(20))
}

/// Wait (up to `within`) until at least `alerts` of `sensor`'s alerts are counted failed as
/// unreachable, then check that none was sent.
fn pushes_fail_as_unreachable(
    sensor: &Sensor,
    alerts: f64,
    within: Duration,
) -> anyhow::Result<()> {
    wait_for("alert failures to be counted", within, || {
        let m = sensor.metrics().ok()?;
        (m.sum("pgwire_sensor_alerts_failed_total", &[("reason", "unreachable")]) >= alerts)
            .then_some(())
    })?;
    assert_eq!(sensor.metrics()?.get("pgwire_sensor_alerts_sent_total"), 0.0);
    Ok(())
}

#[test]
fn metrics_follow_the_naming_rules_and_health_follows_the_kernel() -> anyhow::Result<()> {
    let _serial = serial();
    let sensor = Sensor::start(&["--ports", "26257,5432"])?;
    let (code, page) = http_get(sensor.metrics_addr, "/")?;
    assert_eq!(code, 200);
    assert!(page.contains("href=\"/metrics\"") && page.contains("href=\"/healthz\""));
    let (_, text) = http_get(sensor.metrics_addr, "/metrics")?;
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        // Ours, or the standard process_* metrics every exporter has (the agent's own cost).
        assert!(name.starts_with("pgwire_sensor_") || name.starts_with("process_"), "{name}");
        assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
    }
    let samples = sensor.metrics()?;
    for s in &samples.0 {
        for label in s.labels.keys() {
            assert!(
                [
                    "verdict",
                    "verification",
                    "role",
                    "port",
                    "severity",
                    "kind",
                    "method",
                    "reason",
                    "version"
                ]
                .contains(&label.as_str())
                    || (s.name == "pgwire_sensor_host_info" && label == "host")
                    // One value per build.
                    || (s.name == "pgwire_sensor_build_info" && label == "revision"),
                "unbounded label {label} on {}",
                s.name
            );
        }
    }
    for port in ["26257", "5432"] {
        assert!(samples.0.iter().any(|s| s.name == "pgwire_sensor_sessions_total"
            && s.labels.get("port").map(String::as_str) == Some(port)));
    }
    assert!(samples.get("pgwire_sensor_start_time_seconds") > 1.7e9);
    assert_eq!(samples.get("pgwire_sensor_programs_expected"), 4.0);
    assert_eq!(samples.get("pgwire_sensor_programs_attached"), 4.0);
    assert_eq!(http_get(sensor.metrics_addr, "/healthz")?.0, 200);

    // Detach one of the sensor's programs behind its back, as an attacker or a careless
    // operator would: health and the metric must say so.
    // The sensor's own cgroup links: its fds' fdinfo names each bpf_link's type and id (the
    // TLS uprobes' perf links are not cgroup attachments).
    let mut link_ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{}/fdinfo", sensor.pid()))? {
        let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        let cgroup = info.lines().any(|l| l.starts_with("link_type:") && l.contains("cgroup"));
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("link_id:")).filter(|_| cgroup) {
            link_ids.push(id.trim().to_string());
        }
    }
    assert_eq!(link_ids.len(), 4, "one bpf_link per attached cgroup program");
    let ours = serde_json::json!({ "id": link_ids[0].parse::<u64>()? });
    let status = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &ours["id"].to_string()])
        .status()?;
    assert!(status.success());
    assert_eq!(http_get(sensor.metrics_addr, "/healthz")?.0, 503);
    assert_eq!(sensor.metrics()?.get("pgwire_sensor_programs_attached"), 3.0);
    Ok(())
}

/// Hundreds of sessions from one app are one alert in a real Alertmanager, carrying the
/// running count; a second app is a second alert. (Both apps are long-lived processes: a
/// client gone before the agent reads its /proc entry has no exe or command line, so it
/// would be an identity of its own; see docs/siem.md.)
#[test]
fn a_burst_from_one_app_is_one_alert_with_its_running_count() -> anyhow::Result<()> {
    const REQUESTS: usize = 200;
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("alerting-burst"))?;
    let webhook = Webhook::start()?;
    let alertmanager = Alertmanager::start(&webhook)?;
    let sensor = Sensor::start(&["--alertmanager-url", &alertmanager.url])?;
    // The same sessions seen by a second host identity (another node name): its alerts are
    // its own.
    let other_host = Sensor::start(&[
        "--alertmanager-url",
        &alertmanager.url,
        "--node-name",
        "node-b",
        "--allow-second-instance",
    ])?;
    // Two apps: the same program on two ports, so two command lines.
    let (busy, quiet) = (FlaskApp::start(&pg)?, FlaskApp::start(&pg)?);
    for _ in 0..REQUESTS {
        assert_eq!(busy.get("/orders/plain")?, "plain");
    }
    for _ in 0..3 {
        assert_eq!(quiet.get("/orders/plain")?, "plain");
    }
    // Within one re-push interval Alertmanager holds one alert per app, the counts complete.
    let counts = wait_for("one alert per app, with its count", Duration::from_secs(30), || {
        let pushed =
            alertmanager.alerts().ok()?.into_iter().filter(|a| a["labels"]["identity"].is_string());
        let (theirs, ours): (Vec<Value>, Vec<Value>) =
            pushed.partition(|a| a["labels"]["host"] == "node-b");
        if theirs.len() != 2 {
            return None; // the second host's two apps: two alerts of its own
        }
        let count = |app: &FlaskApp| {
            let pid = app.pid().to_string();
            let alert = ours.iter().find(|a| a["annotations"]["pid"].as_str() == Some(&pid));
            alert.map(|a| a["annotations"]["sessions"].as_str().unwrap_or("").to_string())
        };
        let counts = (ours.len(), count(&busy)?, count(&quiet)?);
        (counts.1 == REQUESTS.to_string() && counts.2 == "3").then_some((counts, ours))
    })?;
    let ((alerts, _, _), ours) = counts;
    assert_eq!(alerts, 2, "one alert per app: {ours:#?}");
    for alert in &ours {
        assert_eq!(alert["labels"]["alertname"], "PgwirePlaintextSession");
        assert_eq!(alert["labels"]["severity"], "warning");
    }
    assert_ne!(ours[0]["labels"]["identity"], ours[1]["labels"]["identity"]);
    let pushed = sensor.metrics()?.get("pgwire_sensor_alerts_sent_total");
    assert!(other_host.metrics()?.get("pgwire_sensor_alerts_sent_total") >= 2.0);
    assert!(pushed < 40.0, "pushes are throttled per identity, not per session: {pushed}");
    Ok(())
}

/// Alertmanager as people run it: an HA pair, over TLS, behind basic auth. Every peer gets
/// every alert; a sensor that does not trust the peers' CA pushes nothing and says why; no
/// password (the database's, Alertmanager's) is in any line, alert or log.
#[test]
fn alerts_reach_every_peer_of_an_ha_cluster_over_tls_with_basic_auth() -> anyhow::Result<()> {
    const DB_PASSWORD: &str = "db-secret-7c1f";
    const AM_PASSWORD: &str = "am-secret-91ab";
    let _serial = serial();
    let mut opts = PgOptions::no_tls("alerting-ha");
    opts.hba = vec!["local all all trust".into(), "host all all 127.0.0.0/8 password".into()];
    let pg = PgServer::start(opts)?;
    pg.admin_sql(&format!("CREATE ROLE payments LOGIN PASSWORD '{DB_PASSWORD}'"))?;
    let dir = scratch_dir("alerting-ha");
    let certs = certs::generate(&dir)?;
    let password_file = dir.join("am-password");
    std::fs::write(&password_file, format!("{AM_PASSWORD}\n"))?;

    let webhook = Webhook::start()?;
    let gossip: Vec<SocketAddr> =
        (0..2).map(|_| format!("127.0.0.1:{}", free_port()).parse()).collect::<Result<_, _>>()?;
    let peers = (0..2)
        .map(|i| {
            Alertmanager::start_with(
                &webhook,
                AlertmanagerOptions {
                    tls: Some(&certs),
                    basic_auth: Some(("sensor", AM_PASSWORD)),
                    cluster: Some((gossip[i], vec![gossip[1 - i]])),
                },
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Without the password Alertmanager refuses: the auth is real.
    let anonymous = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&certs.ca_cert)?)?)
        .build()?;
    let status = anonymous.get(format!("{}/api/v2/alerts", peers[0].url)).send()?.status();
    assert_eq!(status.as_u16(), 401);

    let (ca, password) = (certs.ca_cert.display().to_string(), password_file.display().to_string());
    let sensor = Sensor::start(&[
        "--alertmanager-url",
        &peers[0].url,
        // The second peer by name: the certificate is for localhost and 127.0.0.1.
        "--alertmanager-url",
        &peers[1].url.replace("127.0.0.1", "localhost"),
        "--alertmanager-ca-file",
        &ca,
        "--alertmanager-basic-auth-user",
        "sensor",
        "--alertmanager-basic-auth-password-file",
        &password,
    ])?;
    // The same, trusting only the public roots: the peers' certificate is not theirs.
    let untrusting = Sensor::start(&[
        "--alertmanager-url",
        &peers[0].url,
        "--alertmanager-basic-auth-user",
        "sensor",
        "--alertmanager-basic-auth-password-file",
        &password,
        "--allow-second-instance",
    ])?;

    let client = psql_at(
        &pg.host,
        pg.port,
        "sslmode=disable gssencmode=disable",
        "payments",
        "postgres",
        Some(DB_PASSWORD),
    )?
    .expect_success()?;
    let pid = client.pid.to_string();
    for (i, peer) in peers.iter().enumerate() {
        let alert = wait_for(&format!("the alert at peer {i}"), Duration::from_secs(30), || {
            peer.alerts().ok()?.into_iter().find(|a| a["annotations"]["pid"].as_str() == Some(&pid))
        })?;
        assert_eq!(alert["labels"]["alertname"], "PgwireCredentialsExposed");
        assert_eq!(alert["labels"]["method"], "cleartext");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["annotations"]["password_sent"], "true");
        let text = alert.to_string();
        assert!(!text.contains(DB_PASSWORD) && !text.contains(AM_PASSWORD), "{text}");
        if i == 0 {
            eprintln!("a real alert, as Alertmanager holds it: {alert:#}");
        }
    }
    // Counted once each peer has answered.
    wait_for("one push per peer", Duration::from_secs(10), || {
        let sent = sensor.metrics().ok()?.get("pgwire_sensor_alerts_sent_total");
        (sent == 2.0).then_some(())
    })?;

    pushes_fail_as_unreachable(&untrusting, 1.0, Duration::from_secs(30))?;
    let log = untrusting.stderr();
    assert!(log.to_lowercase().contains("certificate"), "the log says why: {log}");

    for s in [&sensor, &untrusting] {
        let findings = std::fs::read_to_string(&s.findings_path)?;
        assert!(findings.contains(&pid), "the session's finding is written");
        let everything = format!("{findings}{}", s.stderr());
        assert!(!everything.contains(DB_PASSWORD) && !everything.contains(AM_PASSWORD));
    }
    Ok(())
}

/// A bearer token read from a file for each push (a rotated Kubernetes token needs no
/// restart), sent to Alertmanager behind a proxy (the recorder stands in for it).
#[test]
fn a_bearer_token_is_read_from_its_file_for_each_push() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("alerting-bearer"))?;
    let proxy = Webhook::start()?;
    let dir = scratch_dir("alerting-bearer");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "first-token\n")?;
    let url = format!("http://{}/alertmanager", proxy.addr);
    let token = token_file.display().to_string();
    let sensor =
        Sensor::start(&["--alertmanager-url", &url, "--alertmanager-bearer-token-file", &token])?;
    let pushes_with = |expected: &str| {
        wait_for(&format!("a push with {expected}"), Duration::from_secs(20), || {
            let requests = proxy.requests.lock().unwrap().clone();
            requests.into_iter().find(|(path, auth)| {
                path == "/alertmanager/api/v2/alerts" && auth.as_deref() == Some(expected)
            })
        })
    };
    psql(&pg, "sslmode=disable gssencmode=disable application_name=first", "postgres", "postgres")?;
    pushes_with("Bearer first-token")?;
    std::fs::write(&token_file, "rotated-token\n")?;
    // Another app (another identity): a new alert, pushed at once, with the new token.
    psql(
        &pg,
        "sslmode=disable gssencmode=disable application_name=second",
        "postgres",
        "postgres",
    )?;
    pushes_with("Bearer rotated-token")?;
    let log = sensor.stderr();
    assert!(!log.contains("first-token") && !log.contains("rotated-token"));
    Ok(())
}
