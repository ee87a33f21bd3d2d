//! Findings as JSON lines, appended to a file (created 0600: findings name users and
//! databases) or written to stdout. Each line is flushed at once: a finding that waits in a
//! buffer is a finding lost if the host dies.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
};

use anyhow::Context;

use crate::{config::FindingsTarget, finding::Finding};

pub struct FindingsWriter {
    out: Box<dyn Write + Send>,
}

impl FindingsWriter {
    pub fn open(target: &FindingsTarget) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            FindingsTarget::Stdout => Box::new(io::stdout()),
            FindingsTarget::File(path) => Box::new(
                OpenOptions::new().create(true).append(true).mode(0o600).open(path).with_context(
                    || format!("--findings {}: cannot open for appending", path.display()),
                )?,
            ),
        };
        Ok(FindingsWriter { out })
    }

    #[cfg(test)]
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        FindingsWriter { out }
    }

    pub fn write(&mut self, finding: &Finding) -> io::Result<()> {
        let mut line = serde_json::to_vec(finding).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write call per line keeps lines whole for other appenders of the same file.
        self.out.write_all(&line)?;
        self.out.flush()
    }
}
