//! Harness errors: what went wrong, and for a node what it printed, so a failing test shows it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness can fail with.
pub enum HarnessError {
    /// A build artifact is missing.
    MissingArtifact {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// An emulator or tool could not be started.
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// Some other I/O failed (sockets, temp files, console writes).
    Io {
        /// What the harness was doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A node did not print the expected text in time.
    Timeout {
        /// The node's name.
        node: String,
        /// The text waited for.
        waiting_for: String,
        /// How long the harness waited.
        after: Duration,
        /// The node's console since the last match (tail).
        console: String,
        /// Where the whole console log is.
        log: PathBuf,
    },
    /// A node's emulator exited before it printed the expected text.
    Exited {
        /// The node's name.
        node: String,
        /// The exit status.
        status: String,
        /// The text waited for.
        waiting_for: String,
        /// The node's console since the last match (tail).
        console: String,
        /// Where the whole console log is.
        log: PathBuf,
    },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io { what: what.into(), source }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::MissingArtifact { path } => write!(
                f,
                "missing build artifact {}: run `make image` first (or set GESTALT_OUT to the \
                 directory holding gestalt.elf, gestalt.iso and pxe/)",
                path.display()
            ),
            HarnessError::Spawn { program, source } => write!(
                f,
                "cannot start {program}: {source} (is it installed? `make test` installs \
                 qemu-system-x86, bochs, bochs-term, bochsbios and vgabios)"
            ),
            HarnessError::Io { what, source } => write!(f, "{what}: {source}"),
            HarnessError::Timeout { node, waiting_for, after, console, log } => write!(
                f,
                "node {node}: no {waiting_for:?} on the console within {after:.1?}; full log \
                 {}\n--- {node} console (since the last match) ---\n{console}\n--- end of \
                 {node} console ---",
                log.display()
            ),
            HarnessError::Exited { node, status, waiting_for, console, log } => write!(
                f,
                "node {node}: emulator exited ({status}) before printing {waiting_for:?}; full \
                 log {}\n--- {node} console (since the last match) ---\n{console}\n--- end of \
                 {node} console ---",
                log.display()
            ),
        }
    }
}

// Tests that return `Result<_, HarnessError>` print the error with `Debug`: make that the
// readable form, console included.
impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Spawn { source, .. } | HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
