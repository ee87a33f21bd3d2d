//! `--kernel-log`: the kernel programs' own diagnostics, with the ports (a connection adopted
//! or not adopted after start, a session's start not seen, a capture evicted), read with
//! aya-log and written to this process's log (stderr) at `info`. Lost events are not logged
//! here: they are counted exactly (`pgwire_sensor_events_lost_total`).
//!
//! Off by default: in the kernel, the log level is read-only data fixed at load time, so with
//! logging off the verifier removes the logging code and packets pay nothing for it.

use tokio::io::{unix::AsyncFd, Interest};
use tracing::warn;

use crate::bpf::KernelLogger;

/// Forward kernel log records until the process ends.
pub async fn forward(logger: KernelLogger) {
    // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the AsyncFd
    // owns the logger, so the fd stays open and the same until the AsyncFd is dropped.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => return warn!(%err, "cannot poll the kernel programs' log"),
    };
    loop {
        match logger.readable_mut().await {
            Ok(mut ready) => {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            Err(err) => return warn!(%err, "stopped reading the kernel programs' log"),
        }
    }
}
