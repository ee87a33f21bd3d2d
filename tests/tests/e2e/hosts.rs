//! Issue 4's deployment shapes: the database-host role, a client in its own network
//! namespace, a client in a child cgroup, several watched ports.

use serde_json::Value;
use tests::{
    clients::{psql, psql_at, run_client},
    hosts::{cgroup2_root, ChildCgroup, NetNs, HOST_ADDR, NS_ADDR},
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
    util::wait_for,
};

fn findings_where(sensor: &Sensor, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    sensor.findings().unwrap_or_default().into_iter().filter(|f| pred(f)).collect()
}

#[test]
fn server_role_reports_inbound_sessions_and_loopback_once_per_role() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::no_tls("hosts-server-role"))?;
    let sensor = Sensor::start(&["--roles", "client,server"])?;
    let before = sensor.metrics()?;

    let plain = psql(&pg, "sslmode=disable gssencmode=disable", "postgres", "postgres")?
        .expect_success()?;
    let prefer =
        psql(&pg, "sslmode=prefer gssencmode=disable", "postgres", "postgres")?.expect_success()?;

    // The client end: attributed to psql.
    let client_side = sensor.wait_findings_of(plain.pid, 1)?;
    assert_eq!(client_side[0]["role"], "client");
    let client_port = client_side[0]["src"]["port"].clone();
    // The server end of the same loopback session: same addresses, no local process
    // claimed (the server cannot know which process sits behind a TCP client).
    let server_side =
        wait_for("the server-role finding", std::time::Duration::from_secs(10), || {
            let f = findings_where(&sensor, |f| {
                f["role"] == "server" && f["src"]["port"] == client_port
            });
            (!f.is_empty()).then_some(f)
        })?;
    assert_eq!(server_side.len(), 1);
    assert_eq!(server_side[0]["verdict"], "plaintext");
    assert_eq!(server_side[0]["dst"]["port"], 26257);
    assert!(server_side[0].get("process").is_none());
    assert_eq!(server_side[0]["startup"]["user"], "postgres");

    // The downgrade is seen from the server side too: its N goes out on the server socket.
    let prefer_port = sensor.wait_findings_of(prefer.pid, 1)?[0]["src"]["port"].clone();
    let server_prefer =
        wait_for("server-role downgrade", std::time::Duration::from_secs(10), || {
            findings_where(&sensor, |f| f["role"] == "server" && f["src"]["port"] == prefer_port)
                .pop()
        })?;
    assert_eq!(server_prefer["verdict"], "downgraded");
    assert_eq!(server_prefer["negotiation"]["server_answers"], "N");

    let after = sensor.metrics()?;
    for role in ["client", "server"] {
        assert_eq!(
            after.sessions("plaintext", role) - before.sessions("plaintext", role),
            1.0,
            "{role}"
        );
        assert_eq!(
            after.sessions("downgraded", role) - before.sessions("downgraded", role),
            1.0,
            "{role}"
        );
    }
    Ok(())
}

#[test]
fn server_role_alone_watches_a_database_host() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("hosts-db-host"))?;
    let sensor = Sensor::start(&["--roles", "server"])?;
    let before = sensor.metrics()?;
    let plain = psql(&pg, "sslmode=disable gssencmode=disable", "postgres", "postgres")?
        .expect_success()?;
    psql(&pg, "sslmode=require gssencmode=disable", "postgres", "postgres")?.expect_success()?;
    let found = wait_for("a server-role finding", std::time::Duration::from_secs(10), || {
        let f = findings_where(&sensor, |f| f["role"] == "server");
        (!f.is_empty()).then_some(f)
    })?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(sensor.findings_of(plain.pid)?.is_empty(), "the client role is off");
    assert_eq!(found[0]["verdict"], "plaintext");
    let after = sensor.metrics()?;
    assert_eq!(after.sessions("tls", "server") - before.sessions("tls", "server"), 1.0);
    assert_eq!(after.sessions("plaintext", "server") - before.sessions("plaintext", "server"), 1.0);
    assert_eq!(after.sessions("plaintext", "client") - before.sessions("plaintext", "client"), 0.0);
    Ok(())
}

#[test]
fn a_client_in_its_own_network_namespace_is_caught() -> anyhow::Result<()> {
    let _serial = serial();
    let ns = NetNs::create()?;
    let mut opts = PgOptions::tls("hosts-netns");
    opts.listen = vec![HOST_ADDR.into()];
    opts.hba = vec!["local all all trust".into(), format!("host all all {NS_ADDR}/32 trust")];
    let pg = PgServer::start(opts)?;
    let sensor = Sensor::start(&[])?;
    // `ip netns exec` execs psql: the pid is psql's.
    let pid = run_client(
        ns.command("psql")
            .arg(format!(
                "host={HOST_ADDR} port={} user=postgres dbname=postgres sslmode=disable \
                 gssencmode=disable",
                pg.port
            ))
            .args(["-X", "-At", "-c", "select 1"]),
    )?
    .expect_success()?
    .pid;
    let f = &sensor.wait_findings_of(pid, 1)?[0];
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["process"]["comm"], "psql");
    assert_eq!(f["src"]["ip"], NS_ADDR);
    assert_eq!(f["dst"]["ip"], HOST_ADDR);
    Ok(())
}

#[test]
fn a_client_in_a_child_cgroup_is_caught_with_its_cgroup() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("hosts-cgroup"))?;
    let cgroup = ChildCgroup::create(&cgroup2_root()?)?;
    let sensor = Sensor::start(&[])?;
    // sh execs psql: same pid.
    let pid = run_client(&mut cgroup.enter_then(&format!(
        "psql 'host={} port={} user=postgres dbname=postgres sslmode=disable gssencmode=disable' \
         -X -At -c 'select 1'",
        pg.host, pg.port
    )))?
    .expect_success()?
    .pid;
    let f = &sensor.wait_findings_of(pid, 1)?[0];
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["process"]["cgroup"], cgroup.relative.as_str());
    assert_ne!(f["process"]["cgroup_id"], 1, "not the root cgroup");
    Ok(())
}

#[test]
fn several_watched_ports() -> anyhow::Result<()> {
    let _serial = serial();
    let cockroach_port = PgServer::start(PgOptions::tls("hosts-26257"))?;
    let mut opts = PgOptions::tls("hosts-5432");
    opts.listen = vec!["127.0.0.5".into()];
    opts.port = 5432;
    let _server_on_5432 = PgServer::start(opts)?;
    let sensor = Sensor::start(&["--ports", "26257,5432"])?;
    let before = sensor.metrics()?;
    let a = psql(&cockroach_port, "sslmode=disable gssencmode=disable", "postgres", "postgres")?
        .expect_success()?;
    let b = psql_at(
        "127.0.0.5",
        5432,
        "sslmode=disable gssencmode=disable",
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    assert_eq!(sensor.wait_findings_of(a.pid, 1)?[0]["dst"]["port"], 26257);
    assert_eq!(sensor.wait_findings_of(b.pid, 1)?[0]["dst"]["port"], 5432);
    let after = sensor.metrics()?;
    for port in ["26257", "5432"] {
        let labels = [("verdict", "plaintext"), ("role", "client"), ("port", port)];
        let delta = after.sum("pgwire_sensor_sessions_total", &labels)
            - before.sum("pgwire_sensor_sessions_total", &labels);
        assert_eq!(delta, 1.0, "port {port}");
    }
    Ok(())
}
