//! The Grafana dashboard (deploy/grafana/pgwire-sensor.json): every panel's every query,
//! with Grafana's variables filled in as Grafana would, evaluated by a real Prometheus
//! scraping a real sensor that has seen real sessions, must return data. A renamed metric
//! or a broken join shows here, not on a dashboard people look at during an incident.

use std::time::Duration;

use serde_json::Value;
use tests::{
    clients::psql,
    pg::{PgOptions, PgServer},
    promstack::{Alertmanager, Prometheus, Webhook},
    sensor::Sensor,
    serial,
    util::{repo_path, wait_for},
};

/// Grafana's variables as the dashboard's defaults set them ("All" instances), and the
/// built-in interval variables at values a 1 s scrape fills.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$job", "pgwire-sensor")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_sensor() -> anyhow::Result<()> {
    let _serial = serial();
    let text = std::fs::read_to_string(repo_path("deploy/grafana/pgwire-sensor.json"))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let panels: Vec<&Value> =
        dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 10, "{} panels", panels.len());

    let pg = PgServer::start(PgOptions::no_tls("dashboard"))?;
    let webhook = Webhook::start()?;
    let alertmanager = Alertmanager::start(&webhook)?;
    let sensor = Sensor::start(&["--node-name", "dashboard-node"])?;
    let prometheus = Prometheus::start(sensor.metrics_addr, alertmanager.addr)?;
    wait_for("Prometheus to scrape the sensor", Duration::from_secs(30), || {
        let up = prometheus.query(r#"up{job="pgwire-sensor"}"#).ok()?;
        (up.first()?["value"][1] == "1").then_some(())
    })?;
    for _ in 0..3 {
        let client = psql(&pg, "sslmode=disable gssencmode=disable", "postgres", "postgres")?;
        sensor.wait_findings_of(client.pid, 1)?;
    }
    // A few scrapes after the sessions, so rates and increases see them.
    std::thread::sleep(Duration::from_secs(4));

    let mut queries = 0;
    let mut metrics_shown = std::collections::BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = as_grafana_sends(target["expr"].as_str().unwrap());
            assert!(!expr.contains('$'), "{title}: a variable the test does not know: {expr}");
            let result = prometheus.query(&expr).map_err(|e| e.context(title.to_string()))?;
            assert!(!result.is_empty(), "{title}: no data from {expr}");
            for name in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if name.starts_with("pgwire_sensor_") {
                    metrics_shown.insert(name.to_string());
                }
            }
            queries += 1;
        }
    }
    // Sessions by verdict and host, passwords, and the sensor's health are all on it.
    for metric in [
        "pgwire_sensor_sessions_total",
        "pgwire_sensor_passwords_exposed_total",
        "pgwire_sensor_programs_attached",
        "pgwire_sensor_events_lost_total",
        "pgwire_sensor_findings_write_errors_total",
        "pgwire_sensor_alerts_failed_total",
        "pgwire_sensor_kernel_connection_track_failures_total",
        "pgwire_sensor_start_time_seconds",
    ] {
        assert!(metrics_shown.contains(metric), "no panel shows {metric}");
    }
    // The per-host panel names the host as the alerts do, and counts the sessions.
    let by_host = panels.iter().find(|p| p["title"] == "Sessions by host and verdict").unwrap();
    let rows =
        prometheus.query(&as_grafana_sends(by_host["targets"][0]["expr"].as_str().unwrap()))?;
    let plaintext = rows
        .iter()
        .find(|r| r["metric"]["verdict"] == "plaintext" && r["metric"]["host"] == "dashboard-node")
        .expect("a plaintext row for the sensor's host");
    let count: f64 = plaintext["value"][1].as_str().unwrap().parse()?;
    assert!(count >= 2.5, "three plaintext sessions (increase() extrapolates): {count}");

    // The job and instance variables' queries list the sensor.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for name in ["job", "instance"] {
        let variable = variables.iter().find(|v| v["name"] == name).unwrap();
        let definition = variable["definition"].as_str().unwrap();
        let (selector, label) = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .and_then(|d| d.rsplit_once(", "))
            .unwrap();
        assert_eq!(label, name, "{definition}");
        let series = prometheus.query(&as_grafana_sends(selector))?;
        let values: Vec<&str> = series.iter().filter_map(|s| s["metric"][name].as_str()).collect();
        assert_eq!(values.len(), 1, "{name}: {series:?}");
        if name == "job" {
            assert_eq!(values[0], "pgwire-sensor");
            assert_eq!(variable["current"]["value"], "pgwire-sensor", "the default job");
        }
    }
    eprintln!("measured: {queries} dashboard queries, each returned data");
    Ok(())
}
