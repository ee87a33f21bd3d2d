//! One sensor per host. Two sensors attach two sets of programs: every packet pays twice,
//! and every finding and alert arrives twice. The lock is an abstract unix socket named
//! `pgwire-sensor`: held while the process lives, released by the kernel however it dies
//! (SIGKILL included), with no file to leave behind or to be writable. Its scope is the
//! network namespace: on a host, or in a hostNetwork pod, that is the host.
//!
//! Abstract sockets have no permissions, so any local user could bind the name first to
//! keep the sensor from ever starting. The holder is therefore checked (SO_PEERCRED): only
//! a holder running as root or as this sensor's own user, and listening as a sensor does,
//! counts as another sensor. Anyone else is a squatter: the sensor says so loudly and runs
//! without the lock rather than let an unprivileged process switch it off.

use std::os::{
    fd::AsRawFd,
    linux::net::SocketAddrExt,
    unix::net::{SocketAddr, UnixListener, UnixStream},
};

use anyhow::Context;
use tracing::warn;

pub const LOCK_NAME: &[u8] = b"pgwire-sensor";

/// Held for the sensor's lifetime.
pub struct InstanceLock {
    _socket: UnixListener,
}

/// Who holds the lock's socket.
#[derive(Debug, Clone, Copy)]
struct Holder {
    pid: i32,
    uid: u32,
}

/// Take the host's sensor lock; `None` when a squatter holds it (warned about). An error
/// when another sensor runs.
pub fn acquire() -> anyhow::Result<Option<InstanceLock>> {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME).context("abstract socket address")?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(Some(InstanceLock { _socket: socket })),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            // SAFETY: geteuid cannot fail.
            let me = unsafe { libc::geteuid() };
            match holder(&addr) {
                Some(h) if h.uid == 0 || h.uid == me => anyhow::bail!(
                    "another sensor is already running on this host (pid {}, uid {}, holds the \
                     abstract socket @pgwire-sensor). Two sensors double every finding and the \
                     per-packet cost; stop it, or pass --allow-second-instance to run beside it \
                     on purpose",
                    h.pid,
                    h.uid
                ),
                other => {
                    warn!(
                        holder = ?other,
                        "the instance lock @pgwire-sensor is held by a process that is not a \
                         sensor (not root, not this sensor's user, or not listening): someone \
                         may be trying to keep the sensor from starting. Running without the \
                         lock; investigate that process"
                    );
                    Ok(None)
                }
            }
        }
        Err(err) => Err(err).context("cannot take the instance lock (abstract unix socket)"),
    }
}

/// The credentials of the process listening on `addr`, if one is.
fn holder(addr: &SocketAddr) -> Option<Holder> {
    let stream = UnixStream::connect_addr(addr).ok()?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket with a correctly sized ucred buffer.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(Holder { pid: cred.pid, uid: cred.uid })
}
