//! What a connect() to a watched port cannot go below while the session's state lives in
//! the socket's storage: a program that does nothing but create a storage entry of the
//! sensor's size (`ConnState`) on connect4 to the watched port, run with the sensor
//! detached (the first storage on a socket costs more than a second one: the socket's
//! storage head is allocated with it). Its average minus connect4's empty floor is the
//! allocation's own cost; the sensor's connect4 minus this is what the sensor adds to it.
//!
//! Its packet counterpart (`LookupFloor`): programs on egress and ingress that look up the
//! socket's storage for every packet of a watched socket (created on its first), what the
//! sensor's judged path (a decided session's later packets) cannot go below while its state
//! lives in socket storage: the port tests, `bpf_sk_fullsock`, `bpf_sk_storage_get`.
//!
//! A socket-storage map needs BTF for its key and value, so a minimal BTF (an `int` key and
//! an array of ints the size of `ConnState`) is loaded first, by hand, as the floor's
//! programs are (see [`super::floor`]).

use std::{
    ffi::c_int,
    mem::size_of,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::Context;
use sensor_common::event::ConnState;

use super::{
    floor::{self, Insn, ATTR_SIZE},
    kstats::ProgramTimes,
};

const BPF_MAP_CREATE: c_int = 0;
const BPF_BTF_LOAD: c_int = 18;
const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_FUNC_SK_STORAGE_GET: i32 = 107;
const BPF_SK_STORAGE_GET_F_CREATE: i32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `struct bpf_sock_addr`: `user_port` (network byte order in the low 16 bits), `sk`.
const SOCK_ADDR_USER_PORT: i16 = 24;
const SOCK_ADDR_SK: i16 = 64;

/// The program's row in the kernel-cost table.
pub const ROW: &str = "socket storage created (no other work): connect4";
const PROG_NAME: &str = "floor_sk_create";

/// `union bpf_attr` for BPF_BTF_LOAD.
#[repr(C)]
struct BtfLoadAttr {
    btf: u64,
    log_buf: u64,
    btf_size: u32,
    log_size: u32,
    log_level: u32,
    _zero: [u8; ATTR_SIZE - 28],
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to the BTF type ids.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    _zero: [u8; ATTR_SIZE - 60],
}

const _: () = {
    use std::mem::offset_of;
    assert!(size_of::<BtfLoadAttr>() == ATTR_SIZE);
    assert!(offset_of!(BtfLoadAttr, log_level) == 24);
    assert!(size_of::<MapCreateAttr>() == ATTR_SIZE);
    assert!(offset_of!(MapCreateAttr, map_name) == 28);
    assert!(offset_of!(MapCreateAttr, btf_fd) == 48);
    assert!(offset_of!(MapCreateAttr, btf_value_type_id) == 56);
    // The value is an array of 4-byte ints.
    assert!(size_of::<ConnState>().is_multiple_of(4));
};

/// Raw BTF: type 1 `int` (4 bytes, signed), type 2 `int[N]` of `ConnState`'s size.
fn btf() -> Vec<u8> {
    const BTF_KIND_INT: u32 = 1;
    const BTF_KIND_ARRAY: u32 = 3;
    const BTF_INT_SIGNED: u32 = 1;
    let strings: &[u8] = b"\0int\0";
    let mut types: Vec<u32> = vec![
        // [1] int: name_off, info (kind << 24), size; then encoding << 24 | bits.
        1,
        BTF_KIND_INT << 24,
        4,
        BTF_INT_SIGNED << 24 | 32,
        // [2] int[N]: no name, info, size unused; then element type, index type, count.
        0,
        BTF_KIND_ARRAY << 24,
        0,
        1,
        1,
        (size_of::<ConnState>() / 4) as u32,
    ];
    let types_len = (types.len() * 4) as u32;
    let mut header: Vec<u32> = vec![
        0xeb9f | 1 << 16, // magic 0xeB9F, version 1, flags 0
        24,               // hdr_len
        0,                // type_off
        types_len,
        types_len, // str_off
        strings.len() as u32,
    ];
    header.append(&mut types);
    let mut bytes: Vec<u8> = header.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.extend_from_slice(strings);
    bytes
}

fn load_btf() -> anyhow::Result<OwnedFd> {
    let btf = btf();
    let mut log = vec![0u8; 16 * 1024];
    let mut attr = BtfLoadAttr {
        btf: btf.as_ptr() as u64,
        log_buf: log.as_mut_ptr() as u64,
        btf_size: btf.len() as u32,
        log_size: log.len() as u32,
        log_level: 1,
        _zero: [0; ATTR_SIZE - 28],
    };
    floor::bpf(BPF_BTF_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        anyhow::anyhow!("cannot load BTF: {e}: {}", String::from_utf8_lossy(&log[..end]).trim())
    })
}

