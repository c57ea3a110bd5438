//! The Linux guest's parts for the Linux tests: the library's ([`gestalt_ci::linux`]) with the
//! tests' artifacts, skipping a test when apt cannot give the packages here.

use std::path::{Path, PathBuf};

#[allow(unused_imports)] // each test file uses some
pub use gestalt_ci::linux::{guest_lines, Fetch, CMDLINE, SHELL_WORD};

use super::artifacts;

/// An ISO with the kernel and our initramfs, removed on drop.
pub struct LinuxImage(gestalt_ci::linux::LinuxImage);

impl std::ops::Deref for LinuxImage {
    type Target = gestalt_ci::linux::LinuxImage;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl LinuxImage {
    /// With the kernel command line [`CMDLINE`].
    pub fn new(tag: &str, vmlinuz: &Path, busybox: &Path) -> Result<LinuxImage, String> {
        Self::with_cmdline(tag, vmlinuz, busybox, CMDLINE)
    }

    /// With `cmdline` as the kernel's command line.
    pub fn with_cmdline(
        tag: &str,
        vmlinuz: &Path,
        busybox: &Path,
        cmdline: &str,
    ) -> Result<LinuxImage, String> {
        gestalt_ci::linux::LinuxImage::new(&artifacts(), tag, vmlinuz, busybox, cmdline)
            .map(LinuxImage)
    }
}

/// The kernel and busybox, fetched one test at a time; `None` (with the reason printed) when
/// apt cannot give them here, a panic when what it gave could not be unpacked.
pub fn kernel_and_busybox() -> Option<(PathBuf, PathBuf)> {
    match gestalt_ci::linux::kernel_and_busybox(&artifacts()) {
        Ok(kb) => Some(kb),
        Err(Fetch::Unavailable(e)) => {
            eprintln!("skipped: no Debian kernel or busybox: {e}");
            None
        }
        Err(e @ Fetch::Broken(_)) => panic!("{e}"),
    }
}
