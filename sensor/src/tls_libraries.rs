//! Where a process's TLS and PostgreSQL client libraries are, found by what they export.
//!
//! The agent attaches its TLS uprobes (`crate::bpf::TlsProbes`) to every OpenSSL found here,
//! to learn from the client's TLS library whether it verifies the server. Libraries are recognised by their
//! exported symbols, never by file name or version: wheels bundle their own renamed copies
//! (psycopg2-binary's `libssl-8bd944e8.so.3`), containers have their own files. A process's
//! files are read through `/proc/PID/root`, so a library in another mount namespace is found
//! at the path the kernel can attach to; each file is examined once, by device and inode
//! (the kernel keys uprobes by inode, so one attachment serves every process mapping it).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};

/// OpenSSL's functions that say whether, and when, a client verifies the server.
pub const OPENSSL_SYMBOLS: [&str; 6] = [
    "SSL_CTX_new",
    "SSL_CTX_set_verify",
    "SSL_set_verify",
    "SSL_new",
    "SSL_connect",
    "SSL_do_handshake",
];

/// Exported by the Node.js runtime (which carries its own OpenSSL). Node sets
/// `SSL_VERIFY_NONE` in OpenSSL and checks the certificate in JavaScript after the
/// handshake, so its OpenSSL calls say nothing about verification: never probed.
pub const NODE_MARKER: &str = "napi_module_register";

/// Where a distribution's shared libraries are: examined at start, so a client started
/// later that links the system's OpenSSL is probed from its first connection on.
pub const SYSTEM_LIBRARY_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/usr/local/lib",
];

/// libpq's connection entry points.
pub const LIBPQ_SYMBOLS: [&str; 3] = ["PQconnectStart", "PQconnectStartParams", "PQconnectPoll"];

/// What a library is, by what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LibraryKind {
    /// Exports every one of [`OPENSSL_SYMBOLS`].
    OpenSsl,
    /// Exports every one of [`LIBPQ_SYMBOLS`].
    Libpq,
}

impl LibraryKind {
    pub const ALL: [LibraryKind; 2] = [LibraryKind::OpenSsl, LibraryKind::Libpq];

    pub fn symbols(self) -> &'static [&'static str] {
        match self {
            LibraryKind::OpenSsl => &OPENSSL_SYMBOLS,
            LibraryKind::Libpq => &LIBPQ_SYMBOLS,
        }
    }
}

/// A file mapped into a process: one per file, however many mappings it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The path inside the process's mount namespace.
    pub path: PathBuf,
    pub file: FileId,
}

/// A file's identity across mount namespaces: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `major:minor` as /proc/PID/maps writes it (hex).
    pub device: (u32, u32),
    pub inode: u64,
}

impl FileId {
    /// The identity of a file from its metadata, as /proc/PID/maps would write it.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let dev = meta.dev();
        FileId { device: (libc::major(dev), libc::minor(dev)), inode: meta.ino() }
    }
}

/// The files in a /proc/PID/maps text, each once, in order of first mapping. Anonymous
/// mappings, pseudo-files (`[heap]`) and deleted files (`(deleted)`: nothing to attach to)
/// are left out; a line that does not parse is skipped.
pub fn mapped_files(maps: &str) -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = Vec::new();
    for line in maps.lines() {
        let Some(mapped) = parse_maps_line(line) else { continue };
        if !files.iter().any(|f| f.file == mapped.file) {
            files.push(mapped);
        }
    }
    files
}

/// `address perms offset dev inode path`; the path is the rest of the line (it may hold
/// spaces).
fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (value, after) = trimmed.split_at(end);
        rest = after;
        value
    };
    let (_address, _perms, _offset, device, inode) = (field(), field(), field(), field(), field());
    let path = rest.trim_start();
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 || !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    let (major, minor) = device.split_once(':')?;
    let device = (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    Some(MappedFile { path: PathBuf::from(path), file: FileId { device, inode } })
}

