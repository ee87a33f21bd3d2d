//! The pgwire sensor's userspace agent.
//!
//! Data flow: `bpf` loads and attaches the kernel programs -> `events` drains their ring
//! buffer -> `session` turns each event into a `finding::Finding` with the shared classifier
//! -> `output` writes findings and serves metrics (kernel counters read at scrape time).

// criterion is the benches' dev-dependency, which every test target of this crate sees.
#[cfg(test)]
use criterion as _;

pub mod analyze;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod enrich;
pub mod error;
pub mod events;
pub mod finding;
pub mod identity;
pub mod instance;
pub mod kernel_log;
pub mod output;
pub mod pending;
pub mod pipeline;
pub mod preflight;
pub mod privileges;
pub mod repeats;
pub mod retries;
pub mod run;
pub mod session;
#[cfg(test)]
pub(crate) mod test_files;
pub mod tls_libraries;