fn create_map(btf: &OwnedFd) -> anyhow::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    map_name[..13].copy_from_slice(b"floor_sk_stor");
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_SK_STORAGE,
        key_size: 4,
        value_size: size_of::<ConnState>() as u32,
        max_entries: 0,
        map_flags: BPF_F_NO_PREALLOC,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        map_ifindex: 0,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: 1,
        btf_value_type_id: 2,
        _zero: [0; ATTR_SIZE - 60],
    };
    floor::bpf(BPF_MAP_CREATE, &mut attr).context("cannot create a socket-storage map")
}

/// On connect4 to `port`: `bpf_sk_storage_get(map, ctx->sk, NULL, F_CREATE)`; nothing else.
fn program(map: &OwnedFd, port: u16) -> [Insn; 10] {
    // user_port as a 32-bit load sees the port's network-order bytes.
    let port_on_wire = i32::from(u16::from_ne_bytes(port.to_be_bytes()));
    [
        insn(0x61, 2, 1, SOCK_ADDR_USER_PORT, 0), // r2 = *(u32 *)(r1 + user_port)
        insn(0x55, 2, 0, 6, port_on_wire),        // if r2 != port goto exit_ok
        insn(0x79, 2, 1, SOCK_ADDR_SK, 0),        // r2 = *(u64 *)(r1 + sk)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64, 2 slots)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, 0), // r3 = NULL (zeroed value)
        insn(0xb7, 4, 0, 0, BPF_SK_STORAGE_GET_F_CREATE), // r4 = F_CREATE
        insn(0x85, 0, 0, 0, BPF_FUNC_SK_STORAGE_GET), // call bpf_sk_storage_get
        insn(0xb7, 0, 0, 0, 1), // exit_ok: r0 = 1 (allow)
        insn(0x95, 0, 0, 0, 0), // exit
    ]
}

/// The lookup floor's row on `hook` (egress, ingress).
pub fn lookup_row(hook: &str) -> String {
    format!("{LOOKUP_ROW_PREFIX}{hook}")
}

const LOOKUP_ROW_PREFIX: &str = "socket storage looked up (no other work): ";

/// The hook of a lookup floor row, to subtract that hook's empty floor from it.
pub fn lookup_hook_of(row: &str) -> Option<&str> {
    row.strip_prefix(LOOKUP_ROW_PREFIX)
}

