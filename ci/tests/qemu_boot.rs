//! Booting under QEMU TCG: `-kernel`, ISO and real PXE (iPXE over QEMU's TFTP), SMP, the
//! exception diagnostic and command-line errors.

mod common;

use common::{boot_to_shell, qemu, QEMU_BOOT};
use gestalt_ci::{Boot, HarnessError};

#[test]
fn qemu_kernel_boot_reaches_the_shell_without_command_line_errors() -> Result<(), HarnessError> {
    let node = boot_to_shell(&qemu("kernel", Boot::Kernel).cmdline("log=info"), QEMU_BOOT)?;
    let text = node.console().text();
    assert!(text.contains("boot: Gestalt "), "{text}");
    assert!(text.contains("boot: cmdline \""), "{text}");
    assert!(!text.contains("cmdline: error:"), "a valid command line gave errors:\n{text}");
    Ok(())
}

#[test]
fn qemu_iso_boot_reaches_the_shell() -> Result<(), HarnessError> {
    boot_to_shell(&qemu("iso", Boot::Iso), QEMU_BOOT)?;
    Ok(())
}

#[test]
fn qemu_iso_boot_with_a_command_line_passes_it_through_grub() -> Result<(), HarnessError> {
    let node =
        boot_to_shell(&qemu("iso-cmdline", Boot::Iso).cmdline("nodes=3 log=info"), QEMU_BOOT)?;
    let line = node.console().line_with("boot: cmdline").unwrap_or_default();
    assert!(line.contains("nodes=3 log=info"), "{line}");
    Ok(())
}

#[test]
fn the_iso_written_to_a_disk_boots_like_a_usb_stick() -> Result<(), HarnessError> {
    boot_to_shell(&qemu("disk", Boot::Disk), QEMU_BOOT)?;
    Ok(())
}

#[test]
fn qemu_pxe_boot_through_ipxe_reaches_the_shell() -> Result<(), HarnessError> {
    let node = boot_to_shell(&qemu("pxe", Boot::Pxe).cmdline("nodes=2"), QEMU_BOOT)?;
    let line = node.console().line_with("boot: cmdline").unwrap_or_default();
    assert!(line.contains("nodes=2"), "{line}");
    Ok(())
}

#[test]
fn qemu_pxe_boot_through_pxelinux_and_mboot_reaches_the_shell() -> Result<(), HarnessError> {
    let node = boot_to_shell(&qemu("pxelinux", Boot::Pxelinux).cmdline("nodes=3"), QEMU_BOOT)?;
    let loader = node.console().line_with("boot: loaded by").unwrap_or_default();
    assert!(loader.contains("PXELINUX"), "not loaded by PXELINUX: {loader}");
    let line = node.console().line_with("boot: cmdline").unwrap_or_default();
    assert!(line.contains("nodes=3"), "{line}");
    Ok(())
}

#[test]
fn ip_dhcp_takes_an_address_from_the_dhcp_server() -> Result<(), HarnessError> {
    // The PXE node's NIC sits on QEMU's user network (restrict=on), whose DHCP server leases
    // 10.0.2.15: the same firmware NIC that booted it now runs smoltcp's DHCP client.
    let mut node = gestalt_ci::Node::start(
        &qemu("dhcp", Boot::Pxe).cmdline("ip=dhcp nodes=1"),
        &common::artifacts(),
    )?;
    let line = node.wait_for("net: address", QEMU_BOOT)?;
    assert!(line.contains("10.0.2.15/24 (dhcp)"), "{line}");
    Ok(())
}

#[test]
fn all_cores_come_up_with_two_cpus_in_qemu() -> Result<(), HarnessError> {
    let mut node =
        gestalt_ci::Node::start(&qemu("smp", Boot::Kernel).cpus(2), &common::artifacts())?;
    node.wait_for("smp: 2/2 cores online", QEMU_BOOT)?;
    node.wait_for("shell: ready", QEMU_BOOT)?;
    Ok(())
}

#[test]
fn test_pagefault_prints_the_exception_diagnostic_with_cr2() -> Result<(), HarnessError> {
    let mut node = gestalt_ci::Node::start(
        &qemu("pagefault", Boot::Kernel).cmdline("test=pagefault"),
        &common::artifacts(),
    )?;
    let line = node.wait_for("exception: #PF", QEMU_BOOT)?;
    assert!(line.contains("cr2 0x"), "no cr2 in the diagnostic: {line}");
    assert!(line.contains("rip 0x"), "no rip in the diagnostic: {line}");
    node.wait_for("exception: backtrace", QEMU_BOOT)?;
    node.wait_for("exception: halted", QEMU_BOOT)?;
    assert!(!node.console().text().contains("shell: ready"), "the node went on after #PF");
    let status = node.wait_exit(QEMU_BOOT)?;
    // The diagnostic is the result; test mode then leaves through isa-debug-exit.
    assert!(matches!(status.code(), Some(33 | 35)), "QEMU exited with {status}");
    Ok(())
}

#[test]
fn test_boot_passes_and_exits_qemu_with_code_33() -> Result<(), HarnessError> {
    let mut node = gestalt_ci::Node::start(
        &qemu("test-boot", Boot::Kernel).cmdline("test=boot"),
        &common::artifacts(),
    )?;
    node.wait_for("test: boot PASS", QEMU_BOOT)?;
    let status = node.wait_exit(QEMU_BOOT)?;
    assert_eq!(status.code(), Some(33), "isa-debug-exit 0x10 (pass) gives 33");
    Ok(())
}

#[test]
fn a_bad_command_line_reports_errors_and_still_reaches_the_shell() -> Result<(), HarnessError> {
    let mut node = gestalt_ci::Node::start(
        &qemu("badcmd", Boot::Kernel).cmdline("bogus=1 nodes=abc"),
        &common::artifacts(),
    )?;
    let first = node.wait_for("cmdline: error:", QEMU_BOOT)?;
    let second = node.wait_for("cmdline: error:", QEMU_BOOT)?;
    let both = format!("{first}\n{second}");
    assert!(both.contains("bogus"), "{both}");
    assert!(both.contains("abc"), "{both}");
    assert!(first.contains("ERROR"), "{first}");
    node.wait_for("shell: ready", QEMU_BOOT)?;
    Ok(())
}
