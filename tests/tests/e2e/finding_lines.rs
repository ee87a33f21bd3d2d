//! Findings an on-call engineer and a SIEM can live with: one line per misconfigured app per
//! repeat window, whose `sessions` add up to the kernel's exact count, and the host identity
//! on every line.

use serde_json::Value;
use tests::{
    clients::{psql, FlaskApp},
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
    util::scratch_dir,
};

const FLASK_REQUESTS: u64 = 300;
const PSQL_SESSIONS: u64 = 20;

/// Stop the sensor (SIGTERM flushes its pending summaries) and read every line it wrote.
fn lines_after_stop(sensor: Sensor) -> anyhow::Result<Vec<Value>> {
    let path = sensor.findings_path.clone();
    let status = sensor.stop()?;
    assert!(status.success(), "the sensor stops cleanly: {status}");
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

fn sessions(lines: &[&Value]) -> u64 {
    lines.iter().map(|f| f["sessions"].as_u64().unwrap()).sum()
}

#[test]
fn hundreds_of_sessions_from_one_app_are_a_few_lines_whose_sessions_add_up() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("lines-flask"))?;
    // Two sensors see the same sessions: this host, and (for the test) a second host
    // identity, each with its own machine id and node name.
    let dir = scratch_dir("lines-ids");
    let hosts = [
        ("aaaaaaaabbbbccccddddeeeeeeeeeeee", "node-a"),
        ("0123456789abcdef0123456789abcdef", "node-b"),
    ];
    let mut sensors = Vec::new();
    for (i, (id, node)) in hosts.iter().enumerate() {
        let file = dir.join(format!("machine-id-{i}"));
        std::fs::write(&file, format!("{id}\n"))?;
        let file = file.display().to_string();
        let mut args = vec!["--machine-id-file", &file, "--node-name", node];
        if i > 0 {
            args.push("--allow-second-instance");
        }
        sensors.push(Sensor::start_aggregating("2s", &args)?);
    }
    let before = sensors[0].metrics()?;

    // The project's story: a Flask app opening a connection per request, sslmode=disable.
    let app = FlaskApp::start(&pg)?;
    for _ in 0..FLASK_REQUESTS {
        assert_eq!(app.get("/orders/plain")?, "plain");
    }
    // A second app on the same host: psql.
    for _ in 0..PSQL_SESSIONS {
        psql(&pg, "sslmode=disable gssencmode=disable", "postgres", "postgres")?
            .expect_success()?;
    }
    let after = sensors[0].metrics()?;
    let counted = after.sessions("plaintext", "client") - before.sessions("plaintext", "client");
    assert_eq!(counted, (FLASK_REQUESTS + PSQL_SESSIONS) as f64, "the kernel's count is exact");

    for (sensor, (id, node)) in sensors.into_iter().zip(hosts) {
        let lines = lines_after_stop(sensor)?;
        for f in &lines {
            assert_eq!((&f["host"]["id"], &f["node"]), (&id.into(), &node.into()), "{f}");
            assert_eq!(f["schema_version"], 1);
        }
        let to_pg = |f: &&Value| f["dst"]["port"] == pg.port;
        let flask: Vec<&Value> =
            lines.iter().filter(to_pg).filter(|f| f["process"]["pid"] == app.pid()).collect();
        let psql: Vec<&Value> =
            lines.iter().filter(to_pg).filter(|f| f["process"]["comm"] == "psql").collect();
        assert_eq!(sessions(&flask), FLASK_REQUESTS, "{node}: {flask:#?}");
        assert_eq!(sessions(&psql), PSQL_SESSIONS, "{node}: {psql:#?}");
        assert_eq!(flask.len() + psql.len(), lines.len(), "nothing else was reported");
        // A line in full when an app starts (or starts again after a quiet window), then a
        // summary per 2 s window while it goes on.
        for app_lines in [&flask, &psql] {
            assert!(app_lines.len() < 15, "{node}: {} lines for one app", app_lines.len());
            assert!(app_lines[0].get("repeats").is_none(), "the first line is in full");
            for line in app_lines.iter() {
                match line.get("repeats") {
                    None => assert_eq!(line["sessions"], 1, "{line}"),
                    Some(r) => {
                        assert!(r["first_seen"].as_str() <= r["last_seen"].as_str(), "{line}");
                        let ports = r["sample_src_ports"].as_array().unwrap();
                        assert!(!ports.is_empty() && ports.len() <= 5, "{line}");
                        assert_eq!(line.get("socket_cookie"), None, "{line}");
                    }
                }
            }
            assert!(
                app_lines.iter().any(|l| l["sessions"].as_u64() > Some(1)),
                "{node}: the repeats were counted, not written"
            );
        }
        let ids: std::collections::HashSet<&str> =
            lines.iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), lines.len(), "every line has its own id");
    }
    drop(app);
    Ok(())
}
