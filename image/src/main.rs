//! `gestalt-image`: build the boot artifacts from the firmware ELF64, and inspect or verify
//! images. The pure logic lives in the library; this file does files, processes and messages.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gestalt_image::boot_config::{ipxe_script, pxelinux_cfg};
use gestalt_image::iso::make_iso;
use gestalt_image::{build_image, describe_file, verify_image};

const USAGE: &str = "\
usage:
  gestalt-image build --firmware ELF64 --out DIR [--cmdline \"k=v ...\"] [--module FILE ...]
      writes DIR/gestalt.elf, DIR/pxe/ (TFTP root: gestalt.elf, boot.ipxe, pxelinux.cfg/default)
      and DIR/gestalt.iso (GRUB, BIOS, hybrid: boots from CD or written to a USB stick/disk)
  gestalt-image inspect FILE     print version, commit, build id, protocol, addresses, sizes
  gestalt-image verify FILE      check that FILE is a valid, untouched gestalt.elf image";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(&args[1..]),
        Some("inspect") => one_file(&args[1..]).and_then(|f| inspect(&f)),
        Some("verify") => one_file(&args[1..]).and_then(|f| verify(&f)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown subcommand '{other}'\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("gestalt-image: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn one_file(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [f] => Ok(PathBuf::from(f)),
        _ => Err(format!("expected exactly one FILE\n{USAGE}")),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn inspect(path: &Path) -> Result<(), String> {
    let data = read(path)?;
    let report = describe_file(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("file:          {}", path.display());
    println!("{report}");
    Ok(())
}

fn verify(path: &Path) -> Result<(), String> {
    let data = read(path)?;
    let report =
        verify_image(&data).map_err(|e| format!("{}: not a valid image: {e}", path.display()))?;
    println!(
        "{}: OK: Gestalt {} (commit {}) build {} protocol {}",
        path.display(),
        report.info.version,
        report.info.commit,
        report.info.build_id_short(),
        report.info.protocol
    );
    Ok(())
}

struct BuildArgs {
    firmware: PathBuf,
    out: PathBuf,
    cmdline: String,
    modules: Vec<PathBuf>,
}

fn parse_build(args: &[String]) -> Result<BuildArgs, String> {
    let (mut firmware, mut out, mut cmdline, mut modules) = (None, None, String::new(), vec![]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val =
            |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--firmware" => firmware = Some(PathBuf::from(val("--firmware")?)),
            "--out" => out = Some(PathBuf::from(val("--out")?)),
            "--cmdline" => cmdline = val("--cmdline")?,
            "--module" => modules.push(PathBuf::from(val("--module")?)),
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    Ok(BuildArgs {
        firmware: firmware.ok_or_else(|| format!("--firmware is required\n{USAGE}"))?,
        out: out.ok_or_else(|| format!("--out is required\n{USAGE}"))?,
        cmdline,
        modules,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// File name a module gets inside the artifacts (its own name).
fn module_name(path: &Path) -> Result<String, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("module path {} has no usable file name", path.display()))?;
    if name.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) {
        Ok(name.to_string())
    } else {
        Err(format!("module file name '{name}' may hold only letters, digits and . _ - +"))
    }
}

fn build(args: &[String]) -> Result<(), String> {
    let a = parse_build(args)?;
    if a.cmdline.contains(['\n', '\r']) {
        return Err("--cmdline must be a single line".into());
    }
    let names = a.modules.iter().map(|m| module_name(m)).collect::<Result<Vec<_>, _>>()?;
    eprintln!("gestalt-image: reading {}", a.firmware.display());
    let fw = std::fs::read(&a.firmware).map_err(|e| {
        format!(
            "cannot read the firmware {}: {e} (build it with `cargo firmware`)",
            a.firmware.display()
        )
    })?;
    let built = build_image(&fw).map_err(|e| format!("{}: {e}", a.firmware.display()))?;
    mkdir(&a.out)?;
    let elf = a.out.join("gestalt.elf");
    write(&elf, &built.elf32)?;
    eprintln!(
        "gestalt-image: wrote {} ({} bytes, build {})",
        elf.display(),
        built.elf32.len(),
        built.report.info.build_id_short()
    );

    // PXE: a TFTP root for iPXE (boot.ipxe) and PXELINUX (pxelinux.cfg/default + mboot.c32).
    let pxe = a.out.join("pxe");
    let _ = std::fs::remove_dir_all(&pxe);
    mkdir(&pxe.join("pxelinux.cfg"))?;
    write(&pxe.join("gestalt.elf"), &built.elf32)?;
    for (m, n) in a.modules.iter().zip(&names) {
        copy(m, &pxe.join(n))?;
    }
    write(&pxe.join("boot.ipxe"), ipxe_script(&a.cmdline, &names).as_bytes())?;
    write(&pxe.join("pxelinux.cfg/default"), pxelinux_cfg(&a.cmdline, &names).as_bytes())?;
    let syslinux = copy_syslinux(&pxe);
    eprintln!(
        "gestalt-image: wrote {}/ (boot.ipxe, pxelinux.cfg/default{})",
        pxe.display(),
        if syslinux {
            ", pxelinux.0, mboot.c32"
        } else {
            "; install syslinux-common + pxelinux for PXELINUX files"
        }
    );

    // ISO: GRUB BIOS image, hybrid (grub-mkrescue writes an MBR, so dd to a disk works too).
    let iso = a.out.join("gestalt.iso");
    eprintln!("gestalt-image: running grub-mkrescue for {} ...", iso.display());
    let modules: Vec<(&Path, &str)> =
        a.modules.iter().map(PathBuf::as_path).zip(names.iter().map(String::as_str)).collect();
    make_iso(&built.elf32, &a.cmdline, &modules, &iso)?;
    let size = std::fs::metadata(&iso).map(|m| m.len()).unwrap_or(0);
    eprintln!("gestalt-image: wrote {} ({size} bytes)", iso.display());
    println!("{}", built.report);
    Ok(())
}

/// Copy the PXELINUX files from syslinux when it is installed; true when all were found.
fn copy_syslinux(pxe: &Path) -> bool {
    let wanted = [
        ("pxelinux.0", &["/usr/lib/PXELINUX/pxelinux.0"][..]),
        ("ldlinux.c32", &["/usr/lib/syslinux/modules/bios/ldlinux.c32"][..]),
        ("libcom32.c32", &["/usr/lib/syslinux/modules/bios/libcom32.c32"][..]),
        ("mboot.c32", &["/usr/lib/syslinux/modules/bios/mboot.c32"][..]),
    ];
    wanted.iter().all(|(name, candidates)| {
        candidates
            .iter()
            .map(Path::new)
            .any(|src| src.exists() && copy(src, &pxe.join(name)).is_ok())
    })
}
