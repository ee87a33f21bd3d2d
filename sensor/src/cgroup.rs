//! Finding the cgroup v2 hierarchy to attach at. Hosts differ (unified at /sys/fs/cgroup,
//! hybrid at /sys/fs/cgroup/unified, ...), so it is read from /proc/self/mountinfo, never
//! assumed.

use std::{
    fs,
    path::{Path, PathBuf},
    ptr,
};

use anyhow::{bail, Context};

/// The mount point of the cgroup2 filesystem whose root is the hierarchy's root.
pub fn find_cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo (is /proc mounted?)")?;
    match cgroup2_mount_from_mountinfo(&mountinfo) {
        Some(path) => Ok(path),
        None => bail!(
            "no cgroup v2 filesystem is mounted. The sensor attaches at the cgroup v2 root; \
             mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with \
             systemd.unified_cgroup_hierarchy=1), or pass --cgroup PATH"
        ),
    }
}

/// Where the sensor mounts a cgroup2 hierarchy of its own when the host has none mounted
/// (cgroup v1 only, e.g. systemd in legacy mode), as Cilium does: the v2 hierarchy exists
/// in every kernel the sensor supports, mounted or not, and its root holds every process.
pub const OWN_MOUNT: &str = "/run/pgwire-sensor/cgroup2";

/// Whether the kernel offers the cgroup2 filesystem (listed in /proc/filesystems).
pub fn cgroup2_available() -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|text| text.lines().any(|l| l.split_whitespace().last() == Some("cgroup2")))
}

/// Where `run` attaches; `sensor check` describes the same decision.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachAt {
    /// The `--cgroup` directory given (validated).
    Given(PathBuf),
    /// The host's cgroup2 root.
    Root(PathBuf),
    /// No cgroup2 mounted (a cgroup v1 host): the root of a mount of the sensor's own (or
    /// the one a killed sensor left at [`OWN_MOUNT`], taken over and unmounted).
    OwnMount,
}

/// Where to attach: the `--cgroup` given, else the cgroup2 root, else (the filesystem
/// exists but is not mounted) a mount of the sensor's own.
pub fn attach_point(given: Option<&Path>) -> anyhow::Result<AttachAt> {
    if let Some(dir) = given {
        validate_cgroup_dir(dir)?;
        return Ok(AttachAt::Given(dir.to_path_buf()));
    }
    match find_cgroup2_root() {
        Ok(root) if root == Path::new(OWN_MOUNT) => Ok(AttachAt::OwnMount),
        Ok(root) => Ok(AttachAt::Root(root)),
        Err(_) if cgroup2_available() => Ok(AttachAt::OwnMount),
        Err(not_mounted) => Err(not_mounted),
    }
}

/// The cgroup id (a cgroup2 directory's inode number) of the hierarchy's root, the
/// cgroup that holds every process on the host.
pub const HOST_ROOT_CGROUP_ID: u64 = 1;

/// The initial cgroup namespace's inode number (the kernel's `PROC_CGROUP_INIT_INO`, a
/// fixed value systemd also relies on): the host's namespace.
const INITIAL_CGROUP_NAMESPACE: u64 = 0xEFFF_FFFB;

/// Whether this process sees the host's cgroup hierarchy or a container's part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// The initial cgroup namespace.
    Host,
    /// A private cgroup namespace (a container's), by inode number: a cgroup2 mounted in
    /// it has the namespace's cgroup, not the host's, as its root.
    Private(u64),
}

impl Namespace {
    /// This process's cgroup namespace.
    pub fn own() -> anyhow::Result<Namespace> {
        use std::os::unix::fs::MetadataExt as _;
        let inode = fs::metadata("/proc/self/ns/cgroup")
            .context("cannot read /proc/self/ns/cgroup (is /proc mounted?)")?
            .ino();
        Ok(if inode == INITIAL_CGROUP_NAMESPACE {
            Namespace::Host
        } else {
            Namespace::Private(inode)
        })
    }
}

/// The cgroup id of a cgroup2 directory.
pub fn cgroup_id(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?.ino())
}

