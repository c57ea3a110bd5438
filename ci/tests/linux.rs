//! Debian's own kernel as the guest on one Bochs VMX node: `linux-image-cloud-amd64`, resolved
//! to its current versioned package, fetched with `apt-get download` and cached under
//! `out/linux/<package>/`, is the first Multiboot module; the firmware boots it through the
//! Linux boot protocol (boot_params, e820, ACPI tables) and relays its serial console as
//! `guest: …` lines. Without apt (or the package) the test says so and is skipped.
//!
//! The second module is an initramfs the test packs (busybox from `busybox-static`, our
//! `ci/linux/init`, /dev/console). Checked, with 1 and 2 vCPUs: the kernel is entered at its
//! 64-bit entry, takes the firmware's e820 map, ACPI tables, x2APIC, I/O APIC and 16550 as
//! they are, prints no WARN() splat, reaches /init, which reports `nproc` = the vCPUs, one
//! NUMA node, the `tsc` clocksource and a workload run on every CPU checked against the
//! closed form, and powers off through ACPI S5. With `gestalt.shell` /init runs a shell
//! instead: the test types a command into it through the node console, reboots the guest
//! from it (`reboot -f`: the guest reset restarts it on the node), checks the second boot the
//! same way and powers off from the shell — on Bochs with one vCPU and, where the APs' restart
//! matters, on QEMU (SVM, fast) with two. Not yet: more than one node (docs/design.md §6).

mod common;

use std::time::Duration;

use common::linux::{
    assert_memory_taken, assert_platform_taken, assert_slices_on_every_cpu, guest_lines,
    kernel_and_busybox, print_report, LinuxImage, CMDLINE, GUEST_MEM, GUEST_MIB, SHELL_WORD,
};
use common::{ANSWER, BOCHS_BOOT, QEMU_BOOT};
use gestalt_ci::{Boot, Emu, HarnessError, Node, NodeSpec};

/// Bochs runs ~100 MIPS here: /init comes ~85 s of firmware time after the load (about 2
/// minutes of wall time with one vCPU, 5 with two, on a busy 2-core host).
const LINUX_BOOT: Duration = Duration::from_secs(900);

/// Boots the kernel with our initramfs on one `emu` node of `cpus` CPUs (one vCPU each) and
/// checks what /init reports, its workload, and the power-off. With `shell`, /init runs its
/// shell instead: the test types into it through the node console, reboots the guest from it
/// and checks the second boot the same way before powering off from the shell.
fn run_init(tag: &str, emu: Emu, cpus: u32, shell: bool) -> Result<(), HarnessError> {
    let Some((vmlinuz, busybox)) = kernel_and_busybox() else {
        return Ok(());
    };
    let cmdline = if shell { format!("{CMDLINE} {SHELL_WORD}") } else { CMDLINE.to_string() };
    let img = LinuxImage::with_cmdlines(tag, &vmlinuz, &busybox, GUEST_MEM, &cmdline)
        .expect("the Linux guest ISO");
    let spec = NodeSpec::new(tag, emu, Boot::Iso).cpus(cpus).mem_mib(gestalt_ci::linux::NODE_MIB);
    let mut node = Node::start(&spec, &gestalt_ci::Artifacts::at(&img.dir))?;
    let boot = if emu == Emu::Bochs { BOCHS_BOOT } else { QEMU_BOOT };
    let loaded = node.wait_for("hv: Linux guest loaded", boot)?;
    // Debian's kernel declares the 64-bit entry: it is entered at startup_64 in long mode.
    assert!(loaded.contains("(64-bit entry: startup_64 in long mode)"), "{loaded}");
    check_boot(&mut node, cpus, 0)?;
    if shell {
        // Ctrl-] gives the console to the guest's UART (the Enter after it asks the shell
        // for a fresh prompt); Linux's 8250 driver takes the bytes on receive interrupts.
        node.wait_for("init: shell on the console", ANSWER)?;
        node.send_line("\u{1d}")?;
        node.wait_for("hv: console input goes to the guest's UART", ANSWER)?;
        node.wait_for("guest: linux# ", ANSWER)?;
        // The answer is not in what was typed: only a shell that read the line prints it.
        node.send_line("echo $((6*7))")?;
        let answer = node.wait_for("guest: 42", ANSWER)?;
        assert!(answer.trim_end().ends_with("guest: 42"), "{answer}");
        node.wait_for("guest: linux# ", ANSWER)?;
        node.send_line("reboot -f")?;
        node.wait_for("the guest asked for a reset", ANSWER)?;
        node.wait_for("hv: guest reset 1:", ANSWER)?;
        let from = node.console().text().len();
        check_boot(&mut node, cpus, from)?;
        node.wait_for("init: shell on the console", ANSWER)?;
        node.wait_for("guest: linux# ", ANSWER)?;
        node.send_line("poweroff -f")?;
    }
    let off = node.wait_for("the guest powered off", Duration::from_secs(120))?;
    eprintln!("{off} after {:.1?}", node.elapsed());
    // The boot's exits by reason, unknown MSRs and unclaimed ports, for the record. Input
    // goes back to the node's shell once the guest has stopped.
    let answer = node.command("vcpu", common::ANSWER)?;
    eprintln!("{answer}");
    assert!(answer.contains("vcpu 0 node 0 cpu 0 stopped"), "{answer}");
    let resets = if shell { " 1 resets," } else { " 0 resets," };
    assert!(answer.contains(resets), "{answer}");
    Ok(())
}

/// Waits for /init's workload and checks what the kernel and /init printed on the console
/// from byte `from` on (one boot's lines).
fn check_boot(node: &mut Node, cpus: u32, from: usize) -> Result<(), HarnessError> {
    let end = node.wait_for("init: workload", LINUX_BOOT);
    let text = node.console().text();
    let text = text.get(from..).unwrap_or("");
    let lines = guest_lines(text);
    print_report(&lines);
    let end = end?;
    assert!(end.contains("PASS"), "{text}");
    assert_platform_taken(&lines, text);
    assert!(lines.contains(&format!("init: nproc {cpus}").as_str()), "{text}");
    assert_slices_on_every_cpu(&lines, cpus, text);
    assert_memory_taken(&lines, GUEST_MIB, text);
    assert!(lines.contains(&"init: clocksource tsc"), "{text}");
    assert!(lines.contains(&"init: numa nodes 0"), "{text}");
    Ok(())
}

#[test]
fn debians_kernel_brings_up_its_second_vcpu_and_runs_the_workload_on_both(
) -> Result<(), HarnessError> {
    run_init("linuxinit2", Emu::Bochs, 2, false)
}

/// Typed input reaches the guest's shell, `reboot -f` restarts the guest (vCPU 0 at the entry
/// again), `poweroff -f` ends it.
#[test]
fn debians_kernel_takes_typed_commands_reboots_and_powers_off() -> Result<(), HarnessError> {
    run_init("linuxshell1", Emu::Bochs, 1, true)
}

/// The same with two vCPUs under SVM: after the reboot vCPU 1 waits for a start-up IPI again
/// and `nproc` 2 in the second boot says the kernel brought it up again.
#[test]
fn debians_kernel_on_two_svm_vcpus_reboots_and_brings_its_second_vcpu_up_again(
) -> Result<(), HarnessError> {
    run_init("linuxshellsvm2", Emu::Qemu, 2, true)
}
