//! The Linux guest's parts for the Linux tests: the library's ([`gestalt_ci::linux`]) with the
//! tests' artifacts, skipping a test when apt cannot give the packages here.

use std::path::{Path, PathBuf};

#[allow(unused_imports)] // each test file uses some
pub use gestalt_ci::linux::{
    guest_lines, Fetch, CMDLINE, GUEST_MEM, GUEST_MIB, SHELL_WORD, SPAN_DILATION,
};

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
    /// The firmware with [`GUEST_MEM`], the kernel with [`CMDLINE`].
    pub fn new(tag: &str, vmlinuz: &Path, busybox: &Path) -> Result<LinuxImage, String> {
        LinuxImage::with_cmdline(tag, vmlinuz, busybox, GUEST_MEM)
    }

    /// [`LinuxImage::new`] with the firmware's command line `cmdline`.
    pub fn with_cmdline(
        tag: &str,
        vmlinuz: &Path,
        busybox: &Path,
        cmdline: &str,
    ) -> Result<LinuxImage, String> {
        LinuxImage::with_cmdlines(tag, vmlinuz, busybox, cmdline, CMDLINE)
    }

    /// With the firmware's command line `firmware` and the kernel's `kernel`.
    pub fn with_cmdlines(
        tag: &str,
        vmlinuz: &Path,
        busybox: &Path,
        firmware: &str,
        kernel: &str,
    ) -> Result<LinuxImage, String> {
        gestalt_ci::linux::LinuxImage::new(&artifacts(), tag, vmlinuz, busybox, firmware, kernel)
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

/// What every Linux boot must show, on any backend: the firmware's e820 map, ACPI tables,
/// x2APIC, I/O APIC, UART and S5 taken as they are, and no WARN() splat (each one is a
/// hypervisor bug until shown otherwise). `lines` are the guest's, `text` the console.
pub fn assert_platform_taken(lines: &[&str], text: &str) {
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("BIOS-e820: [mem 0x0000000000000000-0x000000000009efff] usable"), "{text}");
    assert!(has("ACPI: RSDP 0x00000000000E0000"), "{text}");
    assert!(has("x2apic: enabled by BIOS"), "{text}");
    assert!(has("IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23"), "{text}");
    assert!(has("ttyS0 at I/O 0x3f8") && has("is a 16550A"), "{text}");
    assert!(has("ACPI: PM: (supports S0 S5)"), "{text}");
    assert!(!has("WARNING: CPU:"), "{text}");
}

/// Linux took the guest RAM it was given: its boot line `Memory: A/BK available` counts B
/// within 1 MiB of `mib` (the legacy hole below 1 MiB is the difference), and /init's
/// MemTotal is what is left after the kernel's own reservations (its image, the page
/// structures: ~48 MiB for Debian's kernel), at most B and more than B less 64 MiB.
#[allow(dead_code)] // not every test file boots Linux to /init
pub fn assert_memory_taken(lines: &[&str], mib: u64, text: &str) {
    let kib = |s: &str| s.trim().strip_suffix('K').and_then(|n| n.parse::<u64>().ok());
    let seen = lines
        .iter()
        .find_map(|l| l.split_once("Memory: ")?.1.split_once(" available")?.0.split_once('/'))
        .and_then(|(_, total)| kib(total))
        .unwrap_or_else(|| panic!("no `Memory: …K available` line: {text}"));
    let given = mib * 1024;
    assert!(seen <= given && seen + 1024 > given, "Linux saw {seen} KiB of {given}: {text}");
    let total = lines
        .iter()
        .find_map(|l| l.strip_prefix("init: MemTotal:"))
        .and_then(|v| v.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no MemTotal from /init: {text}"));
    assert!(total <= seen && total + 64 * 1024 > seen, "MemTotal {total} of {seen} KiB: {text}");
}

/// /init's workload ran one slice on each of the guest's `cpus` CPUs: each slice says which
/// CPU it ran on, and `taskset` pinned slice i to CPU i.
#[allow(dead_code)] // not every test file checks the workload
pub fn assert_slices_on_every_cpu(lines: &[&str], cpus: u32, text: &str) {
    let want: Vec<String> = (0..cpus).map(|c| c.to_string()).collect();
    let line = format!("init: slices ran on cpus {}", want.join(" "));
    assert!(lines.contains(&line.as_str()), "{line}: {text}");
}

/// Prints what /init reported and every line where Linux complains (WARN, ERROR, FAIL,
/// UNABLE), for the record and the closing notes.
pub fn print_report(lines: &[&str]) {
    for l in lines.iter().filter(|l| l.starts_with("init:")) {
        eprintln!("{l}");
    }
    for l in lines.iter().filter(|l| {
        let u = l.to_ascii_uppercase();
        u.contains("WARN") || u.contains("ERROR") || u.contains("FAIL") || u.contains("UNABLE")
    }) {
        eprintln!("linux complains: {l}");
    }
}
