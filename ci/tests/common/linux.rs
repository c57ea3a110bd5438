//! The Linux guest's parts, shared by the Linux tests: Debian's cloud kernel and
//! busybox-static fetched with `apt-get download` and cached under `out/linux/`, the
//! initramfs with our `ci/linux/init`, and an ISO with both as modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::artifacts;

/// Why a package is not at hand: apt cannot give it here (the test is skipped), or what it
/// gave could not be unpacked (the test fails).
#[derive(Debug)]
pub enum Fetch {
    Unavailable(String),
    Broken(String),
}

impl From<String> for Fetch {
    fn from(e: String) -> Fetch {
        Fetch::Unavailable(e)
    }
}

/// Both tests fetch the same packages into the same cache: one at a time.
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

/// The kernel image, fetched once per package version.
pub fn kernel() -> Result<PathBuf, Fetch> {
    let pkg = package()?;
    fetch(&pkg, "boot/vmlinuz-", "vmlinuz")
}

/// busybox from `busybox-static`, fetched once per package version.
pub fn busybox() -> Result<PathBuf, Fetch> {
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
    fetch_as("busybox-static", &format!("busybox-static-{version}"), "bin/busybox", "busybox")
}

/// `package`'s file whose path in the package starts with `prefix`, cached as `name`.
pub fn fetch(package: &str, prefix: &str, name: &str) -> Result<PathBuf, Fetch> {
    fetch_as(package, package, prefix, name)
}

pub fn fetch_as(package: &str, cache: &str, prefix: &str, name: &str) -> Result<PathBuf, Fetch> {
    let dir = artifacts().dir().join("linux").join(cache);
    let vmlinuz = dir.join(name);
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let pkg = package;
    let broken = Fetch::Broken;
    std::fs::create_dir_all(&dir)
        .map_err(|e| broken(format!("cannot create {}: {e}", dir.display())))?;
    let st = Command::new("apt-get")
        .args(["download", pkg])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !st.success() {
        return Err(Fetch::Unavailable(format!("apt-get download {pkg} failed ({st})")));
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
    std::fs::rename(&image, &vmlinuz).map_err(|e| broken(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&x);
    let _ = std::fs::remove_file(&deb);
    Ok(vmlinuz)
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

/// The initramfs: busybox, our /init (ci/linux/init) and /dev/console.
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

/// The kernel's lines as it printed them (without the firmware's `guest:` prefix).
pub fn guest_lines(console: &str) -> Vec<&str> {
    console.lines().filter_map(|l| l.split_once("guest: ").map(|(_, g)| g)).collect()
}

/// An ISO whose modules are the kernel and the initramfs (the firmware boots the first as the
/// guest, the second as its initrd), in a directory removed on drop.
pub struct LinuxImage {
    pub dir: PathBuf,
}

impl LinuxImage {
    pub fn new(tag: &str, vmlinuz: &Path, busybox: &Path) -> Result<LinuxImage, String> {
        LinuxImage::with_cmdline(tag, vmlinuz, busybox, "mem=192M")
    }

    /// [`LinuxImage::new`] with the firmware's command line `cmdline`.
    pub fn with_cmdline(
        tag: &str,
        vmlinuz: &Path,
        busybox: &Path,
        cmdline: &str,
    ) -> Result<LinuxImage, String> {
        let dir = std::env::temp_dir().join(format!("gestalt-linux-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let img = LinuxImage { dir };
        let initrd = img.dir.join("initrd.cpio");
        initramfs(busybox, &initrd)?;
        let elf = artifacts().elf().map_err(|e| e.to_string())?;
        let bytes = std::fs::read(elf).map_err(|e| e.to_string())?;
        gestalt_image::iso::make_iso(
            &bytes,
            cmdline,
            &[(vmlinuz, "vmlinuz"), (initrd.as_path(), "initrd.cpio")],
            &img.dir.join("gestalt.iso"),
        )?;
        Ok(img)
    }
}

impl Drop for LinuxImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kernel and busybox, fetched one test at a time; `None` (with the reason printed) when
/// apt cannot give them here, a panic when what it gave could not be unpacked.
pub fn kernel_and_busybox() -> Option<(PathBuf, PathBuf)> {
    let fetched = {
        let _one = FETCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        kernel().and_then(|k| busybox().map(|b| (k, b)))
    };
    match fetched {
        Ok(kb) => Some(kb),
        Err(Fetch::Unavailable(e)) => {
            eprintln!("skipped: no Debian kernel or busybox: {e}");
            None
        }
        Err(Fetch::Broken(e)) => panic!("the Debian packages were fetched but not unpacked: {e}"),
    }
}
