//! The documentation's examples, from a real run: real psql sessions against real
//! PostgreSQL 15 servers, the real sensor's finding lines for their pids and its /metrics,
//! with run-to-run values replaced by fixed placeholders (tests/src/docs.rs). The files
//! under docs/examples/ must equal what this run produces, and every generated block in
//! the markdown (`<!-- BEGIN generated: PATH -->`) must equal its file; with
//! `PGWIRE_UPDATE_DOCS=1` (`cargo xtask docs`) the test writes them instead.

use std::time::Duration;

use tests::{
    clients::{psql_at, ClientRun},
    docs::{self, metrics_excerpt, normalise_finding, sync_generated_blocks, REFRESH},
    metrics::http_get,
    pg::{PgOptions, PgServer, DB_PORT},
    sensor::Sensor,
    serial,
    util::{repo_path, wait_for},
};

const PASSWORD: &str = "Docs-Ex4mple-pw-2c9e";

/// The finding line of `run`'s pid, exactly as written (the only one it has).
fn finding_line(sensor: &Sensor, run: &ClientRun, verdict: &str) -> anyhow::Result<String> {
    let found = sensor.wait_findings_of(run.pid, 1)?;
    assert_eq!(found.len(), 1, "one session, one finding: {found:#?}");
    assert_eq!(found[0]["verdict"], verdict, "{found:#?}");
    let text = std::fs::read_to_string(&sensor.findings_path)?;
    let line = text
        .lines()
        .find(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|f| f["process"]["pid"] == run.pid)
        })
        .expect("the line the finding was read from");
    Ok(line.to_string())
}

/// Where `new` first departs from `old`, by line.
fn first_difference(old: &str, new: &str) -> String {
    let (mut old_lines, mut new_lines) = (old.lines(), new.lines());
    for n in 1.. {
        match (old_lines.next(), new_lines.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => break,
            (a, b) => {
                let shown =
                    |l: Option<&str>| l.map_or("(end of file)".into(), |l| format!("{l:?}"));
                return format!("line {n}: the file has {}, the run {}", shown(a), shown(b));
            }
        }
    }
    "only in line endings".into()
}

