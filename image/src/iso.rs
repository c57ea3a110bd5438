//! Making the bootable ISO with `grub-mkrescue` (GRUB for BIOS; the result is a hybrid image
//! that boots from CD and, written with `dd`, from a USB stick or disk). This module runs a
//! process; it is shared by `gestalt-image build` and the test harness (per-node command lines).

use std::path::Path;
use std::process::Command;

use crate::boot_config::grub_cfg;

/// Write `iso` holding `elf` (as /boot/gestalt.elf) and `modules` (path, name) booted with
/// `cmdline`; a module's name may carry its arguments after the file name
/// ([`crate::boot_config::module_file`]). The error says what to install or what grub-mkrescue printed.
pub fn make_iso(
    elf: &[u8],
    cmdline: &str,
    modules: &[(&Path, &str)],
    iso: &Path,
) -> Result<(), String> {
    let mut stage = iso.as_os_str().to_owned();
    stage.push(".root");
    let stage = Path::new(&stage);
    let _ = std::fs::remove_dir_all(stage);
    let grub = stage.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(|e| format!("cannot create {}: {e}", grub.display()))?;
    let write = |p: &Path, b: &[u8]| {
        std::fs::write(p, b).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&stage.join("boot/gestalt.elf"), elf)?;
    for (path, name) in modules {
        let dst = stage.join("boot").join(crate::boot_config::module_file(name));
        std::fs::copy(path, &dst)
            .map_err(|e| format!("cannot copy {} to {}: {e}", path.display(), dst.display()))?;
    }
    let names: Vec<String> = modules.iter().map(|(_, n)| (*n).to_string()).collect();
    write(&grub.join("grub.cfg"), grub_cfg(cmdline, &names).as_bytes())?;
    // Uncompressed modules: decompressing xz costs Bochs several seconds per boot.
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(iso)
        .arg("--install-modules=multiboot normal serial terminal configfile echo test boot")
        .arg("--fonts=")
        .arg("--locales=")
        .arg("--themes=")
        .arg(stage)
        .output();
    let _ = std::fs::remove_dir_all(stage);
    let out = out.map_err(|e| {
        format!("cannot run grub-mkrescue: {e} (install grub-pc-bin, xorriso and mtools)")
    })?;
    if !out.status.success() {
        return Err(format!(
            "grub-mkrescue failed ({}); install grub-pc-bin, xorriso and mtools. Its output:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