/// On every packet (cgroup_skb) of a socket with `port` at either end: the socket's storage,
/// created if it has none: `bpf_sk_storage_get(map, bpf_sk_fullsock(skb->sk), NULL,
/// F_CREATE)`; nothing else. The ports are the `__sk_buff` fields (no helper), as the
/// sensor reads them.
fn lookup_program(map: &OwnedFd, port: u16) -> [Insn; 17] {
    const SKB_REMOTE_PORT: i16 = 132;
    const SKB_LOCAL_PORT: i16 = 136;
    const SKB_SK: i16 = 168;
    const BPF_FUNC_SK_FULLSOCK: i32 = 95;
    // `remote_port` holds the port's network-order bytes in its upper half on a
    // little-endian host (the kernel shifts them there), as they are on a big-endian one.
    let remote = if cfg!(target_endian = "little") {
        u32::from(port.swap_bytes()) << 16
    } else {
        u32::from(port)
    };
    [
        insn(0xbf, 6, 1, 0, 0),                               // r6 = r1 (the skb)
        insn(0x61, 2, 6, SKB_LOCAL_PORT, 0),                  // r2 = skb->local_port (host order)
        insn(0x16, 2, 0, 2, i32::from(port)),                 // if w2 == port goto sk
        insn(0x61, 2, 6, SKB_REMOTE_PORT, 0),                 // r2 = skb->remote_port
        insn(0x56, 2, 0, 10, remote as i32), // if w2 != port goto exit_ok (32-bit compare)
        insn(0x79, 1, 6, SKB_SK, 0),         // sk: r1 = skb->sk
        insn(0x15, 1, 0, 8, 0),              // if r1 == NULL goto exit_ok
        insn(0x85, 0, 0, 0, BPF_FUNC_SK_FULLSOCK), // r0 = bpf_sk_fullsock(r1)
        insn(0x15, 0, 0, 6, 0),              // if r0 == NULL goto exit_ok
        insn(0xbf, 2, 0, 0, 0),              // r2 = r0
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64, 2 slots)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, 0), // r3 = NULL (zeroed value)
        insn(0xb7, 4, 0, 0, BPF_SK_STORAGE_GET_F_CREATE), // r4 = F_CREATE
        insn(0x85, 0, 0, 0, BPF_FUNC_SK_STORAGE_GET), // call bpf_sk_storage_get
        insn(0xb7, 0, 0, 0, 1), // exit_ok: r0 = 1 (pass)
        insn(0x95, 0, 0, 0, 0), // exit
    ]
}

/// The lookup programs on egress and ingress, attached to the cgroup v2 directory `cgroup`;
/// dropping detaches them, then frees them and their map.
pub struct LookupFloor {
    attached: Vec<floor::Attached>,
    _map: OwnedFd,
}

impl LookupFloor {
    pub fn attach(cgroup: &Path, port: u16) -> anyhow::Result<LookupFloor> {
        let btf = load_btf()?;
        let map = create_map(&btf)?;
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("cannot open the cgroup {}", cgroup.display()))?;
        let mut attached = Vec::new();
        for (hook, name, attach_type) in [
            ("egress", "floor_lookup_eg", floor::BPF_CGROUP_INET_EGRESS),
            ("ingress", "floor_lookup_in", floor::BPF_CGROUP_INET_INGRESS),
        ] {
            let prog = floor::load_program(
                name,
                floor::BPF_PROG_TYPE_CGROUP_SKB,
                attach_type,
                &lookup_program(&map, port),
            )?;
            let link = floor::link_program(&prog, &dir, attach_type)
                .with_context(|| format!("cannot attach {name} to {}", cgroup.display()))?;
            attached.push(floor::Attached::new(lookup_row(hook), link, prog));
        }
        Ok(LookupFloor { attached, _map: map })
    }

    /// Run counts and times so far, per row (see [`lookup_row`]).
    pub fn times(&self) -> anyhow::Result<ProgramTimes> {
        floor::Attached::times(&self.attached)
    }
}

/// One instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | src << 4, off, imm }
}

/// The storage-creating program, attached to the cgroup v2 directory `cgroup`; dropping
/// detaches it (its link closes first), then frees the program and the map.
pub struct StorageFloor {
    _link: OwnedFd,
    prog: OwnedFd,
    /// The program holds it too; kept for `has_storage`'s lookups.
    _map: OwnedFd,
}

impl StorageFloor {
    pub fn attach(cgroup: &Path, port: u16) -> anyhow::Result<StorageFloor> {
        let btf = load_btf()?;
        let map = create_map(&btf)?;
        let prog = floor::load_program(
            PROG_NAME,
            floor::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            floor::BPF_CGROUP_INET4_CONNECT,
            &program(&map, port),
        )?;
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("cannot open the cgroup {}", cgroup.display()))?;
        let link = floor::link_program(&prog, &dir, floor::BPF_CGROUP_INET4_CONNECT)
            .with_context(|| format!("cannot attach {PROG_NAME} to {}", cgroup.display()))?;
        Ok(StorageFloor { _link: link, prog, _map: map })
    }

    /// Run count and time so far, under [`ROW`].
    pub fn times(&self) -> anyhow::Result<ProgramTimes> {
        ProgramTimes::of_own_fds([(ROW.to_string(), self.prog.as_raw_fd())])
    }

    /// Whether `socket` has an entry in the program's map.
    #[cfg(test)]
    fn has_storage(&self, socket: &impl AsRawFd) -> std::io::Result<bool> {
        has_storage(&self._map, socket)
    }
}

