//! Every end-to-end test in one test binary, one module per area (as aya's integration
//! tests do): one link instead of one per file, and one process, so [`tests::serial`] is a
//! real guard across all of them (they share 127.0.0.1:26257 and the cgroup v2 root).
//!
//! `cargo test -p tests` runs this binary; `cargo test -p tests -- psql::` runs one
//! module. Add a new area as a module here, not as another file in tests/tests/.

// The tests library's own dependency (bcrypt hashes for Alertmanager's web config): this
// binary links it without naming it.
use bcrypt as _;

mod adversarial;
mod alerting;
mod analyze;
mod cli_errors;
mod clients;
mod daemon;
mod dashboard;
mod docs_examples;
mod finding_lines;
mod first_bytes;
mod hosts;
mod metrics_endpoint;
mod nat;
mod negotiation;
mod packaging;
mod psql;
mod tls_verification;
