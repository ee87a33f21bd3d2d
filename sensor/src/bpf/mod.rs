//! Loading the kernel object, configuring it, attaching its programs at a cgroup, and
//! detaching (by dropping: cgroup attachments are bpf_links owned by this process's fds, so
//! they go away when the process exits, even on SIGKILL).

mod attachment;
mod counters;
mod tls_probes;

use std::{fs::File, path::Path};

use anyhow::{anyhow, Context};
use aya::{
    maps::{MapData, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use sensor_common::limits::{
    map_names, program_names, ROLES_ENABLED_GLOBAL, STORAGE_BY_PACKET_SOCKET_GLOBAL,
    WATCHED_PORTS_ENTRIES, WATCHED_PORT_SLOTS_GLOBAL,
};

use attachment::attach_type;
pub use attachment::AttachmentCheck;
pub use counters::{KernelCounters, KernelStats};
pub use tls_probes::TlsProbes;

/// The kernel object built by `build.rs` from `sensor-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// Map sizes and settings chosen at load time.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub ring_buffer_bytes: u32,
    /// Bit `1 << Role as u32` for each end of sessions to watch.
    pub roles: u32,
    /// Turn the kernel programs' diagnostics on (`--kernel-log`).
    pub kernel_log: bool,
    /// Load the TLS uprobes (`--tls-verification`), to be attached as OpenSSL copies are
    /// found.
    pub tls_probes: bool,
}

/// The kernel programs' log level (aya-log's `AYA_LOG_LEVEL`, read-only data fixed at load).
/// Off is 0: no level passes, and the verifier drops the logging code as dead, so the
/// default costs nothing per packet. On is `info`, the level every kernel log line uses.
fn kernel_log_level(on: bool) -> u8 {
    if on {
        aya_log::Level::Info as u8
    } else {
        0
    }
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Attached {
    ebpf: Ebpf,
    pub programs: usize,
    /// Asks the kernel whether each program is still attached.
    pub check: Option<AttachmentCheck>,
    /// The kernel programs' log, with `--kernel-log` (see [`crate::kernel_log`]).
    pub kernel_log: Option<KernelLogger>,
    /// The TLS uprobes' attachments, when loaded.
    pub tls: Option<TlsProbes>,
    /// The paths through the programs this kernel's verifier allowed.
    pub kernel_paths: KernelPaths,
}

/// aya-log's reader of the kernel programs' log records, handing them to the `log` crate.
pub type KernelLogger = EbpfLogger<&'static dyn log::Log>;

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK, whose default (8 MiB
/// or less) is below what the ring buffer and maps need. Lift it where we may; newer
/// kernels charge the memory cgroup instead and ignore it. If lifting is refused, the
/// load's own error says what failed (systemd: LimitMEMLOCK=infinity does it for us).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid, fully initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            err = %std::io::Error::last_os_error(),
            "could not lift RLIMIT_MEMLOCK (only kernels before 5.11 need it)"
        );
    }
}

impl Attached {
    /// Load the object with the watched ports, and attach the programs at `cgroup_dir`.
    ///
    /// The packet programs are attached before the connect hooks: a connection recorded by
    /// connect() then always has its SYN seen on egress.
    pub fn load_and_attach(
        ports: &[u16],
        cgroup_dir: &Path,
        options: LoadOptions,
    ) -> anyhow::Result<Attached> {
        raise_memlock_limit();
        let mut paths = KernelPaths::NEWEST;
        let mut ebpf = loop {
            match load_object(ports, &options, paths) {
                Ok(ebpf) => break ebpf,
                Err(err) => match paths.without_refused(&format!("{err:#}")) {
                    Some(older) => paths = older,
                    None => return Err(err),
                },
            }
        };
        let kernel_log = if options.kernel_log {
            Some(EbpfLogger::init(&mut ebpf).context("cannot read the kernel programs' log")?)
        } else {
            None
        };

        let cgroup = File::open(cgroup_dir)
            .with_context(|| format!("cannot open cgroup directory {}", cgroup_dir.display()))?;
        let mut programs = 0;
        let mut expected = Vec::new();

        for (name, direction, kernel_type) in PACKET_PROGRAMS {
            let skb: &mut CgroupSkb = program(&mut ebpf, name)?;
            skb.attach(&cgroup, direction, CgroupAttachMode::Single)
                .with_context(|| attach_error(name, cgroup_dir))?;
            let info = skb.info()?;
            // How close the packet programs are to the verifier's budget (1M instructions).
            tracing::debug!(
                program = name,
                verified_instructions = info.verified_instruction_count(),
                "loaded"
            );
            expected.push((kernel_type, info.id()));
            programs += 1;
        }

        for (name, kernel_type) in CONNECT_PROGRAMS {
            let hook: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            hook.attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| attach_error(name, cgroup_dir))?;
            expected.push((kernel_type, hook.info()?.id()));
            programs += 1;
        }
        let check = Some(AttachmentCheck::new(cgroup, expected));
        let tls = options.tls_probes.then(TlsProbes::default);
        Ok(Attached { ebpf, programs, check, kernel_log, tls, kernel_paths: paths })
    }

    /// Attach the TLS uprobes to newly found libraries (no-op without `--tls-verification`);
    /// says how many files carry them now and how many attachments failed in this call.
    pub fn probe_tls_libraries(
        &mut self,
        libraries: &[crate::tls_libraries::Library],
    ) -> (usize, u64) {
        let Some(tls) = self.tls.as_mut() else { return (0, 0) };
        let failures_before = tls.failures;
        for library in libraries {
            tls.attach(&mut self.ebpf, library);
        }
        (tls.files(), tls.failures - failures_before)
    }

    /// The ring buffer the programs send events through (taken once).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", map_names::EVENTS))?;
        RingBuf::try_from(map).context("EVENTS is not a ring buffer")
    }

    /// Handles on the kernel counters (taken once).
    pub fn take_counters(&mut self) -> anyhow::Result<KernelCounters> {
        KernelCounters::take_from(&mut self.ebpf)
    }
}

