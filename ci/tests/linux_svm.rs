//! Debian's own kernel as the guest on one QEMU TCG node under the SVM backend (`-cpu
//! qemu64,+svm,+npt`, the harness's default), the same guest and checks as ci/tests/linux.rs
//! runs on Bochs VMX: the kernel takes the firmware's e820 map, ACPI tables, x2APIC, I/O APIC
//! and 16550 as they are, prints no WARN() splat, reaches our /init, which reports `nproc` =
//! the vCPUs, one NUMA node, the `tsc` clocksource and a workload run on every CPU checked
//! against the closed form, and powers off through ACPI S5.
//!
//! What differs on AMD: Linux 6.1 takes no TSC rate from CPUID there, and with
//! hardware-reduced ACPI it has no legacy PIC and so no PIT calibration; it calibrates against
//! the ACPI PM timer the FADT names, here QEMU's own (PIIX4, port 0x608), which the SVM
//! backend lets the guest read without an exit (`svm::hw::maps`): a trapped read costs ~40 µs
//! under TCG, beyond what Linux accepts of a reference read. Also printed: the wall time from
//! the load to /init and the `vcpu` command's exits by reason (docs/design.md §6).

mod common;

use std::time::{Duration, Instant};

use common::linux::{
    assert_memory_taken, assert_platform_taken, assert_slices_on_every_cpu, guest_lines,
    kernel_and_busybox, print_report, LinuxImage,
};
use common::{ANSWER, QEMU_BOOT};
use gestalt_ci::{Boot, Emu, HarnessError, Node, NodeSpec};

/// QEMU TCG reaches /init about 20 s after the load with one vCPU on a quiet machine; leave
/// room for a loaded one.
const LINUX_BOOT: Duration = Duration::from_secs(600);

/// Boots the kernel with our initramfs on one QEMU node of `cpus` CPUs (one vCPU each) and
/// checks what /init reports, its workload, and the power-off.
fn run_init(tag: &str, cpus: u32) -> Result<(), HarnessError> {
    let Some((vmlinuz, busybox)) = kernel_and_busybox() else {
        return Ok(());
    };
    let img = LinuxImage::new(tag, &vmlinuz, &busybox).expect("the Linux guest ISO");
    let mut spec = NodeSpec::new(tag, Emu::Qemu, Boot::Iso).cpus(cpus);
    spec.mem_mib = 320;
    let mut node = Node::start(&spec, &gestalt_ci::Artifacts::at(&img.dir))?;
    node.wait_for("hv: Linux guest loaded", QEMU_BOOT)?;
    let loaded = Instant::now();
    let init = node.wait_for("init: nproc", LINUX_BOOT);
    let to_init = loaded.elapsed();
    let end = init.and_then(|_| node.wait_for("init: workload", LINUX_BOOT));
    let text = node.console().text();
    let lines = guest_lines(&text);
    print_report(&lines);
    for l in lines.iter().filter(|l| l.contains("tsc: ") || l.contains("PM-Timer")) {
        eprintln!("{l}");
    }
    let end = end?;
    eprintln!(
        "{tag}: /init {:.1} s of wall time after the load ({cpus} vCPUs)",
        to_init.as_secs_f64()
    );
    assert!(end.contains("PASS"), "{text}");
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert_platform_taken(&lines, &text);
    // The TSC's rate came from the PM timer: QEMU's, at the port its own FADT gives it.
    assert!(has("ACPI: PM-Timer IO Port: 0x608"), "{text}");
    assert!(has("tsc: using PMTIMER reference calibration"), "{text}");
    assert!(!has("Marking TSC unstable"), "{text}");
    assert!(lines.contains(&format!("init: nproc {cpus}").as_str()), "{text}");
    assert_slices_on_every_cpu(&lines, cpus, &text);
    assert_memory_taken(&lines, common::linux::GUEST_MIB, &text);
    assert!(lines.contains(&"init: clocksource tsc"), "{text}");
    assert!(lines.contains(&"init: numa nodes 0"), "{text}");
    let off = node.wait_for("the guest powered off", Duration::from_secs(120))?;
    eprintln!("{off} after {:.1?}", node.elapsed());
    // The boot's exits by reason, unknown MSRs and unclaimed ports, for the record.
    let answer = node.command("vcpu", ANSWER)?;
    eprintln!("{answer}");
    for i in 0..cpus {
        assert!(answer.contains(&format!("vcpu {i} node 0 cpu {i} stopped")), "{answer}");
    }
    // PIT counter 2 answered Linux's early probe: without it port 0x42 read all-ones 100,006
    // times, half the boot's exits.
    let unclaimed = answer.lines().find(|l| l.starts_with("unclaimed ports:")).unwrap_or("");
    for port in ["0x42×", "0x43×", "0x61×"] {
        assert!(!unclaimed.contains(port), "{answer}");
    }
    if gestalt_ci::accelerator() == gestalt_ci::Accel::Tcg {
        assert!(text.contains("hv: SVM ready: nested paging"), "{text}");
        assert!(text.contains("hv: guest PM timer at port 0x608: the host's"), "{text}");
    }
    Ok(())
}

#[test]
fn debians_kernel_runs_our_init_on_svm_and_powers_off() -> Result<(), HarnessError> {
    run_init("linuxsvm1", 1)
}

#[test]
fn debians_kernel_brings_up_its_second_svm_vcpu_and_runs_the_workload_on_both(
) -> Result<(), HarnessError> {
    run_init("linuxsvm2", 2)
}
