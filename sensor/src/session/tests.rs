use super::*;
use sensor_common::event::AF_INET6;

use sensor_common::test_util::startup_message;

fn event(verdict: Verdict, captured: &[u8]) -> SessionEvent {
    let mut ev = sensor_common::test_util::session_event(verdict, captured, "psql");
    ev.seen_ns = crate::clock::monotonic_ns();
    ev
}

fn finding_from_event(ev: &SessionEvent) -> Finding {
    Session::from_event(ev).finding(&crate::identity::Origin::example())
}

#[test]
fn plaintext_startup_becomes_a_finding_with_user_and_database() {
    let msg =
        startup_message(&[("user", "app"), ("database", "orders"), ("application_name", "psql")]);
    let f = finding_from_event(&event(Verdict::Plaintext, &msg));
    assert_eq!(f.verdict, Verdict::Plaintext);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.role, Role::Client);
    assert_eq!(f.src, Endpoint { ip: [127, 0, 0, 1].into(), port: 40000 });
    assert_eq!(f.dst, Endpoint { ip: [127, 0, 0, 2].into(), port: 26257 });
    let p = f.process.unwrap();
    assert_eq!((p.pid, p.tid, p.uid, p.gid, p.comm.as_str()), (4242, 4243, 1000, 100, "psql"));
    let s = f.startup.unwrap();
    assert_eq!(s.user.as_deref(), Some("app"));
    assert_eq!(s.database.as_deref(), Some("orders"));
    assert_eq!(s.application_name.as_deref(), Some("psql"));
    assert_eq!(s.protocol.to_string(), "3.0");
    assert!(!s.truncated);
}

#[test]
fn database_defaults_to_user_like_postgres_does() {
    let msg = startup_message(&[("user", "app")]);
    let s = finding_from_event(&event(Verdict::Plaintext, &msg)).startup.unwrap();
    assert_eq!(s.database.as_deref(), Some("app"));
}

#[test]
fn a_truncated_capture_is_marked_and_guesses_nothing() {
    let long = "x".repeat(600);
    let msg = startup_message(&[("user", "app"), ("options", &long), ("database", "d")]);
    let s = finding_from_event(&event(Verdict::Plaintext, &msg)).startup.unwrap();
    assert!(s.truncated);
    assert_eq!(s.user.as_deref(), Some("app"));
    assert_eq!(s.database, None);
}

#[test]
fn unknown_carries_its_reason_and_ipv6_addresses() {
    let mut ev = event(Verdict::Unknown, b"GET / HTTP/1.1\r\n");
    ev.reason = UnknownReason::NotPgwire as u8;
    ev.ip_version = AF_INET6;
    ev.server_addr = std::net::Ipv6Addr::LOCALHOST.octets();
    ev.client_family = AF_INET6;
    ev.client_addr = std::net::Ipv6Addr::LOCALHOST.octets();
    ev.dialled_addr = std::net::Ipv6Addr::LOCALHOST.octets();
    let f = finding_from_event(&ev);
    assert_eq!((f.verdict, f.reason), (Verdict::Unknown, Some(UnknownReason::NotPgwire)));
    assert_eq!(f.dst.ip, std::net::Ipv6Addr::LOCALHOST);
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!((&json["verdict"], &json["reason"]), (&"unknown".into(), &"not_pgwire".into()));
    assert_eq!(json["dst"]["ip"], "::1");
}

#[test]
fn finding_json_has_the_documented_shape() {
    let msg = startup_message(&[("user", "app"), ("database", "orders")]);
    let json = serde_json::to_value(finding_from_event(&event(Verdict::Plaintext, &msg))).unwrap();
    for key in ["ts", "verdict", "severity", "role", "src", "dst", "process", "startup"] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["dst"]["port"], 26257);
    assert_eq!(json["process"]["comm"], "psql");
    assert!(json["ts"].as_str().unwrap().ends_with('Z'));
    assert!(json.get("reason").is_none());
}

#[test]
fn downgraded_session_names_the_negotiation_and_cleartext_password_is_critical() {
    use sensor_common::tracker::{AuthMethod, REQUESTED_GSS, REQUESTED_SSL};
    let msg = startup_message(&[("user", "app")]);
    let mut ev = event(Verdict::Downgraded, &msg);
    ev.requests = REQUESTED_GSS | REQUESTED_SSL;
    ev.answers = (2 << 4) | 2; // N, N
    ev.flags |= event_flags::AUTH_FOLLOWS;
    assert!(Session::from_event(&ev).auth_follows);
    let mut f = finding_from_event(&ev);
    let n = f.negotiation.clone().unwrap();
    assert_eq!(n.requested, vec![Encryption::Gssenc, Encryption::Ssl]);
    assert_eq!(n.server_answers, "NN");
    assert_eq!(f.severity, Severity::High);
    apply_auth(&mut f, AuthMethod::Cleartext, true);
    assert_eq!(f.severity, Severity::Critical);
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["negotiation"]["requested"], serde_json::json!(["gssenc", "ssl"]));
    assert_eq!(json["auth"]["method"], "cleartext");
    assert_eq!(json["auth"]["password_sent"], true);
}

#[test]
fn a_nat_rewrite_on_the_client_host_names_what_was_dialled() {
    let msg = startup_message(&[("user", "app")]);
    let mut ev = event(Verdict::Plaintext, &msg);
    ev.dialled_port = 36257;
    let f = finding_from_event(&ev);
    assert_eq!(f.dst, Endpoint { ip: [127, 0, 0, 2].into(), port: 26257 });
    assert_eq!(f.dialled, Some(Endpoint { ip: [127, 0, 0, 2].into(), port: 36257 }));
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["dialled"]["port"], 36257);
    // Without NAT there is nothing to say.
    let plain = finding_from_event(&event(Verdict::Plaintext, &msg));
    assert_eq!(plain.dialled, None);
    assert!(serde_json::to_value(&plain).unwrap().get("dialled").is_none());
}

#[test]
fn an_ipv6_socket_carrying_ipv4_reads_as_ipv4() {
    let mut ev = event(Verdict::Plaintext, &startup_message(&[("user", "app")]));
    ev.client_family = AF_INET6;
    ev.client_addr = std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
    ev.dialled_addr = std::net::Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
    let f = finding_from_event(&ev);
    assert_eq!(f.src, Endpoint { ip: [127, 0, 0, 1].into(), port: 40000 });
    assert_eq!(f.dialled, None, "the mapped address is the server reached");
}
