//! Documentation excerpts that cannot go stale: the examples under `docs/examples/` come
//! from a real run (the e2e binary's `docs_examples` module), and markdown embeds them
//! between marker lines that this module checks and rewrites:
//!
//! ````markdown
//! <!-- BEGIN generated: docs/examples/finding-plaintext.json -->
//! ```json
//! ...the file's content...
//! ```
//! <!-- END generated: docs/examples/finding-plaintext.json -->
//! ````
//!
//! A marker counts only at the start of a line outside any code fence (so a page may show
//! the syntax, as this comment does); the path is relative to the repository root.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde::{
    de::{MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq},
    Deserialize, Deserializer, Serialize, Serializer,
};

/// The environment variable that turns the checks into rewrites.
pub const UPDATE_ENV: &str = "PGWIRE_UPDATE_DOCS";

/// The command that refreshes every generated excerpt (named in failure messages).
pub const REFRESH: &str = "PGWIRE_UPDATE_DOCS=1 cargo test -p tests -- docs_examples";

/// `PGWIRE_UPDATE_DOCS=1`: write what the run produced instead of comparing.
pub fn update_requested() -> bool {
    std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1")
}

/// A markdown page after [`sync_generated_blocks`].
#[derive(Debug, PartialEq, Eq)]
pub struct Synced {
    /// The page with every generated block equal to its file.
    pub text: String,
    /// Paths of the blocks whose content differed, in page order.
    pub stale: Vec<String>,
}

const BEGIN: &str = "<!-- BEGIN generated: ";
const END: &str = "<!-- END generated: ";

/// Check every generated block of `markdown` against its file (read through `read`, given
/// the path in the marker). Text outside the blocks is kept byte for byte; a block's fence
/// info string (`json`, `text`...) is kept when it has one.
pub fn sync_generated_blocks(
    markdown: &str,
    mut read: impl FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Synced> {
    let mut text = String::with_capacity(markdown.len());
    let mut stale = Vec::new();
    let mut open_fence: Option<Fence> = None;
    let mut lines = markdown.split_inclusive('\n').enumerate();
    while let Some((n, line)) = lines.next() {
        let bare = line.trim_end();
        if let Some(fence) = &open_fence {
            if fence.closed_by(bare) {
                open_fence = None;
            }
            text.push_str(line);
            continue;
        }
        if let Some(fence) = Fence::opening(bare) {
            open_fence = Some(fence);
            text.push_str(line);
            continue;
        }
        if marker(bare, END).is_some() {
            bail!("line {}: END marker without a BEGIN: {bare}", n + 1);
        }
        let Some(path) = marker(bare, BEGIN) else {
            text.push_str(line);
            continue;
        };
        if Path::new(path).is_absolute() || path.split('/').any(|part| part == "..") {
            bail!("line {}: {path:?} must be a path inside the repository", n + 1);
        }
        text.push_str(line);
        let mut inner = String::new();
        let end_line = loop {
            let Some((_, l)) = lines.next() else {
                bail!("line {}: BEGIN generated: {path} has no END marker", n + 1);
            };
            let l_bare = l.trim_end();
            if let Some(end_path) = marker(l_bare, END) {
                if end_path != path {
                    bail!("line {}: BEGIN {path} is closed by END {end_path}", n + 1);
                }
                break l;
            }
            if marker(l_bare, BEGIN).is_some() {
                bail!("line {}: BEGIN generated: {path} is not closed before the next", n + 1);
            }
            inner.push_str(l);
        };
        let content = read(path).with_context(|| format!("reading {path}"))?;
        let info = inner
            .lines()
            .next()
            .and_then(|first| Fence::opening(first.trim_end()))
            .map(|f| f.info)
            .unwrap_or_else(|| default_info(path).to_string());
        let want = fenced(&info, &content);
        if inner != want {
            stale.push(path.to_string());
        }
        text.push_str(&want);
        text.push_str(end_line);
    }
    Ok(Synced { text, stale })
}

/// The path of a `<!-- BEGIN generated: PATH -->` (or END) line.
fn marker<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    let path = line.strip_prefix(kind)?.strip_suffix("-->")?.trim();
    (!path.is_empty()).then_some(path)
}

/// A code fence: its character, its length and (when opening) its info string.
struct Fence {
    ch: char,
    len: usize,
    info: String,
}

impl Fence {
    /// An opening fence line (up to three spaces of indentation, as CommonMark allows).
    fn opening(line: &str) -> Option<Fence> {
        let rest = line.trim_start_matches(' ');
        if line.len() - rest.len() > 3 {
            return None;
        }
        let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = rest.chars().take_while(|c| *c == ch).count();
        let info = rest[len..].trim();
        (len >= 3 && !(ch == '`' && info.contains('`'))).then(|| Fence {
            ch,
            len,
            info: info.to_string(),
        })
    }