/// Whether `socket` has an entry in `map` (from user space, a socket storage map is keyed
/// by the socket's fd).
#[cfg(test)]
fn has_storage(map: &OwnedFd, socket: &impl AsRawFd) -> std::io::Result<bool> {
    const BPF_MAP_LOOKUP_ELEM: c_int = 1;
    #[repr(C)]
    struct LookupAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
        _zero: [u8; ATTR_SIZE - 32],
    }
    let key: i32 = socket.as_raw_fd();
    let mut value = [0u8; size_of::<ConnState>()];
    let mut attr = LookupAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const i32 as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
        _zero: [0; ATTR_SIZE - 32],
    };
    match floor::bpf_call(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_btf_describes_an_int_key_and_a_value_of_conn_state_size() {
        let btf = btf();
        let word = |i: usize| u32::from_ne_bytes(btf[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0) & 0xffff, 0xeb9f);
        assert_eq!(word(1), 24);
        assert_eq!(word(3), 40, "two types: int (16 bytes), array (24 bytes)");
        assert_eq!(word(6 + 9), (size_of::<ConnState>() / 4) as u32);
        assert_eq!(&btf[24 + 40..], b"\0int\0");
    }

    /// Against the real kernel (root): loads and attaches the program, connects to a
    /// listener on the chosen port and to one on another port: only the first socket gets
    /// storage, and the program ran for both.
    /// `cargo test -p xtask storage_floor -- --ignored --nocapture`
    #[test]
    #[ignore = "loads and attaches BPF programs: needs root"]
    fn storage_floor_creates_storage_on_the_chosen_port_only() {
        let mut stats_attr = [0u32; 4];
        let _stats = floor::bpf(32, &mut stats_attr).expect("BPF_ENABLE_STATS");
        let chosen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = chosen.local_addr().unwrap().port();
        let floor = StorageFloor::attach(&floor::cgroup2_root().unwrap(), port).unwrap();
        let before = floor.times().unwrap();
        let to_chosen = std::net::TcpStream::connect(chosen.local_addr().unwrap()).unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let costs = floor.times().unwrap().since(&before);
        println!("{}: {} runs, {:.0} ns/run", costs[0].program, costs[0].runs, costs[0].avg_ns);
        assert!(costs[0].runs >= 2, "the program ran for both connects");
        assert!(floor.has_storage(&to_chosen).unwrap(), "no storage on the chosen port's socket");
        assert!(!floor.has_storage(&to_other).unwrap(), "storage on another port's socket");
    }

    /// Against the real kernel (root): the lookup programs run on the packets of a
    /// connection to the chosen port (and give its sockets storage, both ends on loopback)
    /// and leave a connection to another port alone.
    /// `cargo test -p xtask storage_floor -- --ignored --nocapture`
    #[test]
    #[ignore = "loads and attaches BPF programs: needs root"]
    fn lookup_floor_looks_up_storage_on_the_chosen_port_only() {
        use std::io::{Read, Write};
        let mut stats_attr = [0u32; 4];
        let _stats = floor::bpf(32, &mut stats_attr).expect("BPF_ENABLE_STATS");
        let chosen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = chosen.local_addr().unwrap().port();
        let floor = LookupFloor::attach(&floor::cgroup2_root().unwrap(), port).unwrap();
        let before = floor.times().unwrap();
        let mut to_chosen = std::net::TcpStream::connect(chosen.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = chosen.accept().unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        to_chosen.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).unwrap();
        let costs = floor.times().unwrap().since(&before);
        for cost in &costs {
            println!("{}: {} runs, {:.0} ns/run", cost.program, cost.runs, cost.avg_ns);
            assert!(cost.runs > 0, "{} never ran", cost.program);
        }
        assert_eq!(costs.len(), 2);
        assert!(has_storage(&floor._map, &to_chosen).unwrap(), "no storage on the chosen port's");
        assert!(has_storage(&floor._map, &accepted).unwrap(), "no storage on the accepted socket");
        assert!(!has_storage(&floor._map, &to_other).unwrap(), "storage on another port's socket");
    }
}
