//! What a cgroup path says about where a process runs: a container id (Docker, containerd,
//! CRI-O, Podman, Kubernetes) or a systemd unit.

/// A 64-hex-digit container id in the last path components, as container runtimes name
/// their cgroups (`docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/kubepods/.../<id>`).
pub fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// The Kubernetes pod UID in a kubelet cgroup path: `/kubepods/burstable/pod<uid>/...`
/// (cgroupfs driver) or `.../kubepods-burstable-pod<uid with _ for ->.slice/...` (systemd
/// driver). No API server is asked.
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        let uid = part.rsplit_once("pod").map(|(_, uid)| uid)?;
        let uid = uid.replace('_', "-");
        let well_formed = uid.len() == 36
            && uid.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        well_formed.then_some(uid)
    })
}

/// The systemd unit: the last `.service` component (or a `.scope` that is not a container).
pub fn systemd_unit(path: &str) -> Option<String> {
    if container_id(path).is_some() {
        return None;
    }
    path.rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9e8a1c2b3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd0";

    #[test]
    fn container_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/besteffort/pod7/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/system.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
            assert_eq!(systemd_unit(&path), None, "{path}");
        }
    }

    #[test]
    fn kubernetes_pod_uids_from_both_cgroup_drivers() {
        let uid = "5b7c9f3e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let cgroupfs = format!("/kubepods/besteffort/pod{uid}/{ID}");
        for path in [systemd, cgroupfs] {
            assert_eq!(pod_uid(&path).as_deref(), Some(uid), "{path}");
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(pod_uid("/kubepods/besteffort/pod7/abc"), None, "not a UID");
        assert_eq!(pod_uid("/system.slice/podman.service"), None);
        assert_eq!(pod_uid("/system.slice/docker-1.scope"), None);
    }

    #[test]
    fn systemd_units_and_plain_paths() {
        assert_eq!(container_id("/system.slice/flask-app.service"), None);
        assert_eq!(
            systemd_unit("/system.slice/flask-app.service").as_deref(),
            Some("flask-app.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(systemd_unit("/"), None);
        assert_eq!(container_id("/docker/abc"), None, "too short to be an id");
    }
}
