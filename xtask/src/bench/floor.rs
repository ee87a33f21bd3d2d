//! The floor under the kernel-cost table. With `kernel.bpf_stats_enabled` = 1 the kernel
//! brackets every program run with two `sched_clock()` reads and adds the difference to the
//! program's `run_time_ns`; on a VM those reads and the dispatch around them can cost more
//! than a short program itself, so every program shows much the same average. An empty
//! program (`r0 = 1; exit`) on the same hook, in the same run, measures that floor: what a
//! sensor program costs of its own is its average minus its hook's floor.
//!
//! The programs are loaded with the raw bpf(2) syscall and attached at the cgroup v2 root,
//! where the sensor attaches its own, through bpf links (BPF_LINK_CREATE). Cgroup links are
//! always multi-attach, so they run next to the sensor's programs without touching them;
//! and a link is detached when its last fd is closed, so the floor programs go away with
//! this process however it ends. (A plain BPF_PROG_ATTACH would stay attached after a
//! killed bench, e.g. one stopped by `timeout`, and tax every packet until detached.)

use std::{
    ffi::{c_int, c_uint},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use anyhow::Context;
use sensor_common::limits::program_names;

use super::kstats::ProgramTimes;

// Values from linux/bpf.h (checked against the UAPI header with a C compiler).
const BPF_PROG_LOAD: c_int = 5;
const BPF_LINK_CREATE: c_int = 28;
pub(super) const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
pub(super) const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub(super) const BPF_CGROUP_INET_INGRESS: u32 = 0;
pub(super) const BPF_CGROUP_INET_EGRESS: u32 = 1;
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_OBJ_NAME_LEN: usize = 16;

/// Bytes passed as `union bpf_attr`: the variants used here, zero-padded. The kernel takes
/// a larger size than its own union as long as the excess is zero, and a smaller one as
/// the leading fields.
pub(super) const ATTR_SIZE: usize = 128;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _zero: [u8; ATTR_SIZE - 72],
}

/// `union bpf_attr` for BPF_LINK_CREATE, up to `flags` (0 for cgroup links).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _zero: [u8; ATTR_SIZE - 16],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
    assert!(offset_of!(ProgLoadAttr, log_buf) == 32);
    assert!(offset_of!(ProgLoadAttr, prog_name) == 48);
    assert!(offset_of!(ProgLoadAttr, expected_attach_type) == 68);
    assert!(size_of::<LinkCreateAttr>() == ATTR_SIZE);
    assert!(offset_of!(LinkCreateAttr, flags) == 12);
    assert!(size_of::<Insn>() == 8);
};

/// One eBPF instruction: opcode, dst_reg (low nibble) and src_reg (high nibble), offset,
/// immediate.
#[repr(C)]
pub(super) struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `r0 = 1; exit`: lets everything through, doing nothing.
const EMPTY_PROGRAM: [Insn; 2] = [
    Insn { code: 0xb7, regs: 0, off: 0, imm: 1 }, // BPF_ALU64 | BPF_MOV | BPF_K
    Insn { code: 0x95, regs: 0, off: 0, imm: 0 }, // BPF_JMP | BPF_EXIT
];

/// A hook the sensor has a cgroup program on, and the floor program put next to it.
pub struct Hook {
    /// Short name, as in the floor's row: `floor (empty program): HOOK`.
    pub hook: &'static str,
    /// The sensor program on the same hook.
    pub sensor_program: &'static str,
    prog_name: &'static str,
    prog_type: u32,
    attach_type: u32,
}

pub const HOOKS: [Hook; 3] = [
    Hook {
        hook: "egress",
        sensor_program: program_names::EGRESS,
        prog_name: "floor_egress",
        prog_type: BPF_PROG_TYPE_CGROUP_SKB,
        attach_type: BPF_CGROUP_INET_EGRESS,
    },
    Hook {
        hook: "ingress",
        sensor_program: program_names::INGRESS,
        prog_name: "floor_ingress",
        prog_type: BPF_PROG_TYPE_CGROUP_SKB,
        attach_type: BPF_CGROUP_INET_INGRESS,
    },
    Hook {
        hook: "connect4",
        sensor_program: program_names::CONNECT4,
        prog_name: "floor_connect4",
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        attach_type: BPF_CGROUP_INET4_CONNECT,
    },
];

