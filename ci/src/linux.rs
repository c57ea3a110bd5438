//! The Linux guest's parts, for the Linux tests and `gestalt-cluster run --guest linux`:
//! Debian's cloud kernel and busybox-static fetched with `apt-get download` and cached under
//! `out/linux/` (fetched again only when the package version changes), the initramfs with our
//! `ci/linux/init`, and an ISO with both as Multiboot modules.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::artifacts::Artifacts;

/// The kernel command line the guest boots with: its console on COM1.
pub const CMDLINE: &str = "console=ttyS0 earlyprintk=serial";
/// The word on the kernel command line that has /init run a shell on the console after its
/// report instead of powering off.
pub const SHELL_WORD: &str = "gestalt.shell";
/// Guest RAM the Linux guest gets (the node's `mem=`), and the emulated node's memory: the
/// firmware and its reserve take the difference.
pub const GUEST_MEM: &str = "mem=192M";
/// [`GUEST_MEM`] in MiB.
pub const GUEST_MIB: u64 = 192;
/// The guest time dilation a Linux guest across Bochs nodes runs with (docs/design.md §6):
/// a page round trip there (~5 ms of emulated time) outlasts Linux's 4 ms tick.
pub const SPAN_DILATION: &str = "dilation=20";
/// The emulated node's memory for [`GUEST_MEM`] (MiB).
pub const NODE_MIB: u32 = 320;

/// Why a package is not at hand: apt cannot give it here (a test is skipped), or what it
/// gave could not be unpacked (a test fails).
#[derive(Debug)]
pub enum Fetch {
    /// apt-get or the package is not available here.
    Unavailable(String),
    /// The package came but could not be unpacked.
    Broken(String),
}

impl From<String> for Fetch {
    fn from(e: String) -> Fetch {
        Fetch::Unavailable(e)
    }
}

impl fmt::Display for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetch::Unavailable(e) => write!(f, "{e}"),
            Fetch::Broken(e) => write!(f, "the Debian package was fetched but not unpacked: {e}"),
        }
    }
}

/// Every fetch goes to the same cache: one at a time.
pub static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The versioned package behind `linux-image-cloud-amd64` (e.g. linux-image-6.1.0-57-cloud-amd64).
pub fn package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            format!("apt-cache knows no linux-image-cloud-amd64 (run apt-get update?): {text}")
        })
}

/// The kernel image, fetched once per package version into `art`'s `linux/`.
pub fn kernel(art: &Artifacts) -> Result<PathBuf, Fetch> {
    let pkg = package()?;
    fetch(art, &pkg, "boot/vmlinuz-", "vmlinuz")
}

/// busybox from `busybox-static`, fetched once per package version.
pub fn busybox(art: &Artifacts) -> Result<PathBuf, Fetch> {
    let out = Command::new("apt-cache")
        .args(["policy", "busybox-static"])
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .ok_or_else(|| "apt-cache knows no busybox-static candidate".to_string())?
        .replace(':', "_");
    let cache = format!("busybox-static-{version}");
    fetch_as(art, "busybox-static", &cache, "bin/busybox", "busybox")
}

/// The kernel and busybox, one fetch at a time.
pub fn kernel_and_busybox(art: &Artifacts) -> Result<(PathBuf, PathBuf), Fetch> {
    let _one = FETCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok((kernel(art)?, busybox(art)?))
}

/// `package`'s file whose path in the package starts with `prefix`, cached as `name`.
pub fn fetch(art: &Artifacts, package: &str, prefix: &str, name: &str) -> Result<PathBuf, Fetch> {
    fetch_as(art, package, package, prefix, name)
}

