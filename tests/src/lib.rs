//! Helpers for end-to-end tests: a real PostgreSQL 15 server with TLS, the real sensor
//! binary attached to the kernel, real clients. Nothing here is a mock.
//!
//! The eBPF programs attach at the cgroup v2 root and see every process on the host, so
//! tests pick their own findings out by pid and serialise with [`serial`] (they share
//! 127.0.0.1:26257).

// The dev-dependencies are the end-to-end binary's (client drivers); this crate's unit-test
// target sees them too. The library itself is linted for its own dependencies.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod capture;
pub mod certs;
pub mod clients;
pub mod docs;
pub mod hosts;
pub mod kerberos;
pub mod memscan;
pub mod metrics;
pub mod mitm;
pub mod netem;
pub mod nft;
pub mod pg;
pub mod promstack;
pub mod raw;
pub mod sensor;
pub mod util;

pub use util::serial;
