//! The Kubernetes bundle `cargo xtask dist` writes (target/dist/pgwire-sensor-kubernetes.yaml):
//! deploy/kubernetes/*.yaml in the order `kubectl apply -f` needs (the namespace first), and
//! a PrometheusRule whose spec is deploy/prometheus/alerts.yml. The rules file stays their
//! one copy: the PrometheusRule is made from it here, never committed.

use std::path::Path;

use anyhow::{bail, Context};

/// Every manifest, in apply order. A file in deploy/kubernetes that is not listed here
/// fails the bundle (it would be shipped by nobody).
pub const MANIFESTS: [&str; 6] = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "daemonset.yaml",
    "service.yaml",
    "servicemonitor.yaml",
    "networkpolicy.yaml",
];

/// Where the bundle goes, under the workspace root.
pub const BUNDLE: &str = "target/dist/pgwire-sensor-kubernetes.yaml";

const RULE_HEADER: &str = "\
# Made by `cargo xtask dist` from deploy/prometheus/alerts.yml (edit that file, not this).
# For the Prometheus Operator: the rules' `up` selector matches the ServiceMonitor's job,
# the Service's name `pgwire-sensor`.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pgwire-sensor
  namespace: pgwire-sensor
  labels:
    app.kubernetes.io/name: pgwire-sensor
spec:
";

/// A PrometheusRule holding `rules` (a Prometheus rules file: `groups:` at the top) as its
/// spec, comments and all.
pub fn prometheus_rule(rules: &str) -> anyhow::Result<String> {
    if !rules.lines().any(|line| line.starts_with("groups:")) {
        bail!("the rules file has no top-level `groups:`");
    }
    let mut out = String::from(RULE_HEADER);
    for line in rules.lines() {
        if !line.is_empty() {
            out.push_str("  ");
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The manifests and the PrometheusRule as one multi-document file.
pub fn bundle(root: &Path) -> anyhow::Result<String> {
    let dir = root.join("deploy/kubernetes");
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    present.sort();
    let mut listed: Vec<String> = MANIFESTS.iter().map(|name| name.to_string()).collect();
    listed.sort();
    if present != listed {
        bail!(
            "deploy/kubernetes holds {present:?} but the bundle lists {listed:?}: update \
             MANIFESTS in xtask/src/kubernetes.rs"
        );
    }
    let mut documents = Vec::new();
    for name in MANIFESTS {
        documents.push(std::fs::read_to_string(dir.join(name))?);
    }
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml"))?;
    documents.push(prometheus_rule(&rules)?);
    Ok(documents.iter().map(|doc| doc.trim_end()).collect::<Vec<_>>().join("\n---\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_become_the_spec_indented_once() {
        let rule = prometheus_rule("# c\ngroups:\n  - name: g\n\n    rules: []\n").unwrap();
        assert!(rule.starts_with(RULE_HEADER));
        assert!(rule.ends_with("spec:\n  # c\n  groups:\n    - name: g\n\n      rules: []\n"));
        assert!(prometheus_rule("rules: []\n").is_err());
    }

    #[test]
    fn the_bundle_holds_every_manifest_and_the_rules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bundle = bundle(&root).unwrap();
        assert_eq!(bundle.matches("\n---\n").count(), MANIFESTS.len());
        assert!(bundle.starts_with("# The sensor's namespace"));
        assert!(bundle.contains("kind: PrometheusRule"));
    }
}