/// What attaching at an attach point watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every process on the host: the attach point is the hierarchy's root.
    WholeHost,
    /// Only the processes under a `--cgroup` the user chose (cgroup id).
    GivenSubtree(u64),
    /// Only part of the host, though the sensor looked for its root: the cgroup2 root it
    /// found has this cgroup id (a container's, in a private cgroup namespace, or a
    /// subtree mounted on its own).
    Part(u64),
    /// A mount of the sensor's own, not made yet, from a private cgroup namespace: its root
    /// is the namespace's cgroup, the host's root only if the namespace was made there
    /// (on a cgroup v1 host nothing else puts processes in v2 cgroups). `run` checks it
    /// once mounted (`OwnMount::require_host_root`).
    KnownOnceMounted,
}

/// Whether `run` attaching at `at` would watch the whole host. A `--cgroup` below the root
/// is taken as meant; a root found by the sensor that is not the host's is not. Only a
/// mount still to be made needs the namespace (`None`: unknown).
pub fn scope(at: &AttachAt, namespace: Option<Namespace>) -> anyhow::Result<Scope> {
    let whole_or = |dir: &Path, otherwise: fn(u64) -> Scope| -> anyhow::Result<Scope> {
        let id = cgroup_id(dir)?;
        Ok(if id == HOST_ROOT_CGROUP_ID { Scope::WholeHost } else { otherwise(id) })
    };
    match at {
        AttachAt::Given(dir) => whole_or(dir, Scope::GivenSubtree),
        AttachAt::Root(dir) => whole_or(dir, Scope::Part),
        // One a killed sensor left is there to look at.
        AttachAt::OwnMount if find_cgroup2_root().is_ok_and(|r| r == Path::new(OWN_MOUNT)) => {
            whole_or(Path::new(OWN_MOUNT), Scope::Part)
        }
        AttachAt::OwnMount if namespace == Some(Namespace::Host) => Ok(Scope::WholeHost),
        AttachAt::OwnMount => Ok(Scope::KnownOnceMounted),
    }
}

/// A cgroup2 mount of the sensor's own, unmounted (lazily: open descriptors keep working)
/// and its directory removed when dropped. The sensor drops it right after attaching:
/// the links hold the cgroup itself, not the mount, so nothing is left mounted even if
/// the sensor is killed.
#[derive(Debug)]
pub struct OwnMount {
    path: PathBuf,
}

impl OwnMount {
    /// Mount cgroup2 at [`OWN_MOUNT`], or take over the mount a killed sensor left there
    /// (it is then unmounted like a new one).
    pub fn mount_or_adopt() -> anyhow::Result<OwnMount> {
        let path = Path::new(OWN_MOUNT);
        if find_cgroup2_root().is_ok_and(|root| root == path) {
            return Ok(OwnMount { path: path.to_path_buf() });
        }
        OwnMount::mount(path)
    }