/// Which of `wanted` the ELF file at `path` exports: defined, global or weak, in its dynamic
/// symbol table (what the dynamic linker resolves, so what every caller of the library
/// reaches). Not an ELF file, or unreadable: an error.
pub fn exported_symbols(path: &Path, wanted: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    // Read on demand: only the headers and the dynamic symbol table of a (possibly large)
    // executable are ever loaded.
    let cache = object::ReadCache::new(std::fs::File::open(path)?);
    let file = object::File::parse(&cache)?;
    Ok(file
        .dynamic_symbols()
        .filter(|s| s.is_definition() && s.is_global())
        .filter_map(|s| s.name().ok())
        .filter(|name| wanted.contains(name))
        .map(str::to_string)
        .collect())
}

/// A library found in a process, as the kernel can attach to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    pub kind: LibraryKind,
    /// Reachable from the sensor: `/proc/PID/root/<path in the process>`.
    pub path: PathBuf,
    pub file: FileId,
}

/// Every file examined so far and what it turned out to be: each file is read once.
#[derive(Debug, Default)]
pub struct Catalog {
    examined: HashMap<FileId, Vec<LibraryKind>>,
    /// Each process's address space when its mappings were last read.
    address_spaces: HashMap<u32, AddressSpace>,
    /// Rescans since every process's mappings were last read whatever its address space.
    since_full: u32,
    /// The processes whose mappings the last scan read.
    last_read: Vec<u32>,
}

/// What a process's `stat` says of its address space: a library mapped since changes its
/// size (so does an exec, which brings a new address space), a new process under the same
/// pid its start time. Reading `stat` (one short line) instead of `maps` (a line per
/// mapping, thousands in a JVM) keeps a rescan of a host whose processes map nothing new
/// cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddressSpace {
    start_ticks: u64,
    virtual_bytes: u64,
}

impl AddressSpace {
    fn of(pid: u32) -> Option<AddressSpace> {
        AddressSpace::parse(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
    }

    /// From a `/proc/PID/stat` line: `starttime` and `vsize` are its 22nd and 23rd fields,
    /// counted after the command name. That name is raw bytes (spaces, parentheses, a
    /// character cut in two at 15 bytes): only what follows its last `)` is read as text.
    fn parse(stat: &[u8]) -> Option<AddressSpace> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let after_comm = std::str::from_utf8(&stat[close + 1..]).ok()?;
        // Fields from the 3rd (`state`) on.
        let mut fields = after_comm.split_whitespace().skip(22 - 3);
        let start_ticks = fields.next()?.parse().ok()?;
        let virtual_bytes = fields.next()?.parse().ok()?;
        Some(AddressSpace { start_ticks, virtual_bytes })
    }
}

/// Every this many rescans, every process's mappings are read whatever its `stat` says: a
/// library mapped in the same interval as an unmapping of exactly its size is found then.
const FULL_RESCAN_EVERY: u32 = 30;

impl Catalog {
    /// The libraries of `pid` not seen before in any process (a file already examined is not
    /// read again); `None` when its mappings could not be read (gone, or in the middle of
    /// an exec).
    pub fn scan_process(&mut self, pid: u32) -> Option<Vec<Library>> {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // Bytes, not text: one file name that is not UTF-8 must not hide the others.
        let maps = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
        let maps = String::from_utf8_lossy(&maps);
        let mut found = Vec::new();
        for mapped in mapped_files(&maps) {
            if self.examined.contains_key(&mapped.file) {
                continue;
            }
            let path = root.join(mapped.path.strip_prefix("/").unwrap_or(&mapped.path));
            let kinds = library_kinds(&path);
            for &kind in &kinds {
                found.push(Library { kind, path: path.clone(), file: mapped.file });
            }
            self.examined.insert(mapped.file, kinds);
        }
        Some(found)
    }