/// [`fetch`] into the cache directory `cache` (named after the package's version).
pub fn fetch_as(
    art: &Artifacts,
    package: &str,
    cache: &str,
    prefix: &str,
    name: &str,
) -> Result<PathBuf, Fetch> {
    let dir = art.dir().join("linux").join(cache);
    let file = dir.join(name);
    if file.exists() {
        return Ok(file);
    }
    let broken = Fetch::Broken;
    std::fs::create_dir_all(&dir)
        .map_err(|e| broken(format!("cannot create {}: {e}", dir.display())))?;
    let st = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !st.success() {
        return Err(Fetch::Unavailable(format!("apt-get download {package} failed ({st})")));
    }
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| broken(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| broken("apt-get download left no .deb".into()))?;
    let x = dir.join("x");
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&x)
        .status()
        .map_err(|e| broken(format!("cannot run dpkg-deb: {e}")))?;
    if !st.success() {
        return Err(broken(format!("dpkg-deb -x {} failed ({st})", deb.display())));
    }
    let (sub, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let boot = x.join(sub);
    let image = std::fs::read_dir(&boot)
        .map_err(|e| broken(format!("{}: {e}", boot.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(start)))
        .ok_or_else(|| broken(format!("the package has no {prefix}*")))?;
    std::fs::rename(&image, &file).map_err(|e| broken(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&x);
    let _ = std::fs::remove_file(&deb);
    Ok(file)
}

/// One newc-format cpio entry (the kernel's initramfs format,
/// Documentation/driver-api/early-userspace/buffer-format.rst).
pub fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        out.len() as u32 + 1, // inode: any distinct number
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// The initramfs: busybox, our /init (ci/linux/init) and /dev/console, written to `dest`.
pub fn initramfs(busybox: &Path, dest: &Path) -> Result<(), String> {
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux/init");
    let init = std::fs::read(&init).map_err(|e| format!("{}: {e}", init.display()))?;
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let mut c = Vec::new();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio_entry(&mut c, d, 0o040_755, (0, 0), &[]);
    }
    cpio_entry(&mut c, "dev/console", 0o020_600, (5, 1), &[]);
    cpio_entry(&mut c, "bin/busybox", 0o100_755, (0, 0), &bb);
    cpio_entry(&mut c, "init", 0o100_755, (0, 0), &init);
    cpio_entry(&mut c, "TRAILER!!!", 0, (0, 0), &[]);
    std::fs::write(dest, c).map_err(|e| format!("{}: {e}", dest.display()))
}

/// The guest's Multiboot modules: the kernel with `cmdline` as its command line, then the
/// initramfs (its initrd), as (file, module command line).
pub fn modules(vmlinuz: &Path, initrd: &Path, cmdline: &str) -> Vec<(PathBuf, String)> {
    vec![
        (vmlinuz.to_path_buf(), format!("vmlinuz {cmdline}")),
        (initrd.to_path_buf(), "initrd.cpio".to_string()),
    ]
}

/// The kernel's lines as it printed them (without the firmware's `guest:` prefix).
pub fn guest_lines(console: &str) -> Vec<&str> {
    console.lines().filter_map(|l| l.split_once("guest: ").map(|(_, g)| g)).collect()
}

/// An ISO whose modules are the kernel (with its command line) and the initramfs (the
/// firmware boots the first as the guest, the second as its initrd), in a directory removed
/// on drop.
pub struct LinuxImage {
    /// The directory with `gestalt.iso` (use it as the node's [`Artifacts`]).
    pub dir: PathBuf,
}

impl LinuxImage {
    /// Builds the initramfs and the ISO in a directory named after `tag`: the firmware from
    /// `art` booted with `firmware_cmdline` (e.g. [`GUEST_MEM`]), the kernel with
    /// `kernel_cmdline`.
    pub fn new(
        art: &Artifacts,
        tag: &str,
        vmlinuz: &Path,
        busybox: &Path,
        firmware_cmdline: &str,
        kernel_cmdline: &str,
    ) -> Result<LinuxImage, String> {
        let dir = std::env::temp_dir().join(format!("gestalt-linux-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let img = LinuxImage { dir };
        let initrd = img.dir.join("initrd.cpio");
        initramfs(busybox, &initrd)?;
        let elf = art.elf().map_err(|e| e.to_string())?;
        let bytes = std::fs::read(elf).map_err(|e| e.to_string())?;
        let mods = modules(vmlinuz, &initrd, kernel_cmdline);
        let mods: Vec<(&Path, &str)> =
            mods.iter().map(|(p, c)| (p.as_path(), c.as_str())).collect();
        let iso = img.dir.join("gestalt.iso");
        gestalt_image::iso::make_iso(&bytes, firmware_cmdline, &mods, &iso)?;
        Ok(img)
    }
}

impl Drop for LinuxImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_guest_memory_word_says_guest_mib() {
        assert_eq!(GUEST_MEM, format!("mem={GUEST_MIB}M"));
    }

    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_4_byte_aligned() {
        let mut c = Vec::new();
        cpio_entry(&mut c, "init", 0o100_755, (0, 0), b"#!/bin/sh\n");
        assert!(c.starts_with(b"070701"));
        assert_eq!(c.len() % 4, 0);
        // Header (110 bytes), "init\0" padded to 116, 10 data bytes padded to 128.
        assert_eq!(c.len(), 128);
        assert_eq!(&c[6 + 8..6 + 16], b"000081ed", "mode");
        assert_eq!(&c[6 + 6 * 8..6 + 7 * 8], b"0000000a", "file size");
        assert_eq!(&c[110..115], b"init\0");
    }

    #[test]
    fn the_kernel_module_carries_the_command_line_and_the_initrd_follows() {
        let m = modules(Path::new("/k/vmlinuz"), Path::new("/t/i.cpio"), "console=ttyS0 x");
        assert_eq!(m[0].1, "vmlinuz console=ttyS0 x");
        assert_eq!(m[1], (PathBuf::from("/t/i.cpio"), "initrd.cpio".to_string()));
    }
}
