//! Who reports a finding: the host (its name and a stable id a SIEM can join on across
//! renames) and, in Kubernetes, the node. Read once at start.

use std::{path::Path, sync::Arc};

use schemars::JsonSchema;
use serde::Serialize;
use tracing::warn;

/// The host a finding comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Host {
    /// The kernel's host name (the node's, where the sensor shares the host's UTS namespace
    /// as the DaemonSet does).
    pub name: String,
    /// The host's machine id (`/etc/machine-id`; in a DaemonSet the node's, through a host
    /// mount). `boot:<boot id>` when the host has none: stable until the next reboot only.
    pub id: String,
}

/// Where findings come from: set once, stamped on every line and alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Shared by every finding (a reference count, not a copy per session).
    pub host: Arc<Host>,
    /// The Kubernetes node name (`--node-name`, or `NODE_NAME` from the downward API).
    pub node: Option<crate::finding::SharedText>,
}

/// Used when `--machine-id-file` is not given; then the D-Bus copy, then the boot id.
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";
const DBUS_MACHINE_ID_FILE: &str = "/var/lib/dbus/machine-id";
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

impl Origin {
    /// This host as `machine_id_file` (or the usual places) and the kernel describe it.
    /// A `machine_id_file` given explicitly must hold a machine id: it is an operator's
    /// instruction, and a typo must not silently change every line's host id.
    pub fn detect(machine_id_file: Option<&Path>, node: Option<String>) -> anyhow::Result<Origin> {
        let id = match machine_id_file {
            Some(path) => machine_id(path).ok_or_else(|| {
                anyhow::anyhow!(
                    "--machine-id-file {}: no machine id there (32 hex digits expected)",
                    path.display()
                )
            })?,
            None => machine_id(Path::new(MACHINE_ID_FILE))
                .or_else(|| machine_id(Path::new(DBUS_MACHINE_ID_FILE)))
                .unwrap_or_else(boot_id),
        };
        let name = std::fs::read_to_string(HOSTNAME_FILE)
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Origin {
            host: Arc::new(Host { name, id }),
            node: node.filter(|n| !n.is_empty()).map(Into::into),
        })
    }

    /// A fixed origin for tests and benchmarks.
    pub fn example() -> Origin {
        Origin {
            host: Arc::new(Host {
                name: "db-client-1".into(),
                id: "0123456789abcdef0123456789abcdef".into(),
            }),
            node: None,
        }
    }

    /// The name alerts carry as `instance`: the node where there is one (never a pod name),
    /// else the host name.
    pub fn instance(&self) -> &str {
        self.node.as_deref().unwrap_or(&self.host.name)
    }
}

/// The machine id in `path`, if it holds one (32 lowercase hex digits, as systemd writes it).
fn machine_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn boot_id() -> String {
    let boot = std::fs::read_to_string(BOOT_ID_FILE).unwrap_or_default();
    warn!(
        "no machine id in {MACHINE_ID_FILE} or {DBUS_MACHINE_ID_FILE}: findings carry the boot \
         id as host.id, which changes at every reboot (give --machine-id-file)"
    );
    format!("boot:{}", boot.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_read_trimmed_and_checked() {
        let dir = crate::test_files::scratch_dir(
            "identity",
            &[("good", "0123456789ABCDEF0123456789abcdef\n"), ("bad", "uninitialized\n")],
        );
        let good = dir.join("good");
        assert_eq!(machine_id(&good).as_deref(), Some("0123456789abcdef0123456789abcdef"));
        let bad = dir.join("bad");
        assert_eq!(machine_id(&bad), None);
        assert_eq!(machine_id(&dir.join("missing")), None);

        let origin = Origin::detect(Some(&good), Some("node-7".into())).unwrap();
        assert_eq!(origin.host.id, "0123456789abcdef0123456789abcdef");
        assert_eq!(origin.instance(), "node-7");
        let err = Origin::detect(Some(&bad), None).unwrap_err().to_string();
        assert!(err.contains("--machine-id-file"), "{err}");
        let no_node = Origin::detect(Some(&good), Some(String::new())).unwrap();
        assert_eq!(no_node.node, None);
        assert_eq!(no_node.instance(), no_node.host.name);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