    /// The OpenSSL copies in the distribution's library directories (`libssl.so*` files,
    /// symbolic links resolved) not seen before.
    pub fn scan_system_libraries(&mut self) -> Vec<Library> {
        let mut found = Vec::new();
        for dir in SYSTEM_LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().starts_with("libssl.so") {
                    continue;
                }
                let Ok(path) = std::fs::canonicalize(entry.path()) else { continue };
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                let file = FileId::of(&meta);
                if self.examined.contains_key(&file) {
                    continue;
                }
                let kinds = library_kinds(&path);
                for &kind in &kinds {
                    found.push(Library { kind, path: path.clone(), file });
                }
                self.examined.insert(file, kinds);
            }
        }
        found
    }

    /// The libraries of every process on the host not seen before (this process's own
    /// excepted).
    pub fn scan_all_processes(&mut self) -> Vec<Library> {
        self.since_full = 0;
        self.rescan_processes()
    }

    /// The libraries not seen before of the processes whose address space changed since
    /// their mappings were last read (new processes among them); every process's, every
    /// [`FULL_RESCAN_EVERY`] calls.
    pub fn rescan_processes(&mut self) -> Vec<Library> {
        let full = self.since_full == 0;
        self.since_full = (self.since_full + 1) % FULL_RESCAN_EVERY;
        let own = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        let pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .filter(|&pid| pid != own)
            .collect();
        let mut seen = HashMap::with_capacity(pids.len());
        let mut found = Vec::new();
        self.last_read.clear();
        for pid in pids {
            // `stat` before `maps`: a library mapped in between is in the maps read now,
            // and one mapped after changes the next `stat`. A `stat` that cannot be read
            // or parsed: its maps are read every time.
            let now = AddressSpace::of(pid);
            if full || now.is_none() || self.address_spaces.get(&pid) != now.as_ref() {
                let Some(libraries) = self.scan_process(pid) else {
                    // Not remembered: read again at the next rescan, if it still exists.
                    continue;
                };
                found.extend(libraries);
                self.last_read.push(pid);
            }
            if let Some(now) = now {
                seen.insert(pid, now);
            }
        }
        // Exited processes are forgotten with the map of the previous scan.
        self.address_spaces = seen;
        found
    }

    /// The processes whose mappings the last scan read.
    pub fn last_read(&self) -> &[u32] {
        &self.last_read
    }

    /// Files examined so far.
    pub fn len(&self) -> usize {
        self.examined.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examined.is_empty()
    }
}

