//! Findings as JSON lines, appended to a file (created 0600: findings name users and
//! databases) or written to stdout.
//!
//! Lines are gathered per batch of kernel events and written with one `write` call when the
//! batch is done (`flush`): one syscall per batch instead of per finding, and whole lines
//! for other appenders of the same file. A batch spans at most a few milliseconds, so a
//! finding never waits in memory longer than that.
//!
//! A failed write (disk full, I/O error) loses the lines of that batch it did not write,
//! which are counted by the caller; a line cut in the middle is ended with a newline before
//! the next batch, so it cannot corrupt the next one. The writer stays usable and tries
//! again with the next batch. `reopen` (SIGHUP) opens the path afresh, and
//! `follow_path` (every tick) does it by itself when the file at the path is no longer the
//! one open (moved by logrotate, deleted): writes to a moved or deleted file succeed, so
//! without this they would vanish uncounted.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use anyhow::Context;

use sensor_common::verdict::Severity;

use crate::{config::FindingsTarget, finding::Finding};

/// Every `--findings` target (stdout and a file, say), each with its own writer: a failure
/// of one loses nothing in another.
pub struct FindingsOutputs {
    /// Never empty; the first one's lines are the ones `findings_total` counts.
    writers: Vec<FindingsWriter>,
}

impl FindingsOutputs {
    pub fn open(targets: &[FindingsTarget]) -> anyhow::Result<Self> {
        let writers =
            targets.iter().map(FindingsWriter::open).collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!writers.is_empty(), "no findings target");
        Ok(FindingsOutputs { writers })
    }

    pub fn push(&mut self, finding: &Finding) {
        self.writers.iter_mut().for_each(|writer| writer.push(finding));
    }

    /// Flush every target: the lines the first one wrote, and the lines every target lost
    /// with their errors.
    pub fn flush(&mut self) -> Flushed {
        let mut all = Flushed::default();
        for (index, writer) in self.writers.iter_mut().enumerate() {
            let flushed = writer.flush();
            if index == 0 {
                all.written = flushed.written;
            }
            if let Some((lines, err)) = flushed.failed {
                let (total, errors) = all.failed.get_or_insert_with(|| (0, String::new()));
                *total += lines;
                if !errors.is_empty() {
                    errors.push_str("; ");
                }
                errors.push_str(&format!("{}: {err}", writer.target));
            }
        }
        all
    }

    /// `FindingsWriter::follow_path` for each file (every one tried, whatever another
    /// one's error); whether any was reopened, or the first error.
    pub fn follow_path(&mut self) -> anyhow::Result<bool> {
        let results: Vec<_> = self.writers.iter_mut().map(FindingsWriter::follow_path).collect();
        let mut reopened = false;
        for result in results {
            reopened |= result?;
        }
        Ok(reopened)
    }

    /// Reopen every file; the first error, after trying them all.
    pub fn reopen(&mut self) -> anyhow::Result<()> {
        let results: Vec<_> = self.writers.iter_mut().map(FindingsWriter::reopen).collect();
        results.into_iter().collect()
    }
}

pub struct FindingsWriter {
    target: FindingsTarget,
    out: Box<dyn Write + Send>,
    /// Encoded lines not yet written.
    pending: Vec<u8>,
    /// Severity of each pending line, for the caller's per-severity counts.
    severities: Vec<Severity>,
    /// (device, inode) of the open file, to notice it was moved or deleted.
    file_id: Option<(u64, u64)>,
    /// The last write stopped inside a line: end it before writing more.
    torn: bool,
}

/// What one `flush` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Severities of the lines written.
    pub written: Vec<Severity>,
    /// Lines lost to a write error, and the error.
    pub failed: Option<(usize, String)>,
}

impl FindingsWriter {
    pub fn open(target: &FindingsTarget) -> anyhow::Result<Self> {
        let (out, file_id) = open_target(target)?;
        Ok(FindingsWriter {
            target: target.clone(),
            out,
            pending: Vec::with_capacity(64 * 1024),
            severities: Vec::new(),
            file_id,
            torn: false,
        })
    }

    #[cfg(test)]
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        FindingsWriter {
            target: FindingsTarget::Stdout,
            out,
            pending: Vec::new(),
            severities: Vec::new(),
            file_id: None,
            torn: false,
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

    /// Write every queued line (one write call unless the kernel takes less).
    pub fn flush(&mut self) -> Flushed {
        if self.pending.is_empty() {
            return Flushed::default();
        }
        if self.torn {
            self.pending.insert(0, b'\n');
        }
        let (written, error) = write_some(&mut self.out, &self.pending);
        let lines = std::mem::take(&mut self.severities);
        let flushed = match error {
            None => Flushed { written: lines, failed: None },
            Some(err) => {
                // Only a failed write needs to know how many whole lines got out (counting
                // them on every batch cost 4% of the agent's CPU with a line per session).
                let start = usize::from(self.torn);
                let whole =
                    self.pending[start..written.max(start)].iter().filter(|&&b| b == b'\n').count();
                // Still inside a line: nothing written while already torn, or cut mid-line.
                self.torn =
                    if written == 0 { self.torn } else { self.pending[written - 1] != b'\n' };
                Flushed {
                    failed: Some((lines.len() - whole, err.to_string())),
                    written: lines.into_iter().take(whole).collect(),
                }
            }
        };
        if flushed.failed.is_none() {
            self.torn = false;
        }
        self.pending.clear();
        flushed
    }

    /// Reopen the path when the file there is no longer the one being written (moved by
    /// logrotate, deleted). Returns whether it reopened.
    pub fn follow_path(&mut self) -> anyhow::Result<bool> {
        let FindingsTarget::File(path) = &self.target else { return Ok(false) };
        let Some(open_id) = self.file_id else { return Ok(false) };
        if identity(path).is_some_and(|id| id == open_id) {
            return Ok(false);
        }
        self.reopen()?;
        Ok(true)
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
            let (out, file_id) = open_target(&self.target)?;
            self.out = out;
            self.file_id = file_id;
            self.torn = false; // a new file starts clean
        }
        Ok(())
    }
}