    fn closed_by(&self, line: &str) -> bool {
        let rest = line.trim_start();
        let len = rest.chars().take_while(|c| *c == self.ch).count();
        len >= self.len && rest[len..].trim().is_empty()
    }
}

/// The fence language for a file the block has none for, by its extension.
fn default_info(path: &str) -> &'static str {
    match Path::new(path).extension().and_then(|e| e.to_str()) {
        Some("json") => "json",
        Some("yaml" | "yml") => "yaml",
        Some("toml") => "toml",
        Some("sh") => "sh",
        Some("txt") => "text",
        _ => "",
    }
}

/// `content` in a code fence longer than any run of backticks inside it.
fn fenced(info: &str, content: &str) -> String {
    let longest = content.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let newline = if content.is_empty() || content.ends_with('\n') { "" } else { "\n" };
    format!("{fence}{info}\n{content}{newline}{fence}\n")
}

/// The markdown files that may embed generated blocks: `*.md` at the repository root and
/// everywhere under `docs/`, sorted.
pub fn markdown_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if recurse {
                    walk(&path, true, out)?;
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, false, &mut files)?;
    walk(&root.join("docs"), true, &mut files)?;
    files.sort();
    Ok(files)
}

/// JSON with object keys in their original order. (serde_json's `Value` sorts them unless
/// its `preserve_order` feature is on, and turning that on here would change it for the
/// sensor too whenever both build together.) Enough to pretty-print a finding as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> anyhow::Result<Json> {
        serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
    }

    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Json always serialises") + "\n"
    }

    /// The value at `path` (object keys), if there is one.
    pub fn get(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(self, |json, key| match json {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        })
    }

    /// Replace the value at `path` if there is one (never adds a field).
    pub fn replace(&mut self, path: &[&str], value: impl Into<Json>) {
        let mut json = self;
        for key in path {
            let Json::Object(fields) = json else { return };
            let Some((_, v)) = fields.iter_mut().find(|(k, _)| k == key) else { return };
            json = v;
        }
        *json = value.into();
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::String(s.to_string())
    }
}

impl From<u64> for Json {
    fn from(n: u64) -> Json {
        Json::Number(n.into())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a non-finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    fields.push((k, v));
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(JsonVisitor)
    }
}

/// What the examples show instead of a finding's run-to-run values.
pub mod placeholder {
    pub const TS: &str = "2026-01-01T00:00:00.000000Z";
    pub const CLIENT_PORT: u64 = 40000;
    pub const PID: u64 = 1000;
    /// A thread other than the main one (the main thread's tid is the pid).
    pub const OTHER_TID: u64 = 1001;
    pub const PPID: u64 = 999;
    /// The test binary, `e2e-<cargo's hash>`.
    pub const PARENT_COMM: &str = "e2e";
    /// The root cgroup's id and path (where the tests run here).
    pub const CGROUP_ID: u64 = 1;
    pub const CGROUP: &str = "/";
    pub const SOCKET_COOKIE: u64 = 4096;
    /// Each line's own UUID v7.
    pub const ID: &str = "01900000-0000-7000-8000-000000000000";
    /// The host the example ran on.
    pub const HOST_NAME: &str = "app-host-1";
    pub const HOST_ID: &str = "0123456789abcdef0123456789abcdef";
    /// The commit the sensor was built from (`build_info`).
    pub const REVISION: &str = "0123456789ab";
}

/// A finding line (as written) pretty-printed, with what changes from run to run (line id,
/// time, host, client port, pids, cgroup, socket cookie, the test binary's name) replaced by
/// [`placeholder`]s. Field order is the sensor's own.
pub fn normalise_finding(line: &str) -> anyhow::Result<String> {
    use placeholder::*;
    let mut f = Json::parse(line)?;
    let pid = f.get(&["process", "pid"]).cloned();
    let tid_is_pid = pid.is_some() && f.get(&["process", "tid"]) == pid.as_ref();
    f.replace(&["id"], ID);
    f.replace(&["ts"], TS);
    f.replace(&["host", "name"], HOST_NAME);
    f.replace(&["host", "id"], HOST_ID);
    f.replace(&["src", "port"], CLIENT_PORT);
    f.replace(&["process", "pid"], PID);
    f.replace(&["process", "tid"], if tid_is_pid { PID } else { OTHER_TID });
    f.replace(&["process", "ppid"], PPID);
    f.replace(&["process", "parent_comm"], PARENT_COMM);
    f.replace(&["process", "cgroup_id"], CGROUP_ID);
    f.replace(&["process", "cgroup"], CGROUP);
    f.replace(&["socket_cookie"], SOCKET_COOKIE);
    // A summary line's samples: one placeholder per sample, in order.
    f.replace(&["repeats", "first_seen"], TS);
    f.replace(&["repeats", "last_seen"], TS);
    for (field, first) in [("sample_src_ports", CLIENT_PORT), ("sample_pids", PID)] {
        let n = match f.get(&["repeats", field]) {
            Some(Json::Array(items)) => items.len() as u64,
            _ => continue,
        };
        f.replace(&["repeats", field], Json::Array((0..n).map(|i| (first + i).into()).collect()));
    }
    Ok(f.pretty())
}

