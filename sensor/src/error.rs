//! The two kinds of failure a user can meet, and their exit codes.

use std::process::ExitCode;

/// A failure with the exit code it maps to. The message (anyhow's chain) says what is wrong
/// and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad flags, bad configuration values: exit 2, nothing was attached.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// The environment or the kernel refused something, or I/O failed: exit 1.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn config(err: impl Into<anyhow::Error>) -> Self {
        Failure::Config(err.into())
    }

    pub fn runtime(err: impl Into<anyhow::Error>) -> Self {
        Failure::Runtime(err.into())
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }
}

/// Mark any error as a runtime failure (`?` on anyhow results inside `run`).
impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Runtime(err)
    }
}