/// The packet programs, in attach order (before the connect hooks: a connection recorded
/// by connect() then always has its SYN seen on egress).
const PACKET_PROGRAMS: [(&str, CgroupSkbAttachType, u32); 2] = [
    (program_names::INGRESS, CgroupSkbAttachType::Ingress, attach_type::CGROUP_INET_INGRESS),
    (program_names::EGRESS, CgroupSkbAttachType::Egress, attach_type::CGROUP_INET_EGRESS),
];

const CONNECT_PROGRAMS: [(&str, u32); 2] = [
    (program_names::CONNECT4, attach_type::CGROUP_INET4_CONNECT),
    (program_names::CONNECT6, attach_type::CGROUP_INET6_CONNECT),
];

/// Which thread's TLS handshake announcement a client's ClientHello takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLink {
    /// The thread sending it (read in the packet hook): the strong link.
    SendingThread,
    /// The thread that called connect() (kernels whose packet hooks cannot read the current
    /// thread): wrong only for a client that connects on one thread and handshakes on
    /// another while the first handshakes another connection of another verification mode.
    ConnectingThread,
}

/// The paths through the kernel programs that depend on what the kernel's verifier
/// allows, each chosen by a read-only global the verifier prunes the other path of. Found
/// by loading: the newest first, then without what the verifier refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPaths {
    /// How a ClientHello is tied to its client's TLS handshake.
    pub tls_link: TlsLink,
    /// `bpf_sk_storage_get` on the packet's socket as the hook has it (Linux 5.10 on):
    /// one helper call fewer per packet of a judged connection than through
    /// `bpf_sk_fullsock`.
    pub storage_by_packet_socket: bool,
}

impl KernelPaths {
    const NEWEST: KernelPaths =
        KernelPaths { tls_link: TlsLink::SendingThread, storage_by_packet_socket: true };

    /// The paths to load next after the verifier refused the object with `message`, if
    /// it refused one that has an older alternative (one per load: the verifier stops at
    /// its first objection). Matched on the refusal itself, not on the instruction trace
    /// the log also holds (which names every helper called on the way).
    fn without_refused(self, message: &str) -> Option<KernelPaths> {
        // Kernels before cgroup_skb programs could read the current thread (6.1).
        if self.tls_link == TlsLink::SendingThread
            && message.contains("unknown func bpf_get_current_pid_tgid")
        {
            tracing::info!(
                "this kernel's packet programs cannot read the sending thread: a TLS \
                 handshake is tied to the thread that called connect()"
            );
            return Some(KernelPaths { tls_link: TlsLink::ConnectingThread, ..self });
        }
        // Kernels whose bpf_sk_storage_get wants a full socket (5.8 and 5.9, run with
        // --allow-untested-kernel: "R2 type=sock_common expected=sock"). The packet's
        // socket is passed to no other helper before its full socket is taken.
        if self.storage_by_packet_socket && message.contains("type=sock_common expected=sock") {
            tracing::info!(
                "this kernel's socket storage needs a full socket: packets of judged \
                 connections take one helper call more"
            );
            return Some(KernelPaths { storage_by_packet_socket: false, ..self });
        }
        None
    }
}