/// The kernel-cost row of the floor program on `hook`.
pub fn row_name(hook: &str) -> String {
    format!("floor (empty program): {hook}")
}

/// The floor row to subtract from `program`'s average: the sensor's cgroup programs have
/// one, the others (uprobes, connect6) none.
pub fn floor_row_of(program: &str) -> Option<String> {
    if program == super::storage_floor::ROW {
        return Some(row_name("connect4"));
    }
    if let Some(hook) = super::storage_floor::lookup_hook_of(program) {
        return Some(row_name(hook));
    }
    HOOKS.iter().find(|h| h.sensor_program == program).map(|h| row_name(h.hook))
}

/// The empty programs, loaded and attached; dropping closes the links (detaching them)
/// and the programs.
pub struct FloorPrograms {
    attached: Vec<Attached>,
}

/// A program attached through its link, under its row in the kernel-cost table.
pub(super) struct Attached {
    row: String,
    // Declared first, so closed first: detached before the program fd goes.
    _link: OwnedFd,
    prog: OwnedFd,
}

impl Attached {
    pub(super) fn new(row: String, link: OwnedFd, prog: OwnedFd) -> Attached {
        Attached { row, _link: link, prog }
    }

    /// Run counts and times so far of `attached`, per row.
    pub(super) fn times(attached: &[Attached]) -> anyhow::Result<ProgramTimes> {
        ProgramTimes::of_own_fds(attached.iter().map(|a| (a.row.clone(), a.prog.as_raw_fd())))
    }
}

impl FloorPrograms {
    /// Loads one empty program per hook of [`HOOKS`] and attaches it to the cgroup v2
    /// directory `cgroup`.
    pub fn attach(cgroup: &Path) -> anyhow::Result<FloorPrograms> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("cannot open the cgroup {}", cgroup.display()))?;
        let mut attached = Vec::new();
        for hook in &HOOKS {
            let prog = load(hook)?;
            let link = link(&prog, &dir, hook).with_context(|| {
                format!("cannot attach {} to the cgroup {}", hook.prog_name, cgroup.display())
            })?;
            attached.push(Attached::new(row_name(hook.hook), link, prog));
        }
        Ok(FloorPrograms { attached })
    }

    /// Run counts and times so far, per floor row (see [`row_name`]).
    pub fn times(&self) -> anyhow::Result<ProgramTimes> {
        Attached::times(&self.attached)
    }
}

/// bpf(2) with `attr`, a `union bpf_attr` variant: what the command returns (0 for the
/// commands that return no fd).
pub(super) fn bpf_call<T>(cmd: c_int, attr: &mut T) -> io::Result<i64> {
    let size = std::mem::size_of::<T>() as c_uint;
    // SAFETY: `attr` is a #[repr(C)] bpf_attr variant of `size` bytes, every pointer in it
    // valid for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// bpf(2) with `attr`, for a command that returns a new fd (load, link, map, BTF, stats).
pub(super) fn bpf<T>(cmd: c_int, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn load(hook: &Hook) -> anyhow::Result<OwnedFd> {
    load_program(hook.prog_name, hook.prog_type, hook.attach_type, &EMPTY_PROGRAM)
}

/// Loads `insns` as program `name` (at most 15 bytes) of `prog_type`, for `attach_type`.
pub(super) fn load_program(
    name: &str,
    prog_type: u32,
    attach_type: u32,
    insns: &[Insn],
) -> anyhow::Result<OwnedFd> {
    const LICENSE: &[u8] = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; BPF_OBJ_NAME_LEN];
    // At most 15 bytes: the name is NUL-terminated.
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: attach_type,
        _zero: [0; ATTR_SIZE - 72],
    };
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]);
        anyhow::anyhow!("cannot load {name}: {e}; verifier log:\n{}", log.trim_end())
    })
}

