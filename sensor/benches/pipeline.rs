//! Microbenchmarks of what every session costs outside the kernel: classifying the first
//! bytes, stepping the state machine, and turning an event into a JSON finding line.
//! `cargo bench -p sensor` (no root, any machine).

// The dependencies are the library's, where the lint applies; this target only calls it.
#![allow(unused_crate_dependencies)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensor::session::Session;
use sensor_common::{
    pgwire::{classify_bytes, StartupParams},
    test_util::{session_event, startup_message},
    tracker::Tracker,
    verdict::Verdict,
};

fn startup() -> Vec<u8> {
    startup_message(&[
        ("user", "billing"),
        ("database", "orders"),
        ("application_name", "flask-orders"),
        ("client_encoding", "UTF8"),
    ])
}

fn classifier(c: &mut Criterion) {
    let msg = startup();
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let garbage = b"GET / HTTP/1.1\r\nHost: db\r\n\r\n";
    let mut g = c.benchmark_group("classify_first");
    g.throughput(Throughput::Elements(1));
    g.bench_function("startup", |b| b.iter(|| classify_bytes(black_box(&msg))));
    g.bench_function("ssl_request", |b| b.iter(|| classify_bytes(black_box(&ssl))));
    g.bench_function("garbage", |b| b.iter(|| classify_bytes(black_box(garbage))));
    g.finish();
    c.bench_function("startup_params", |b| b.iter(|| StartupParams::new(black_box(&msg)).count()));
    c.bench_function("tracker_downgrade_with_password", |b| {
        b.iter(|| {
            let mut t = Tracker::NEW;
            t.client_message(classify_bytes(black_box(&ssl)));
            t.server_answer(black_box(b'N'));
            t.client_message(classify_bytes(black_box(&msg)));
            t.server_auth(b'R', Some(3));
            t.client_auth_reply(b'p');
            t
        })
    });
}

fn finding_encoder(c: &mut Criterion) {
    let ev = session_event(Verdict::Plaintext, &startup(), "python");
    let origin = sensor::identity::Origin::example();
    c.bench_function("finding_from_event", |b| {
        b.iter(|| Session::from_event(black_box(&ev)).finding(&origin))
    });
    let finding = Session::from_event(&ev).finding(&origin);
    c.bench_function("finding_to_json_line", |b| {
        b.iter(|| serde_json::to_vec(black_box(&finding)).map(|v| v.len()))
    });
}

criterion_group!(benches, classifier, finding_encoder);
criterion_main!(benches);