/// The object loaded and every program verified (nothing attached yet).
fn load_object(ports: &[u16], options: &LoadOptions, paths: KernelPaths) -> anyhow::Result<Ebpf> {
    let level = kernel_log_level(options.kernel_log);
    let slots = watched_port_slots(ports)?;
    let by_sending_thread = u8::from(paths.tls_link == TlsLink::SendingThread);
    let storage_by_packet_socket = u8::from(paths.storage_by_packet_socket);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::EVENTS, options.ring_buffer_bytes)
        .override_global("AYA_LOG_LEVEL", &level, true)
        .override_global("TLS_LINK_BY_SENDING_THREAD", &by_sending_thread, true)
        .override_global(STORAGE_BY_PACKET_SOCKET_GLOBAL, &storage_by_packet_socket, true)
        .override_global(ROLES_ENABLED_GLOBAL, &options.roles, true)
        .override_global(WATCHED_PORT_SLOTS_GLOBAL, &*slots, true)
        .load(EBPF_OBJECT)
        .map_err(|err| {
            anyhow!(err).context(
                "loading the eBPF object failed: the kernel refused a map or program \
                 (run `sensor check` to see which requirement is missing)",
            )
        })?;
    for (name, _, _) in PACKET_PROGRAMS {
        let skb: &mut CgroupSkb = program(&mut ebpf, name)?;
        skb.load().with_context(|| format!("the kernel verifier rejected {name}"))?;
    }
    for (name, _) in CONNECT_PROGRAMS {
        let hook: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        hook.load().with_context(|| format!("the kernel verifier rejected {name}"))?;
    }
    if options.tls_probes {
        tls_probes::load(&mut ebpf)?;
    }
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    prog.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

fn attach_error(name: &str, cgroup_dir: &Path) -> String {
    format!(
        "attaching {name} at {} failed (needs CAP_NET_ADMIN or root, and a cgroup v2 \
         directory)",
        cgroup_dir.display()
    )
}

/// The kernel's port table (`WATCHED_PORT_SLOTS`): each watched port's slot in `ports`
/// plus one, 0 for every other port.
fn watched_port_slots(ports: &[u16]) -> anyhow::Result<Box<[u8; WATCHED_PORTS_ENTRIES as usize]>> {
    let mut slots = Box::new([0u8; WATCHED_PORTS_ENTRIES as usize]);
    for (slot, &port) in ports.iter().enumerate() {
        slots[usize::from(port)] = u8::try_from(slot + 1).context("too many watched ports")?;
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal the verifier can make of a newer path gives the older one, once; any
    /// other refusal ends the loading (so it cannot loop).
    #[test]
    fn paths_fall_back_once_per_refusal() {
        let pid_tgid =
            "42: (85) call bpf_get_current_pid_tgid#14\nunknown func bpf_get_current_pid_tgid#14";
        let sock_common = "52: (85) call bpf_sk_storage_get#107\nR2 type=sock_common expected=sock";
        let no_tls_link = KernelPaths::NEWEST.without_refused(pid_tgid).unwrap();
        assert_eq!(no_tls_link.tls_link, TlsLink::ConnectingThread);
        assert!(no_tls_link.storage_by_packet_socket);
        let oldest = no_tls_link.without_refused(sock_common).unwrap();
        assert_eq!(
            oldest,
            KernelPaths { tls_link: TlsLink::ConnectingThread, storage_by_packet_socket: false }
        );
        assert_eq!(oldest.without_refused(pid_tgid), None);
        assert_eq!(oldest.without_refused(sock_common), None);
        assert_eq!(KernelPaths::NEWEST.without_refused("R1 invalid mem access"), None);
        // A refusal elsewhere on a path that called the helper is not this refusal.
        let elsewhere = "42: (85) call bpf_get_current_pid_tgid#14\n50: R3 invalid mem access";
        assert_eq!(KernelPaths::NEWEST.without_refused(elsewhere), None);
    }

    /// Each configured port holds its position in the list plus one (the kernel's slot for
    /// its counters), every other port 0; more ports than a byte can number are refused.
    #[test]
    fn the_port_table_numbers_the_configured_ports_only() {
        let slots = watched_port_slots(&[26257, 5432, 0, 65535]).unwrap();
        assert_eq!((slots[26257], slots[5432], slots[0], slots[65535]), (1, 2, 3, 4));
        assert_eq!(slots.iter().filter(|&&slot| slot != 0).count(), 4);
        let too_many: Vec<u16> = (1..=256).collect();
        assert!(watched_port_slots(&too_many).is_err());
    }
}