/// How often the processes are looked at again for libraries not seen before (a wheel
/// imported after start, a new container): each one's `stat`, and its mappings when its
/// address space changed. A library that appears and is used within one interval has its
/// first sessions' verification `unknown`.
pub const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Look for new libraries every [`RESCAN_INTERVAL`] on a thread of its own (reading the
/// processes' mappings must not hold up event handling), sending each batch found. Stops
/// when the receiver is gone.
pub fn spawn_scanner(
    mut catalog: Catalog,
    found: tokio::sync::mpsc::UnboundedSender<Vec<Library>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("tls-libraries".into()).spawn(move || loop {
        std::thread::sleep(RESCAN_INTERVAL);
        let libraries = catalog.rescan_processes();
        if found.is_closed() || (!libraries.is_empty() && found.send(libraries).is_err()) {
            return;
        }
    })
}

/// What the file at `path` is, by its exports (nothing, when it is not an ELF file).
fn library_kinds(path: &Path) -> Vec<LibraryKind> {
    let mut wanted: Vec<&str> =
        LibraryKind::ALL.iter().flat_map(|kind| kind.symbols().iter().copied()).collect();
    wanted.push(NODE_MARKER);
    let Ok(exported) = exported_symbols(path, &wanted) else { return Vec::new() };
    if exported.contains(NODE_MARKER) {
        return Vec::new();
    }
    LibraryKind::ALL
        .into_iter()
        .filter(|kind| kind.symbols().iter().all(|s| exported.contains(*s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    #[test]
    fn maps_lines_give_each_file_once() {
        let maps = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
55d0c8a02000-55d0c8a05000 r-xp 00002000 fd:01 1311 /usr/bin/python3.11
7f1c2c000000-7f1c2c021000 rw-p 00000000 00:00 0 
7f1c2d400000-7f1c2d45a000 r--p 00000000 00:2f 40 /opt/my app/libssl-8bd944e8.so.3
7f1c2d600000-7f1c2d61a000 r-xp 00000000 fd:01 77 /tmp/lib.so (deleted)
7ffd5b9e2000-7ffd5ba03000 rw-p 00000000 00:00 0                          [stack]
garbage
";
        let files = mapped_files(maps);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[0].path, Path::new("/usr/bin/python3.11"));
        assert_eq!(files[0].file, FileId { device: (0xfd, 1), inode: 1311 });
        assert_eq!(files[1].path, Path::new("/opt/my app/libssl-8bd944e8.so.3"));
        assert_eq!(files[1].file.device, (0, 0x2f));
    }

    /// A child process that maps `module` and waits on its stdin.
    struct Holder(Child);

    impl Holder {
        fn start(python: &Path, module: &str) -> Holder {
            let mut child = Command::new(python)
                .args([
                    "-c",
                    &format!("import {module}, sys; print('ready', flush=True); sys.stdin.read()"),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!("{}: {err} (scripts/bootstrap.sh --test-deps)", python.display())
                });
            let mut ready = String::new();
            use std::io::BufRead;
            std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut ready).unwrap();
            assert_eq!(ready.trim(), "ready", "{module} imported");
            Holder(child)
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn address_space_is_read_after_any_command_name_even_one_not_utf8() {
        let fields = b" S 1 4242 4242 0 -1 4194560 1234 0 0 0 12 3 0 0 20 0 \
                    1 0 98765 123456789 2000 18446744073709551615";
        let expected = Some(AddressSpace { start_ticks: 98765, virtual_bytes: 123456789 });
        let named = |comm: &[u8]| [b"4242 (".as_slice(), comm, b")", fields].concat();
        assert_eq!(AddressSpace::parse(&named(b"my (odd) app")), expected);
        // A name the kernel cut in the middle of a character: not UTF-8.
        assert_eq!(AddressSpace::parse(&named(b"caf\xc3")), expected);
        assert_eq!(AddressSpace::parse(b"4242 (cut) S 1 2"), None);
        assert_eq!(AddressSpace::parse(b"no parenthesis"), None);
    }

    /// A rescan reads a process's mappings only when its address space changed (here: it
    /// imported `ssl`), and every [`FULL_RESCAN_EVERY`] rescans whatever it says.
    #[test]
    fn a_rescan_reads_only_the_mappings_of_processes_whose_address_space_changed() {
        use std::io::{BufRead, Write};
        let child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n\
                          import ssl\nprint('imported', flush=True)\nsys.stdin.read()",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/bootstrap.sh --test-deps)");
        let mut held = Holder(child);
        let pid = held.0.id();
        let mut out = std::io::BufReader::new(held.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");

        let mut catalog = Catalog::default();
        catalog.scan_all_processes();
        assert!(catalog.last_read().contains(&pid), "the first scan reads every process");
        catalog.rescan_processes();
        assert!(!catalog.last_read().contains(&pid), "nothing mapped since");

        writeln!(held.0.stdin.as_ref().unwrap(), "go").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "imported");
        catalog.rescan_processes();
        assert!(catalog.last_read().contains(&pid), "libssl mapped: its address space grew");

        let reads = (0..FULL_RESCAN_EVERY)
            .filter(|_| {
                catalog.rescan_processes();
                catalog.last_read().contains(&pid)
            })
            .count();
        assert_eq!(reads, 1, "read again once in {FULL_RESCAN_EVERY} rescans, unchanged");
    }

    /// The system's libssl in a Python process that imported `ssl`; the file is examined
    /// once however many processes map it.
    #[test]
    fn the_system_libssl_is_found_by_its_exports() {
        let python = Holder::start(Path::new("/usr/bin/python3"), "ssl");
        let mut catalog = Catalog::default();
        let found = catalog.scan_process(python.0.id()).unwrap();
        let ssl: Vec<&Library> = found.iter().filter(|l| l.kind == LibraryKind::OpenSsl).collect();
        assert_eq!(ssl.len(), 1, "{found:?}");
        let prefix = format!("/proc/{}/root/", python.0.id());
        assert!(ssl[0].path.to_str().unwrap().starts_with(&prefix), "{:?}", ssl[0].path);
        assert!(ssl[0].path.to_str().unwrap().contains("libssl"), "{:?}", ssl[0].path);
        let examined = catalog.len();
        assert!(examined > 3, "every mapped file was examined: {examined}");

        let second = Holder::start(Path::new("/usr/bin/python3"), "ssl");
        assert!(catalog.scan_process(second.0.id()).unwrap().is_empty(), "already examined");
        assert_eq!(catalog.len(), examined, "the same files: none read again");
        assert!(catalog.scan_process(u32::MAX).is_none(), "no such process");
    }

    /// A process in its own mount namespace with its own copy of libssl (on a tmpfs only it
    /// can see): found, at a path through its /proc/PID/root that the sensor can open.
    #[test]
    fn a_copy_in_another_mount_namespace_is_found_through_proc_root() {
        let system = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let script = format!(
            "mount -t tmpfs private /mnt && cp {} /mnt/libssl.so.3 && \
             LD_LIBRARY_PATH=/mnt exec python3 -c \"import ssl, sys; print('ready', flush=True); \
             sys.stdin.read()\"",
            system.display()
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut ready).unwrap();
        let holder = Holder(child);
        assert_eq!(ready.trim(), "ready", "unshare --mount and mount need root, as the suite");
        assert!(!Path::new("/mnt/libssl.so.3").exists(), "the copy is not in our namespace");
        let found = Catalog::default().scan_process(holder.0.id()).unwrap();
        let copy = format!("/proc/{}/root/mnt/libssl.so.3", holder.0.id());
        let library = found.iter().find(|l| l.path == Path::new(&copy));
        assert!(library.is_some_and(|l| l.kind == LibraryKind::OpenSsl), "{found:?}");
        let system_id = std::fs::metadata(system).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_ne!(Some(library.unwrap().file.inode), system_id.ok(), "its own file");
    }

    /// psycopg2-binary bundles renamed copies of libpq and libssl: found by their exports,
    /// next to the system's libssl the interpreter itself maps (two OpenSSLs in one process).
    #[test]
    fn a_wheels_bundled_libpq_and_libssl_are_found() {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/.venv/bin/python");
        let python = Holder::start(&venv, "psycopg2");
        let found = Catalog::default().scan_process(python.0.id()).unwrap();
        for (kind, name) in [(LibraryKind::Libpq, "/libpq-"), (LibraryKind::OpenSsl, "/libssl-")] {
            let bundled = found.iter().find(|l| {
                let path = l.path.to_str().unwrap();
                l.kind == kind && path.contains("/psycopg2_binary.libs/") && path.contains(name)
            });
            assert!(bundled.is_some(), "no bundled {kind:?} in {found:?}");
        }
        let symbols = exported_symbols(&found[0].path, &OPENSSL_SYMBOLS).unwrap();
        assert!(symbols.iter().all(|s| OPENSSL_SYMBOLS.contains(&s.as_str())));
        assert!(exported_symbols(Path::new("/etc/hostname"), &OPENSSL_SYMBOLS).is_err());
    }
}
