//! Least privilege after attach. Loading and attaching need CAP_BPF, CAP_PERFMON and
//! CAP_NET_ADMIN (or root); once the programs are attached the agent only reads maps and
//! the ring buffer through fds it already holds, asks the kernel what is attached (BPF_PROG_QUERY: CAP_NET_ADMIN),
//! and reads procfs (CAP_SYS_PTRACE, if granted, for other users' exe paths). Everything
//! else is dropped from the effective, permitted, inheritable and ambient sets, and
//! no_new_privs is set, so a compromised agent cannot load programs or regain privileges.
//!
//! With `--tls-verification follow` (the default) CAP_SYS_ADMIN and CAP_PERFMON are kept
//! too: OpenSSL copies found after start (a Python wheel imported later, a new container)
//! get their uprobes then, and the kernel's uprobe PMU wants CAP_SYS_ADMIN to open one.
//! `--tls-verification at-start` (or `off`) gives them up like the rest.
//!
//! CAP_BPF is a special case: some kernels with `kernel.unprivileged_bpf_disabled` set
//! refuse every bpf() command without it, even a map read on an fd the process owns (older
//! ones checked at the top of the syscall; Debian's 6.1 and 6.12 do not, as
//! `cargo xtask vm-test` shows). So it is dropped from the effective set first and kept
//! only if the caller's probe (a counter read) then fails.

use caps::{CapSet, Capability};

/// Kept after attach, when held: see the module comment.
const KEEP: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_PTRACE];

/// Dropped only if the agent can still read its maps and query its attachments without
/// them (CAP_SYS_ADMIN stands in for CAP_BPF, so it gets the same test).
const PROBED: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN];

/// What was given up, for the log.
#[derive(Debug, Default)]
pub struct Dropped {
    pub dropped: Vec<Capability>,
    pub kept: Vec<Capability>,
}

/// Drop every capability not needed once the programs are attached, except `also_keep`
/// (what the TLS probing mode needs). `still_reads` must
/// read a map through an fd the agent holds, ask the kernel what is attached, and say
/// whether both worked.
///
/// Call on the thread that runs the agent before it starts any other thread: capability
/// sets are per thread and new threads inherit them.
pub fn drop_after_attach(
    still_reads: impl Fn() -> bool,
    also_keep: &[Capability],
) -> Result<Dropped, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let mut out = Dropped::default();
    for cap in permitted.iter().copied() {
        if KEEP.contains(&cap) || PROBED.contains(&cap) || also_keep.contains(&cap) {
            continue;
        }
        caps::drop(None, CapSet::Effective, cap)?;
        caps::drop(None, CapSet::Permitted, cap)?;
        out.dropped.push(cap);
    }
    // One at a time, CAP_BPF first: while CAP_SYS_ADMIN is still held it stands in for it.
    for cap in PROBED.into_iter().filter(|c| permitted.contains(c) && !also_keep.contains(c)) {
        caps::drop(None, CapSet::Effective, cap)?;
        if still_reads() {
            caps::drop(None, CapSet::Permitted, cap)?;
            out.dropped.push(cap);
        } else {
            caps::raise(None, CapSet::Effective, cap)?;
        }
    }
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Ambient)?;
    out.kept = caps::read(None, CapSet::Permitted)?.into_iter().collect();
    out.dropped.sort_by_key(|c| c.index());
    out.kept.sort_by_key(|c| c.index());
    set_no_new_privs();
    Ok(out)
}

/// execve can never grant this process (or its children) more privileges.
fn set_no_new_privs() {
    // SAFETY: prctl with constant arguments; failure only means the flag stays unset.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
}