    /// Mount cgroup2 at `path` (created if needed). Needs CAP_SYS_ADMIN.
    pub fn mount(path: &Path) -> anyhow::Result<OwnMount> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let target = c_path(path)?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: NUL-terminated strings that outlive the call; no mount data.
        let rc = unsafe {
            libc::mount(c"none".as_ptr(), target.as_ptr(), c"cgroup2".as_ptr(), flags, ptr::null())
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = fs::remove_dir(path);
            bail!(
                "no cgroup v2 filesystem is mounted (a cgroup v1 host), and mounting one at {} \
                 failed: {err}. It needs CAP_SYS_ADMIN and mount(2) allowed (a systemd \
                 SystemCallFilter or seccomp profile may refuse it); or mount cgroup2 \
                 somewhere yourself and pass --cgroup PATH",
                path.display()
            );
        }
        Ok(OwnMount { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuse a mount whose root is not the host's (made from a container's private
    /// cgroup namespace): attached there, only the container would be watched.
    pub fn require_host_root(&self) -> anyhow::Result<()> {
        let id = cgroup_id(&self.path)?;
        if id != HOST_ROOT_CGROUP_ID {
            bail!(
                "the cgroup2 mounted at {} has a container's cgroup (id {id}) as its root, \
                 not the host's (id {HOST_ROOT_CGROUP_ID}): this process is in a private \
                 cgroup namespace, and only that container's processes would be watched. \
                 Run the sensor in the host's cgroup namespace (docker/podman \
                 --cgroupns=host)",
                self.path.display()
            );
        }
        Ok(())
    }
}

impl Drop for OwnMount {
    fn drop(&mut self) {
        if let Ok(target) = c_path(&self.path) {
            // SAFETY: a NUL-terminated path that outlives the call.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                let err = std::io::Error::last_os_error();
                tracing::warn!(path = %self.path.display(), %err, "cannot unmount the sensor's own cgroup2 mount");
                return;
            }
        }
        let _ = fs::remove_dir(&self.path);
        // /run/pgwire-sensor too, when nothing else of the sensor's is in it.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn c_path(path: &Path) -> anyhow::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{}: a NUL byte in the path", path.display()))
}

/// Check a user-given `--cgroup PATH` is a cgroup v2 directory.
pub fn validate_cgroup_dir(path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(path)
        .with_context(|| format!("--cgroup {}: cannot read it", path.display()))?;
    if !meta.is_dir() || !path.join("cgroup.procs").exists() {
        bail!("--cgroup {}: not a cgroup v2 directory (no cgroup.procs)", path.display());
    }
    Ok(())
}

/// Parse mountinfo text: the first cgroup2 mount whose root is `/` (a container may also
/// see bind mounts of sub-cgroups; those would miss most of the host's processes).
pub fn cgroup2_mount_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
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
    fn the_host_root_watches_the_whole_host_and_a_subtree_only_itself() {
        let root = find_cgroup2_root().expect("the test machine has cgroup2 mounted");
        // The tests run in the host's cgroup namespace, where the root is the host's.
        assert_eq!(Namespace::own().unwrap(), Namespace::Host);
        assert_eq!(cgroup_id(&root).unwrap(), HOST_ROOT_CGROUP_ID);
        for at in [AttachAt::Root(root.clone()), AttachAt::Given(root.clone()), AttachAt::OwnMount]
        {
            assert_eq!(scope(&at, Some(Namespace::Host)).unwrap(), Scope::WholeHost, "{at:?}");
        }
        // A root found or given needs no namespace to be judged.
        assert_eq!(scope(&AttachAt::Root(root.clone()), None).unwrap(), Scope::WholeHost);
        // Any cgroup below the root (this process's own, when it is not the root).
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/');
        if !own.is_empty() {
            let dir = root.join(own);
            let id = cgroup_id(&dir).unwrap();
            assert_ne!(id, HOST_ROOT_CGROUP_ID);
            assert_eq!(
                scope(&AttachAt::Given(dir.clone()), Some(Namespace::Host)).unwrap(),
                Scope::GivenSubtree(id)
            );
            // The same directory seen as "the root" is a container's view.
            assert_eq!(
                scope(&AttachAt::Root(dir), Some(Namespace::Private(7))).unwrap(),
                Scope::Part(id)
            );
        }
        for namespace in [Some(Namespace::Private(7)), None] {
            assert_eq!(
                scope(&AttachAt::OwnMount, namespace).unwrap(),
                Scope::KnownOnceMounted,
                "{namespace:?}"
            );
        }
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_hybrid_unified_mount() {
        assert_eq!(
            cgroup2_mount_from_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn prefers_the_hierarchy_root_over_a_bind_mounted_subtree() {
        let info = "\
50 1 0:40 /kubepods/pod1 /host/cgroup rw - cgroup2 cgroup2 rw
51 1 0:40 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(cgroup2_mount_from_mountinfo(info), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn optional_fields_and_escapes() {
        let info = "60 1 0:41 / /mnt/my\\040cg rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_from_mountinfo(info), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(cgroup2_mount_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
        assert_eq!(cgroup2_mount_from_mountinfo("garbage\n\n - \n"), None);
    }

    /// As root (CI runs the unit tests as root): the sensor's own mount is the same
    /// hierarchy root the host has mounted, and nothing of it is left once dropped.
    #[test]
    fn an_own_mount_is_the_hierarchy_root_and_leaves_nothing() {
        use std::os::unix::fs::MetadataExt;
        assert!(cgroup2_available(), "this kernel has no cgroup2 filesystem");
        let host_root = find_cgroup2_root().expect("CI and build hosts mount cgroup2");
        let dir = crate::test_files::scratch_dir("own-cgroup2", &[]).join("cgroup2");
        let own = OwnMount::mount(&dir).expect("mounting cgroup2 (as root)");
        let (mine, hosts) = (fs::metadata(own.path()).unwrap(), fs::metadata(&host_root).unwrap());
        assert_eq!((mine.dev(), mine.ino()), (hosts.dev(), hosts.ino()), "the same root");
        assert!(own.path().join("cgroup.procs").exists());
        drop(own);
        assert!(!dir.exists(), "the mount point is removed");
        assert!(!dir.parent().unwrap().exists(), "and its empty parent");
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&*dir.to_string_lossy()), "unmounted");
    }
}
