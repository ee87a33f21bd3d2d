//! `--config FILE`: the same settings as the flags, in YAML (`.yaml`, `.yml`) or TOML
//! (`.toml`). Unknown keys are errors that name the key; flags given on the command line win
//! over the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// Every `sensor run` flag, as a file key (dashes become underscores).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub ports: Option<Vec<u16>>,
    pub cgroup: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub findings: Option<String>,
    pub ring_buffer_bytes: Option<u32>,
    pub auth_wait_ms: Option<u64>,
    pub max_connections: Option<u32>,
    pub alertmanager_url: Option<String>,
    pub alertmanager_min_severity: Option<String>,
    pub roles: Option<Vec<String>>,
    pub allow_second_instance: Option<bool>,
    pub allow_untested_kernel: Option<bool>,
}

pub fn load(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> anyhow::Result<FileSettings> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let shown = path.display();
    match ext {
        // toml's message quotes the offending line, so the key is named.
        "toml" => toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("--config {shown}: {}", e.to_string().trim_end())),
        "yaml" | "yml" => {
            serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("--config {shown}: {e}"))
        }
        _ => bail!("--config {shown}: use a .yaml, .yml or .toml file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_toml_give_the_same_settings() {
        let yaml =
            "ports: [26257, 5432]\nmetrics_addr: 127.0.0.1:9500\nfindings: /var/log/f.jsonl\n";
        let toml = "ports = [26257, 5432]\nmetrics_addr = \"127.0.0.1:9500\"\nfindings = \"/var/log/f.jsonl\"\n";
        let a = parse(Path::new("s.yaml"), yaml).unwrap();
        let b = parse(Path::new("s.toml"), toml).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ports, Some(vec![26257, 5432]));
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let err = parse(Path::new("s.yaml"), "portz: [1]\n").unwrap_err().to_string();
        assert!(err.contains("portz"), "{err}");
        let err = parse(Path::new("s.toml"), "metrics_adress = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("metrics_adress"), "{err:#}");
        let err = parse(Path::new("s.yaml"), "ports: [70000]\n").unwrap_err().to_string();
        assert!(err.contains("ports"), "{err}");
        assert!(parse(Path::new("s.ini"), "").is_err());
    }
}