/// Write as much of `bytes` as the writer takes: (bytes written, the error that stopped it).
fn write_some(out: &mut dyn Write, bytes: &[u8]) -> (usize, Option<io::Error>) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return (written, Some(err)),
        }
    }
    // A buffered writer (stdout) may fail only here: then nothing is known to be written.
    match out.flush() {
        Ok(()) => (written, None),
        Err(err) => (0, Some(err)),
    }
}

/// (device, inode) of the file at `path`, if there is one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

type Opened = (Box<dyn Write + Send>, Option<(u64, u64)>);

fn open_target(target: &FindingsTarget) -> anyhow::Result<Opened> {
    Ok(match target {
        FindingsTarget::Stdout => (Box::new(io::stdout()), None),
        FindingsTarget::File(path) => {
            let file = append_0600(path).with_context(|| {
                format!("--findings {}: cannot open for appending", path.display())
            })?;
            let id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
            (Box::new(file), id)
        }
    })
}

fn append_0600(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn finding(severity: Severity) -> Finding {
        let ev = sensor_common::test_util::session_event(
            sensor_common::verdict::Verdict::Plaintext,
            b"",
            "app",
        );
        let origin = crate::identity::Origin::example();
        Finding { severity, ..crate::session::Session::from_event(&ev).finding(&origin) }
    }

    /// A writer on a new, empty file in a directory of this test process's own.
    /// Returns the directory, the file's path and the writer.
    fn fresh_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, FindingsWriter) {
        let dir = crate::test_files::scratch_dir(tag, &[]);
        let path = dir.join("findings.jsonl");
        let writer = FindingsWriter::open(&FindingsTarget::File(path.clone())).unwrap();
        (dir, path, writer)
    }

    #[test]
    fn a_batch_is_one_write_of_whole_lines_created_0600() {
        let (dir, path, mut w) = fresh_file("findings-test");
        w.push(&finding(Severity::High));
        w.push(&finding(Severity::Critical));
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "nothing before the flush");
        assert_eq!(
            w.flush(),
            Flushed { written: vec![Severity::High, Severity::Critical], failed: None }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        // logrotate: the file is moved away; reopen creates a new one at the path.
        let rotated = dir.join("findings.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.push(&finding(Severity::High));
        assert!(w.flush().failed.is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Takes `room` bytes, then fails like a disk that just filled up (ENOSPC).
    struct FillsUp {
        room: usize,
        got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }
    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_by_a_full_disk_is_ended_and_counted_exactly() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let one_line = serde_json::to_vec(&finding(Severity::High)).unwrap().len() + 1;
        let mut w =
            FindingsWriter::to_writer(Box::new(FillsUp { room: one_line + 10, got: got.clone() }));
        w.push(&finding(Severity::High));
        w.push(&finding(Severity::Critical));
        w.push(&finding(Severity::Low));
        let flushed = w.flush();
        assert_eq!(flushed.written, vec![Severity::High], "the whole first line made it");
        assert_eq!(flushed.failed.as_ref().map(|f| f.0), Some(2));
        // Space again: the torn line is ended first, the next line stands alone.
        w.out = Box::new(FillsUp { room: usize::MAX, got: got.clone() });
        w.push(&finding(Severity::Medium));
        assert_eq!(w.flush().written, vec![Severity::Medium]);
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[0]).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_err(), "the torn one");
        let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(last["severity"], "medium");
    }

    #[test]
    fn a_moved_or_deleted_file_is_followed() {
        let (dir, path, mut w) = fresh_file("findings-follow");
        assert!(!w.follow_path().unwrap(), "same file: nothing to do");
        std::fs::remove_file(&path).unwrap();
        assert!(w.follow_path().unwrap(), "deleted: reopened");
        w.push(&finding(Severity::High));
        assert!(w.flush().failed.is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        std::fs::rename(&path, dir.join("findings.jsonl.1")).unwrap();
        assert!(w.follow_path().unwrap(), "moved: reopened");
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_and_the_writer_goes_on() {
        let full = FillsUp { room: 0, got: Default::default() };
        let mut w = FindingsWriter::to_writer(Box::new(full));
        w.push(&finding(Severity::High));
        w.push(&finding(Severity::High));
        let flushed = w.flush();
        assert!(flushed.written.is_empty());
        let (lines, err) = flushed.failed.unwrap();
        assert_eq!(lines, 2);
        assert!(err.contains("No space left"), "{err}");
        assert_eq!(w.flush(), Flushed::default(), "the lost lines are not retried forever");
    }
}
