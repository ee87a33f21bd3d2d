//! Findings as JSON lines, appended to a file (created 0600: findings name users and
//! databases) or written to stdout.
//!
//! Lines are gathered per batch of kernel events and written with one `write` call when the
//! batch is done (`flush`): one syscall per batch instead of per finding, and whole lines
//! for other appenders of the same file. A batch spans at most a few milliseconds, so a
//! finding never waits in memory longer than that.
//!
//! A failed write (disk full, file removed from under us, permissions changed) loses that
//! batch's lines, which are counted by the caller; the writer stays usable and tries again
//! with the next batch, and `reopen` (SIGHUP, after logrotate) opens the path afresh.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
};

use anyhow::Context;

use crate::{config::FindingsTarget, finding::Finding};

pub struct FindingsWriter {
    target: FindingsTarget,
    out: Box<dyn Write + Send>,
    /// Encoded lines not yet written.
    pending: Vec<u8>,
    /// Severity of each pending line, for the caller's per-severity counts.
    severities: Vec<&'static str>,
}

/// What one `flush` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Severities of the lines written.
    pub written: Vec<&'static str>,
    /// Lines lost to a write error, and the error.
    pub failed: Option<(usize, String)>,
}

impl FindingsWriter {
    pub fn open(target: &FindingsTarget) -> anyhow::Result<Self> {
        Ok(FindingsWriter {
            target: target.clone(),
            out: open_target(target)?,
            pending: Vec::with_capacity(64 * 1024),
            severities: Vec::new(),
        })
    }

    #[cfg(test)]
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        FindingsWriter {
            target: FindingsTarget::Stdout,
            out,
            pending: Vec::new(),
            severities: Vec::new(),
        }
    }

    /// Queue one finding line until the next `flush`.
    pub fn push(&mut self, finding: &Finding) {
        let before = self.pending.len();
        match serde_json::to_writer(&mut self.pending, finding) {
            Ok(()) => {
                self.pending.push(b'\n');
                self.severities.push(finding.severity);
            }
            // Cannot happen for these plain structs; never leave half a line behind.
            Err(_) => self.pending.truncate(before),
        }
    }

    /// Write every queued line with one call.
    pub fn flush(&mut self) -> Flushed {
        if self.pending.is_empty() {
            return Flushed::default();
        }
        let result = self.out.write_all(&self.pending).and_then(|()| self.out.flush());
        self.pending.clear();
        let lines = std::mem::take(&mut self.severities);
        match result {
            Ok(()) => Flushed { written: lines, failed: None },
            Err(err) => {
                Flushed { written: Vec::new(), failed: Some((lines.len(), err.to_string())) }
            }
        }
    }

    /// Write one finding now (the offline `analyze`, where an error should stop the run).
    pub fn write(&mut self, finding: &Finding) -> io::Result<()> {
        self.push(finding);
        match self.flush().failed {
            None => Ok(()),
            Some((_, err)) => Err(io::Error::other(err)),
        }
    }

    /// Open the findings path again (after logrotate moved it). Stdout stays stdout. On
    /// error the old file stays in use.
    pub fn reopen(&mut self) -> anyhow::Result<()> {
        if let FindingsTarget::File(_) = self.target {
            self.out = open_target(&self.target)?;
        }
        Ok(())
    }
}

fn open_target(target: &FindingsTarget) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match target {
        FindingsTarget::Stdout => Box::new(io::stdout()),
        FindingsTarget::File(path) => Box::new(append_0600(path).with_context(|| {
            format!("--findings {}: cannot open for appending", path.display())
        })?),
    })
}

fn append_0600(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn finding(severity: &'static str) -> Finding {
        let ev = sensor_common::test_util::session_event(
            sensor_common::verdict::Verdict::Plaintext,
            b"",
            "app",
        );
        Finding { severity, ..crate::session::finding_from_event(&ev) }
    }

    /// Fails every write, like a full disk.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_is_one_write_of_whole_lines_created_0600() {
        let dir = std::env::temp_dir().join(format!("findings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("findings.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut w = FindingsWriter::open(&FindingsTarget::File(path.clone())).unwrap();
        w.push(&finding("high"));
        w.push(&finding("critical"));
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "nothing before the flush");
        assert_eq!(w.flush(), Flushed { written: vec!["high", "critical"], failed: None });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        // logrotate: the file is moved away; reopen creates a new one at the path.
        let rotated = dir.join("findings.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.push(&finding("high"));
        assert!(w.flush().failed.is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_and_the_writer_goes_on() {
        let mut w = FindingsWriter::to_writer(Box::new(Full));
        w.push(&finding("high"));
        w.push(&finding("high"));
        let flushed = w.flush();
        assert!(flushed.written.is_empty());
        let (lines, err) = flushed.failed.unwrap();
        assert_eq!(lines, 2);
        assert!(err.contains("No space left"), "{err}");
        assert_eq!(w.flush(), Flushed::default(), "the lost lines are not retried forever");
    }
}
