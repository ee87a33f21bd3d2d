//! Are our programs still attached? Someone (`bpftool cgroup detach`, a buggy agent) can
//! detach them behind our back; /healthz and a metric must say so. The kernel is asked
//! directly (BPF_PROG_QUERY on the cgroup), per attach point.

use std::{fs::File, io, os::fd::AsRawFd};

/// BPF_PROG_QUERY's part of `union bpf_attr` (stable kernel ABI).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;
/// How many programs one attach point may list back to us.
const MAX_IDS: usize = 64;

/// Kernel attach types of the hooks the sensor uses.
pub mod attach_type {
    pub const CGROUP_INET_INGRESS: u32 = 0;
    pub const CGROUP_INET_EGRESS: u32 = 1;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
}

pub struct AttachmentCheck {
    cgroup: File,
    /// (attach type, program id) of every program we attached.
    expected: Vec<(u32, u32)>,
}

impl AttachmentCheck {
    pub fn new(cgroup: File, expected: Vec<(u32, u32)>) -> Self {
        AttachmentCheck { cgroup, expected }
    }

    pub fn expected(&self) -> usize {
        self.expected.len()
    }

    /// How many of our programs the kernel still lists at their attach points.
    pub fn attached(&self) -> io::Result<usize> {
        let mut count = 0;
        for &(attach_type, prog_id) in &self.expected {
            if self.query(attach_type)?.contains(&prog_id) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Everything expected is attached (an error querying counts as not attached).
    pub fn healthy(&self) -> bool {
        matches!(self.attached(), Ok(n) if n == self.expected.len())
    }

    fn query(&self, attach_type: u32) -> io::Result<Vec<u32>> {
        let mut ids = [0u32; MAX_IDS];
        let mut attr = QueryAttr {
            target_fd: self.cgroup.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: MAX_IDS as u32,
            ..QueryAttr::default()
        };
        // SAFETY: a valid attr of the size we pass, pointing at a buffer of prog_cnt ids.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (attr.prog_cnt as usize).min(MAX_IDS);
        Ok(ids[..n].to_vec())
    }
}