/// Metric families the metrics example shows: each one's HELP, TYPE and samples, in the
/// order /metrics renders them. Their values are exact counts of the example's sessions
/// (or constants); nothing that varies from run to run (start time, packet counts).
pub const EXAMPLE_METRICS: [&str; 8] = [
    "pgwire_sensor_build_info",
    "pgwire_sensor_events_lost_total",
    "pgwire_sensor_findings_total",
    "pgwire_sensor_passwords_exposed_total",
    "pgwire_sensor_programs_attached",
    "pgwire_sensor_programs_expected",
    "pgwire_sensor_sessions_total",
    "pgwire_sensor_tls_sessions_total",
];

/// The readable, deterministic part of a /metrics page: [`EXAMPLE_METRICS`], and of
/// `sessions_total` and `tls_sessions_total` only the client role (the example runs with the
/// default roles).
pub fn metrics_excerpt(page: &str) -> String {
    let mut out = String::new();
    for line in page.lines() {
        let name = match line.strip_prefix("# ") {
            Some(comment) => comment.split_whitespace().nth(1).unwrap_or_default(),
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        let keep = EXAMPLE_METRICS.contains(&name)
            && (line.starts_with('#')
                || !name.ends_with("sessions_total")
                || line.contains("role=\"client\""));
        if keep {
            let _ = writeln!(out, "{}", with_placeholder_revision(line));
        }
    }
    out
}

/// `build_info`'s `revision` label (the commit built) as [`placeholder::REVISION`].
fn with_placeholder_revision(line: &str) -> std::borrow::Cow<'_, str> {
    const LABEL: &str = "revision=\"";
    let Some(start) = line.find(LABEL).map(|at| at + LABEL.len()) else {
        return line.into();
    };
    match line[start..].find('"') {
        Some(len) => {
            format!("{}{}{}", &line[..start], placeholder::REVISION, &line[start + len..]).into()
        }
        None => line.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(path: &str) -> anyhow::Result<String> {
        match path {
            "docs/examples/a.json" => Ok("{\n  \"a\": 1\n}\n".into()),
            "docs/examples/m.txt" => Ok("x_total 3\n".into()),
            other => bail!("no such file {other}"),
        }
    }

    const PAGE: &str = "\
# Title

Before, kept as it is.

<!-- BEGIN generated: docs/examples/a.json -->
```json
{
  \"a\": 0
}
```
<!-- END generated: docs/examples/a.json -->

Between.
<!-- BEGIN generated: docs/examples/m.txt -->
<!-- END generated: docs/examples/m.txt -->

```markdown
<!-- BEGIN generated: docs/examples/shown-not-synced.json -->
```

After, kept too.
";

    #[test]
    fn a_differing_block_is_reported_and_a_rewrite_makes_it_equal() {
        let first = sync_generated_blocks(PAGE, files).unwrap();
        assert_eq!(first.stale, ["docs/examples/a.json", "docs/examples/m.txt"]);
        assert!(first.text.contains("```json\n{\n  \"a\": 1\n}\n```\n<!-- END"));
        assert!(first.text.contains("```text\nx_total 3\n```\n<!-- END generated: docs"));
        let again = sync_generated_blocks(&first.text, files).unwrap();
        assert!(again.stale.is_empty(), "{again:?}");
        assert_eq!(again.text, first.text);
    }

    #[test]
    fn text_outside_blocks_is_untouched() {
        let synced = sync_generated_blocks(PAGE, files).unwrap();
        // The text before, between and after the two blocks.
        let outside = |text: &str| -> Vec<String> {
            let cut = |text: &str, marker: &str| -> (String, String) {
                let (a, b) = text.split_once(marker).expect(marker);
                (a.to_string(), b.to_string())
            };
            let (before, rest) = cut(text, "<!-- BEGIN generated: docs/examples/a.json -->");
            let (_, rest) = cut(&rest, "<!-- END generated: docs/examples/a.json -->");
            let (between, rest) = cut(&rest, "<!-- BEGIN generated: docs/examples/m.txt -->");
            let (_, after) = cut(&rest, "<!-- END generated: docs/examples/m.txt -->");
            vec![before, between, after]
        };
        assert_eq!(outside(&synced.text), outside(PAGE));
        assert!(synced.text.ends_with("\nAfter, kept too.\n"));
        // A page without blocks comes back byte for byte.
        let plain = "# x\n\n```sh\necho hi\n```\nno newline at the end";
        let same = sync_generated_blocks(plain, files).unwrap();
        assert_eq!((same.text.as_str(), same.stale.len()), (plain, 0));
    }

    #[test]
    fn broken_markers_are_errors_naming_the_line() {
        let unclosed = "a\n<!-- BEGIN generated: docs/examples/a.json -->\n```json\n";
        let err = sync_generated_blocks(unclosed, files).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("no END"), "{err}");
        let crossed = "<!-- BEGIN generated: docs/examples/a.json -->\n\
                       <!-- END generated: docs/examples/m.txt -->\n";
        assert!(sync_generated_blocks(crossed, files).is_err());
        let stray = "<!-- END generated: docs/examples/a.json -->\n";
        assert!(sync_generated_blocks(stray, files).is_err());
        let outside =
            "<!-- BEGIN generated: ../etc/passwd -->\n<!-- END generated: ../etc/passwd -->\n";
        assert!(sync_generated_blocks(outside, files).is_err());
        let missing =
            "<!-- BEGIN generated: docs/nope.json -->\n<!-- END generated: docs/nope.json -->\n";
        assert!(sync_generated_blocks(missing, files).is_err());
    }

    #[test]
    fn a_fence_is_longer_than_any_backticks_in_the_content() {
        assert_eq!(fenced("md", "a ``` b\n"), "````md\na ``` b\n````\n");
        assert_eq!(fenced("", "no newline"), "```\nno newline\n```\n");
    }

    #[test]
    fn findings_keep_their_field_order_and_lose_their_volatile_values() {
        let line = |pid: u32, port: u16, ts: &str| {
            format!(
                r#"{{"ts":"{ts}","verdict":"plaintext","src":{{"ip":"127.0.0.1","port":{port}}},"process":{{"pid":{pid},"tid":{pid},"comm":"psql","ppid":7,"parent_comm":"e2e-c8308e57c6f","cgroup_id":9,"cgroup":"/x"}},"auth":{{"method":"md5","password_sent":true}},"socket_cookie":{pid}}}"#
            )
        };
        let a = normalise_finding(&line(123, 50001, "2026-12-02T04:06:52.934769Z")).unwrap();
        let b = normalise_finding(&line(456, 50002, "2027-01-01T00:00:00.1Z")).unwrap();
        assert_eq!(a, b);
        let keys: Vec<&str> =
            a.lines().filter_map(|l| l.trim().strip_prefix('"')?.split('"').next()).collect();
        assert_eq!(keys[..4], ["ts", "verdict", "src", "ip"], "{a}");
        assert!(a.contains("\"tid\": 1000") && a.contains("\"parent_comm\": \"e2e\""), "{a}");
        // Another thread than the main one stays another thread.
        let threaded = line(5, 1, "t").replacen("\"tid\":5", "\"tid\":6", 1);
        assert!(normalise_finding(&threaded).unwrap().contains("\"tid\": 1001"));
    }

    #[test]
    fn the_metrics_excerpt_keeps_chosen_families_and_client_sessions() {
        let page = "\
# HELP pgwire_sensor_alerts_sent_total Pushed.
# TYPE pgwire_sensor_alerts_sent_total counter
pgwire_sensor_alerts_sent_total 0
# HELP pgwire_sensor_build_info Build.
# TYPE pgwire_sensor_build_info gauge
pgwire_sensor_build_info{revision=\"1a111ea0c2d4\",version=\"0.1.0\"} 1
# HELP pgwire_sensor_sessions_total Sessions.
# TYPE pgwire_sensor_sessions_total counter
pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"tls\"} 1
pgwire_sensor_sessions_total{port=\"26257\",role=\"server\",verdict=\"tls\"} 0
# HELP pgwire_sensor_start_time_seconds Start.
pgwire_sensor_start_time_seconds 1796184412.8943703
";
        assert_eq!(
            metrics_excerpt(page),
            "\
# HELP pgwire_sensor_build_info Build.
# TYPE pgwire_sensor_build_info gauge
pgwire_sensor_build_info{revision=\"0123456789ab\",version=\"0.1.0\"} 1
# HELP pgwire_sensor_sessions_total Sessions.
# TYPE pgwire_sensor_sessions_total counter
pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"tls\"} 1
"
        );
    }
}
