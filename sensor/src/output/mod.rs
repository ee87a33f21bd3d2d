//! Where findings and counts go: JSON lines, Prometheus metrics over HTTP.

pub mod alert_book;
pub mod alertmanager;
pub mod delivery;
pub mod findings;
pub mod http;
pub mod metrics;
pub mod web_config;
