//! Where the built artifacts are: `$GESTALT_OUT`, else `<workspace>/out/` (written by
//! `make image`).

use std::path::{Path, PathBuf};

use crate::error::HarnessError;

/// The directory written by `gestalt-image build`.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
}

impl Artifacts {
    /// `$GESTALT_OUT` if set, else `out/` at the workspace root.
    pub fn locate() -> Artifacts {
        let dir = match std::env::var_os("GESTALT_OUT") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("out"),
        };
        Artifacts { dir }
    }

    /// Artifacts in an explicit directory.
    pub fn at(dir: impl Into<PathBuf>) -> Artifacts {
        Artifacts { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn require(&self, rel: &str) -> Result<PathBuf, HarnessError> {
        let p = self.dir.join(rel);
        if p.exists() {
            Ok(p)
        } else {
            Err(HarnessError::MissingArtifact { path: p })
        }
    }

    /// `gestalt.elf`, for QEMU `-kernel`.
    pub fn elf(&self) -> Result<PathBuf, HarnessError> {
        self.require("gestalt.elf")
    }

    /// `gestalt.iso`, for CD boot.
    pub fn iso(&self) -> Result<PathBuf, HarnessError> {
        self.require("gestalt.iso")
    }

    /// `pxe/`, the TFTP root with `boot.ipxe`.
    pub fn pxe_dir(&self) -> Result<PathBuf, HarnessError> {
        self.require("pxe/boot.ipxe")?;
        self.require("pxe")
    }
}