fn link(prog: &OwnedFd, cgroup: &std::fs::File, hook: &Hook) -> io::Result<OwnedFd> {
    link_program(prog, cgroup, hook.attach_type)
}

/// A cgroup bpf link of `prog` on `cgroup` (multi-attach; detached when its fd closes).
pub(super) fn link_program(
    prog: &OwnedFd,
    cgroup: &std::fs::File,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _zero: [0; ATTR_SIZE - 16],
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo: where the sensor
/// attaches by default (/sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
/// hybrid one).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_mount(&mountinfo).context("no cgroup v2 filesystem is mounted")
}

/// The first cgroup2 mount whose root is `/`, else the first cgroup2 mount (as the sensor
/// picks it: sensor/src/cgroup.rs).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else { continue };
        let path = PathBuf::from(unescape_octal(mount_point));
        if *root == "/" {
            return Some(path);
        }
        fallback.get_or_insert(path);
    }
    fallback
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_cgroup2_mount_hybrid_and_unified() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let nested = "50 1 0:40 /kubepods/pod1 /host/cgroup rw - cgroup2 cgroup2 rw\n\
                      51 1 0:40 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(nested), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "60 1 0:41 / /mnt/my\\040cg rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn floor_rows_pair_with_the_sensor_cgroup_programs() {
        assert_eq!(floor_row_of("sensor_egress").as_deref(), Some("floor (empty program): egress"));
        assert_eq!(
            floor_row_of("sensor_connect4").as_deref(),
            Some("floor (empty program): connect4")
        );
        assert_eq!(floor_row_of("sensor_connect6"), None);
        assert_eq!(floor_row_of("tls_ssl_new"), None);
        assert!(HOOKS.iter().all(|h| h.prog_name.len() < BPF_OBJ_NAME_LEN));
    }

    /// The programs' names in `bpftool cgroup show` of `cgroup` that are floor programs.
    fn floor_programs_at(cgroup: &Path) -> Vec<String> {
        let out = std::process::Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup)
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("bpftool cgroup show {}:\n{text}", cgroup.display());
        text.split_whitespace().filter(|w| w.starts_with("floor_")).map(String::from).collect()
    }

    /// Against the real kernel (root): attaches the floor programs at the cgroup v2 root,
    /// makes traffic through them with run-time statistics on (a BPF_ENABLE_STATS fd,
    /// which leaves the sysctl alone), reads their counts back, and detaches them.
    /// `cargo test -p xtask floor -- --ignored --nocapture`
    #[test]
    #[ignore = "loads and attaches BPF programs: needs root"]
    fn floor_programs_attach_count_and_detach() {
        let root = cgroup2_root().unwrap();
        println!("cgroup2 root: {}", root.display());
        assert!(floor_programs_at(&root).is_empty(), "floor programs already attached");

        // BPF_ENABLE_STATS (32), type BPF_STATS_RUN_TIME (0): on while the fd is open.
        let mut stats_attr = [0u32; 4];
        let stats = bpf(32, &mut stats_attr).expect("BPF_ENABLE_STATS");

        let floor = FloorPrograms::attach(&root).unwrap();
        let before = floor.times().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
        }
        server.join().unwrap();
        let after = floor.times().unwrap();
        let costs = after.since(&before);
        for c in &costs {
            println!("{}: {} runs, {:.0} ns/run", c.program, c.runs, c.avg_ns);
        }
        assert_eq!(costs.len(), 3);
        assert!(costs.iter().all(|c| c.runs > 0), "a floor program did not run");

        // The bench's own path: the programs found among this process's fds, by name.
        let by_name = ProgramTimes::of_process(std::process::id()).unwrap();
        println!("of_process: {:?}", by_name.0);
        for h in &HOOKS {
            assert!(by_name.0.contains_key(h.prog_name), "{} not found by id", h.prog_name);
        }
        let mut attached = floor_programs_at(&root);
        attached.sort();
        assert_eq!(attached, ["floor_connect4", "floor_egress", "floor_ingress"]);

        drop(floor);
        drop(stats);
        assert!(floor_programs_at(&root).is_empty(), "floor programs still attached");
    }
}
