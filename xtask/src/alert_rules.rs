//! `cargo xtask alert-rules`: deploy/prometheus/alerts.yml with another runbook base and
//! another `up` selector, for a Prometheus whose job is not `pgwire-sensor` (with the
//! Prometheus Operator, a ServiceMonitor's job is the Service's name or its jobLabel) or
//! on-call whose runbooks live on a wiki.
//! The file itself stays the one copy: this only substitutes the two values in it.

use anyhow::{bail, ensure};
use sensor_common::verdict::{RUNBOOK_BASE_URL, UP_SELECTOR};

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AlertRulesArgs {
    /// Where the runbooks are: each rule's runbook_url becomes <BASE>/<alertname>.md.
    #[arg(long, default_value = RUNBOOK_BASE_URL, value_name = "BASE")]
    pub runbook_base_url: String,
    /// The label matchers that select the sensor's `up` series, e.g.
    /// 'job="pgwire-sensor-metrics"' or 'namespace="pgwire-sensor",job="sensor"'.
    #[arg(long, default_value = UP_SELECTOR, value_name = "MATCHERS")]
    pub up_selector: String,
}

/// `rules` (alerts.yml's text) with the runbook base and the `up` selector replaced.
pub fn render(rules: &str, args: &AlertRulesArgs) -> anyhow::Result<String> {
    let base = args.runbook_base_url.trim_end_matches('/');
    ensure!(
        !base.is_empty() && !base.contains(['"', '\n', ' ']),
        "--runbook-base-url {base:?}: give a URL without quotes or spaces"
    );
    let selector = args.up_selector.trim();
    ensure!(
        !selector.is_empty() && !selector.contains(['{', '}', '\n']) && selector.contains('='),
        "--up-selector {selector:?}: give label matchers such as job=\"pgwire-sensor\" (no braces)"
    );
    let (old_base, old_up) = (format!("\"{RUNBOOK_BASE_URL}/"), format!("up{{{UP_SELECTOR}}}"));
    for (what, old) in [("runbook base", &old_base), ("up selector", &old_up)] {
        if !rules.contains(old.as_str()) {
            bail!("alerts.yml no longer contains the default {what} {old}: update xtask/src/alert_rules.rs");
        }
    }
    Ok(rules
        .replace(&old_base, &format!("\"{base}/"))
        .replace(&old_up, &format!("up{{{selector}}}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn every_runbook_url_and_up_selector_is_replaced() {
        let args = AlertRulesArgs {
            runbook_base_url: "https://wiki.example.com/sec/runbooks/".into(),
            up_selector: r#"job="monitoring/pgwire-sensor""#.into(),
        };
        let text = render(&shipped(), &args).unwrap();
        assert!(!text.contains(RUNBOOK_BASE_URL) && !text.contains(UP_SELECTOR));
        let urls =
            text.matches("runbook_url: \"https://wiki.example.com/sec/runbooks/Pgwire").count();
        assert_eq!(urls, shipped().matches("runbook_url:").count());
        assert_eq!(text.matches(r#"up{job="monitoring/pgwire-sensor"}"#).count(), 2);
    }

    #[test]
    fn the_defaults_give_the_shipped_file_and_bad_values_are_refused() {
        let defaults = AlertRulesArgs {
            runbook_base_url: RUNBOOK_BASE_URL.into(),
            up_selector: UP_SELECTOR.into(),
        };
        assert_eq!(render(&shipped(), &defaults).unwrap(), shipped());
        for (base, selector) in
            [("a b", UP_SELECTOR), (RUNBOOK_BASE_URL, "{job=\"x\"}"), (RUNBOOK_BASE_URL, "")]
        {
            let args =
                AlertRulesArgs { runbook_base_url: base.into(), up_selector: selector.into() };
            assert!(render(&shipped(), &args).is_err(), "{base} {selector}");
        }
        assert!(render("groups: []\n", &defaults).is_err());
    }
}
