//! One sensor per host. Two sensors attach two sets of programs: every packet pays twice,
//! and every finding and alert arrives twice. The lock is an abstract unix socket named
//! `pgwire-sensor`: held while the process lives, released by the kernel however it dies
//! (SIGKILL included), with no file to leave behind or to be writable. Its scope is the
//! network namespace: on a host, or in a hostNetwork pod, that is the host.

use std::os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixListener};

use anyhow::Context;

pub const LOCK_NAME: &[u8] = b"pgwire-sensor";

/// Held for the sensor's lifetime.
pub struct InstanceLock {
    _socket: UnixListener,
}

/// Take the host's sensor lock, or say who holds it and how to run beside it anyway.
pub fn acquire() -> anyhow::Result<InstanceLock> {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME).context("abstract socket address")?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(InstanceLock { _socket: socket }),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "another sensor is already running on this host (it holds the abstract socket \
             @pgwire-sensor; `ss -xlp | grep pgwire-sensor` shows its pid). Two sensors \
             double every finding and the per-packet cost; stop it, or pass \
             --allow-second-instance to run beside it on purpose"
        ),
        Err(err) => Err(err).context("cannot take the instance lock (abstract unix socket)"),
    }
}
