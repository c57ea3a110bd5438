//! A guest reset (port 0xCF9) restarts the guest on its node: the `reset` payload asks for
//! one, and on its second boot checks that its image was loaded again (its data as linked, its
//! bss zero) while a marker it left in RAM outside the image survived, then exits with code 0.
//! On QEMU (SVM) and Bochs (VMX). Across two nodes a reset is not supported yet: the guest is
//! stopped with a line that says so. (The Linux guest's reboot: ci/tests/linux.rs.)

mod common;

use common::guest::{payload, qemu_guest, GUEST_RUN};
use common::{artifacts, ANSWER, BOCHS_BOOT, QEMU_BOOT};
use gestalt_ci::{Boot, Emu, HarnessError, Node, NodeSpec, PortKind, Switch};

fn resets_and_passes(spec: &NodeSpec, boot: std::time::Duration) -> Result<(), HarnessError> {
    let mut node = Node::start(spec, &artifacts())?;
    node.wait_for("reset: first boot (data 0x12345678, bss 0)", boot + GUEST_RUN)?;
    node.wait_for("hv: vcpu 0: the guest asked for a reset", GUEST_RUN)?;
    node.wait_for("hv: guest reset 1:", GUEST_RUN)?;
    let second = node.wait_for("reset: second boot", GUEST_RUN)?;
    assert!(second.contains("PASS"), "{second}");
    let verdict = node.wait_for("test: vmx ", GUEST_RUN)?;
    assert!(verdict.contains("PASS"), "{}", node.console().text());
    let text = node.console().text();
    assert!(text.contains(" 1 resets, exited with code 0x0"), "{text}");
    Ok(())
}

#[test]
fn a_guest_reset_reloads_the_image_and_restarts_it_under_svm() -> Result<(), HarnessError> {
    resets_and_passes(&qemu_guest("reset-svm", "reset", "test=vmx mem=32M", 1), QEMU_BOOT)
}

#[test]
fn a_guest_reset_reloads_the_image_and_restarts_it_under_vmx() -> Result<(), HarnessError> {
    let spec = NodeSpec::new("reset-vmx", Emu::Bochs, Boot::Iso)
        .cmdline("test=vmx mem=32M")
        .guest(&payload("reset"));
    resets_and_passes(&spec, BOCHS_BOOT)
}

#[test]
fn a_reset_of_a_guest_across_two_nodes_stops_it_saying_why() -> Result<(), HarnessError> {
    // Bound in this order, dropped in reverse: the nodes stop before the switch does.
    let mut sw = Switch::new(43)?;
    let mut nodes = Vec::new();
    for i in 0..2u8 {
        let role = if i == 0 { "nodes=2 primary mem=32M" } else { "nodes=2 mem=32M" };
        let port = sw.add_port(PortKind::Qemu)?;
        let spec = qemu_guest(&format!("reset-two{i}"), "reset", role, 1)
            .nic(port, [0x52, 0x54, 0x00, 0x52, 0x53, i]);
        nodes.push(Node::start(&spec, &artifacts())?);
    }
    let line = nodes[0].wait_for("hv: guest stopped: ", QEMU_BOOT + GUEST_RUN)?;
    assert!(
        line.contains("the guest asked for a reset: reboot across nodes is not supported yet"),
        "{line}\n{}",
        nodes[0].console().text()
    );
    let vcpu = nodes[0].command("vcpu", ANSWER)?;
    assert!(vcpu.contains(" 0 resets, stopped: the guest asked for a reset"), "{vcpu}");
    Ok(())
}