#[test]
fn docs_examples_are_what_a_real_run_produces() -> anyhow::Result<()> {
    let _serial = serial();
    // The database with TLS, whose pg_hba asks for the password itself (`password`): a
    // client with sslmode=disable sends it in clear; the same login with TLS is only counted.
    let mut opts = PgOptions::tls("docs-tls");
    opts.hba = vec!["local all all trust".into(), "host all all 127.0.0.0/8 password".into()];
    let with_tls = PgServer::start(opts)?;
    // A database without TLS on 127.0.0.2, asking for an MD5 hash: sslmode=prefer hears N
    // and carries on in plaintext (downgraded), sending a replayable hash.
    let mut opts = PgOptions::no_tls("docs-no-tls");
    opts.listen = vec!["127.0.0.2".into()];
    opts.hba = vec!["local all all trust".into(), "host all all 127.0.0.0/8 md5".into()];
    opts.conf = vec!["password_encryption = md5".into()];
    let without_tls = PgServer::start(opts)?;
    for pg in [&with_tls, &without_tls] {
        pg.admin_sql(&format!("CREATE ROLE app_user LOGIN PASSWORD '{PASSWORD}'"))?;
        pg.admin_sql("CREATE DATABASE app_db OWNER app_user")?;
    }
    // The attacker of issue 13, terminating TLS with its own certificate on 127.0.0.3.
    let upstream = format!("{}:{}", with_tls.host, with_tls.port).parse()?;
    let _tls_mitm = tests::mitm::TlsMitm::start("127.0.0.3:26257", upstream)?;
    let ca = with_tls.certs.as_ref().unwrap().ca_cert.display().to_string();
    let sensor = Sensor::start(&[])?;

    let session = |host: &str, settings: &str| {
        psql_at(host, DB_PORT, settings, "app_user", "app_db", Some(PASSWORD))?.expect_success()
    };
    let plaintext = session("127.0.0.1", "sslmode=disable gssencmode=disable")?;
    assert_eq!(plaintext.stdout, "f", "the server says the session is plaintext");
    let tls =
        session("127.0.0.1", &format!("sslmode=verify-full sslrootcert={ca} gssencmode=disable"))?;
    assert_eq!(tls.stdout, "t", "the server says the session is TLS");
    let unverified = session("127.0.0.1", "sslmode=require gssencmode=disable")?;
    let rejected = psql_at(
        "127.0.0.3",
        DB_PORT,
        &format!("sslmode=verify-full sslrootcert={ca} gssencmode=disable"),
        "app_user",
        "app_db",
        Some(PASSWORD),
    )?;
    assert!(!rejected.success, "verify-full refuses the attacker's certificate");
    let downgraded = session("127.0.0.2", "sslmode=prefer gssencmode=disable")?;
    assert_eq!(downgraded.stdout, "f", "the server without TLS gives a plaintext session");

    let plaintext_line = finding_line(&sensor, &plaintext, "plaintext")?;
    let downgraded_line = finding_line(&sensor, &downgraded, "downgraded")?;
    let unverified_line = finding_line(&sensor, &unverified, "tls_unverified")?;
    let rejected_line = finding_line(&sensor, &rejected, "tls_rejected")?;
    // Every count the excerpt shows has arrived (the kernel counts at decision time, the
    // agent when it writes a finding).
    wait_for("the example's counts", Duration::from_secs(10), || {
        let m = sensor.metrics().ok()?;
        let sessions = ["plaintext", "tls", "downgraded", "tls_unverified", "tls_rejected"]
            .map(|v| m.sessions(v, "client"));
        let findings = m.get("pgwire_sensor_findings_total");
        let passwords = m.get("pgwire_sensor_passwords_exposed_total");
        (sessions.iter().all(|n| *n >= 1.0) && findings >= 4.0 && passwords >= 2.0).then_some(())
    })?;
    let (_, page) = http_get(sensor.metrics_addr, "/metrics")?;
    assert!(sensor.findings_of(tls.pid)?.is_empty(), "the TLS session has no finding");
    let findings_text = std::fs::read_to_string(&sensor.findings_path)?;
    assert!(!findings_text.contains(PASSWORD) && !page.contains(PASSWORD));
    sensor.stop()?;

    // A summary line: five sessions of one app in one repeat window are one line in full and
    // one summary counting the other four (written at SIGTERM).
    let aggregating = Sensor::start_aggregating("1h", &[])?;
    for _ in 0..5 {
        session("127.0.0.1", "sslmode=disable gssencmode=disable")?;
    }
    let summary_path = aggregating.findings_path.clone();
    aggregating.stop()?;
    let summary_text = std::fs::read_to_string(summary_path)?;
    let lines: Vec<&str> = summary_text.lines().collect();
    assert_eq!(lines.len(), 2, "one line in full, one summary: {summary_text}");
    let summary_line = lines[1].to_string();
    let summary: serde_json::Value = serde_json::from_str(&summary_line)?;
    assert_eq!((&summary["sessions"], &summary["verdict"]), (&4.into(), &"plaintext".into()));

    // Every real line is valid against the published schema (which admits no unknown field).
    let schema_text = std::fs::read_to_string(repo_path("docs/finding.schema.json"))?;
    let schema: serde_json::Value = serde_json::from_str(&schema_text)?;
    let validator = jsonschema::draft202012::new(&schema)
        .map_err(|err| anyhow::anyhow!("docs/finding.schema.json does not compile: {err}"))?;
    for line in findings_text.lines().chain(summary_text.lines()) {
        let value: serde_json::Value = serde_json::from_str(line)?;
        if let Err(err) = validator.validate(&value) {
            anyhow::bail!("{line}\ndoes not match docs/finding.schema.json: {err}");
        }
    }

    let produced = [
        ("docs/examples/finding-plaintext.json", normalise_finding(&plaintext_line)?),
        ("docs/examples/finding-downgraded.json", normalise_finding(&downgraded_line)?),
        ("docs/examples/finding-tls-unverified.json", normalise_finding(&unverified_line)?),
        ("docs/examples/finding-tls-rejected.json", normalise_finding(&rejected_line)?),
        ("docs/examples/finding-summary.json", normalise_finding(&summary_line)?),
        ("docs/examples/metrics.txt", metrics_excerpt(&page)),
    ];
    let update = docs::update_requested();
    let mut stale = Vec::new();
    for (path, text) in &produced {
        let file = repo_path(path);
        if std::fs::read_to_string(&file).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if update {
            std::fs::create_dir_all(file.parent().unwrap())?;
            std::fs::write(&file, text)?;
            eprintln!("docs_examples: wrote {path}");
        } else {
            let old = std::fs::read_to_string(&file).unwrap_or_default();
            stale.push(format!("{path} differs from this run's: {}", first_difference(&old, text)));
        }
    }

    // The markdown that embeds them (after the files, so an update embeds the new ones).
    let root = repo_path("").canonicalize()?;
    for page in docs::markdown_files(&root)? {
        let text = std::fs::read_to_string(&page)?;
        let shown = page.strip_prefix(&root).unwrap_or(&page).display().to_string();
        let synced =
            match sync_generated_blocks(&text, |p| Ok(std::fs::read_to_string(root.join(p))?)) {
                Ok(synced) => synced,
                // A missing file is reported with the rest; a broken marker needs a hand.
                Err(err) => {
                    stale.push(format!("{shown}: {err:#}"));
                    continue;
                }
            };
        if synced.stale.is_empty() {
            continue;
        }
        if update {
            std::fs::write(&page, &synced.text)?;
            eprintln!("docs_examples: rewrote {} block(s) in {shown}", synced.stale.len());
        } else {
            stale.extend(
                synced
                    .stale
                    .iter()
                    .map(|p| format!("{shown}: the block of {p} differs from the file")),
            );
        }
    }
    assert!(
        stale.is_empty(),
        "stale documentation; run `{REFRESH}` to refresh (as root):\n{}",
        stale.join("\n")
    );
    Ok(())
}
