//! The TLS uprobes: loaded with the other programs, attached to each OpenSSL copy the
//! library scanner finds (`crate::tls_libraries`), once per file: the kernel keys uprobes by
//! inode, so one attachment serves every process that maps the file, today's and later ones.

use std::collections::HashSet;

use anyhow::Context;
use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};
use sensor_common::limits::program_names;
use tracing::{debug, info, warn};

use crate::tls_libraries::{FileId, Library, LibraryKind};

/// Each uprobe program and the exported functions it is attached at. `optional` symbols
/// are not in every OpenSSL (`SSL_CTX_new_ex` is 3.0+).
struct Probe {
    program: &'static str,
    symbols: &'static [&'static str],
    optional: &'static [&'static str],
}

const PROBES: [Probe; 6] = [
    Probe {
        program: program_names::SSL_CTX_NEW_RETURN,
        symbols: &["SSL_CTX_new"],
        optional: &["SSL_CTX_new_ex"],
    },
    Probe {
        program: program_names::SSL_CTX_SET_VERIFY,
        symbols: &["SSL_CTX_set_verify"],
        optional: &[],
    },
    Probe { program: program_names::SSL_NEW, symbols: &["SSL_new"], optional: &[] },
    Probe { program: program_names::SSL_NEW_RETURN, symbols: &["SSL_new"], optional: &[] },
    Probe { program: program_names::SSL_SET_VERIFY, symbols: &["SSL_set_verify"], optional: &[] },
    Probe {
        program: program_names::SSL_HANDSHAKE,
        symbols: &["SSL_connect", "SSL_do_handshake"],
        optional: &[],
    },
];

/// Load every TLS uprobe program (before privileges are dropped; attaching comes later).
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for probe in &PROBES {
        let program: &mut UProbe = super::program(ebpf, probe.program)?;
        program
            .load()
            .with_context(|| format!("the kernel verifier rejected {}", probe.program))?;
    }
    Ok(())
}

/// Which OpenSSL files carry the uprobes.
#[derive(Debug, Default)]
pub struct TlsProbes {
    files: HashSet<FileId>,
    /// Attachments that failed (a file gone, a symbol not resolvable): each leaves that
    /// library's sessions `unknown`, never misjudged.
    pub failures: u64,
    /// The kernel refused a uprobe for want of privilege: said once, not tried again.
    denied: bool,
}

impl TlsProbes {
    /// The kernel refused a uprobe for want of privilege (no further attempts are made).
    pub fn denied(&self) -> bool {
        self.denied
    }

    /// OpenSSL files with uprobes attached.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Attach every probe to `library` (OpenSSL only; a file already probed is skipped).
    /// A probe that cannot be attached is logged and counted; the others stay.
    pub fn attach(&mut self, ebpf: &mut Ebpf, library: &Library) {
        if self.denied || library.kind != LibraryKind::OpenSsl || !self.files.insert(library.file) {
            return;
        }
        let mut attached = 0;
        for probe in &PROBES {
            let program: &mut UProbe = match super::program(ebpf, probe.program) {
                Ok(program) => program,
                Err(err) => {
                    warn!(%err, "TLS uprobe program missing");
                    self.failures += 1;
                    continue;
                }
            };
            for &symbol in probe.symbols.iter().chain(probe.optional) {
                match program.attach(symbol, &library.path, UProbeScope::AllProcesses) {
                    Ok(_) => attached += 1,
                    Err(err) if probe.optional.contains(&symbol) => {
                        debug!(err = %anyhow::Error::from(err), symbol, path = %library.path.display(), "optional symbol not attached");
                    }
                    Err(err) => {
                        let err = anyhow::Error::from(err);
                        self.failures += 1;
                        if is_permission_error(&err) {
                            warn!(
                                err = format!("{err:#}"),
                                "the kernel refused a uprobe: TLS verification needs CAP_SYS_ADMIN \
                                 and CAP_PERFMON (run as root, or grant both); every TLS session's \
                                 verification stays `unknown`. `--tls-verification off` silences this"
                            );
                            self.denied = true;
                            return;
                        }
                        warn!(err = format!("{err:#}"), symbol, path = %library.path.display(), "cannot attach a TLS uprobe: that library's sessions stay `unknown` verification");
                    }
                }
            }
        }
        info!(path = %library.path.display(), uprobes = attached, "probing OpenSSL for TLS verification");
    }
}

/// EACCES or EPERM anywhere in the error's chain.
fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EACCES || code == libc::EPERM)
    })
}
