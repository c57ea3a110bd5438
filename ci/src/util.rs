//! Small helpers: private temporary directories and unique names.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::HarnessError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other harness object in any process on this machine uses.
pub(crate) fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{t}", std::process::id())
}

/// A directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<TempDir, HarnessError> {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p)
            .map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))?;
        Ok(TempDir(p))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where console logs go: `$GESTALT_LOG_DIR`, else `<tmp>/gestalt-ci-logs`. They are kept.
pub(crate) fn log_dir() -> PathBuf {
    std::env::var_os("GESTALT_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("gestalt-ci-logs"))
}
