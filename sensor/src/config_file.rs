//! `--config FILE`: the same settings as the flags ([`Settings`]), in YAML (`.yaml`,
//! `.yml`) or TOML (`.toml`). Unknown keys are errors that name the key; keys not given take
//! the flags' defaults; flags given on the command line win over the file.

use std::path::Path;

use anyhow::{bail, Context as _};

use crate::config::Settings;

pub fn load(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> anyhow::Result<Settings> {
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
        assert_eq!(a.ports, vec![26257, 5432]);
        assert_eq!(a.max_connections, None, "unset: not given");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let err = parse(Path::new("s.yaml"), "portz: [1]\n").unwrap_err().to_string();
        assert!(err.contains("portz"), "{err}");
        let err = parse(Path::new("s.toml"), "metrics_adress = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("metrics_adress"), "{err:#}");
        let err = parse(Path::new("s.yaml"), "ports: [70000]\n").unwrap_err().to_string();
        assert!(err.contains("ports"), "{err}");
        let err = parse(Path::new("s.yaml"), "metrics_addr: nowhere\n").unwrap_err().to_string();
        assert!(err.contains("metrics_addr"), "{err}");
        let err = parse(Path::new("s.yaml"), "roles: [proxy]\n").unwrap_err().to_string();
        assert!(err.contains("roles") && err.contains("client, server"), "{err}");
        assert!(parse(Path::new("s.ini"), "").is_err());
    }
}
