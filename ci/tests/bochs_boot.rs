//! Booting under Bochs (VMX-capable Skylake-X model) from the ISO, with two CPUs. One boot
//! checks both the shell and SMP: a Bochs boot costs seconds.

mod common;

use common::{boot_to_shell, BOCHS_BOOT};
use gestalt_ci::{Boot, Emu, HarnessError, NodeSpec};

#[test]
fn bochs_iso_boot_brings_up_both_cores_and_reaches_the_shell() -> Result<(), HarnessError> {
    let spec = NodeSpec::new("bochs", Emu::Bochs, Boot::Iso).cpus(2);
    let mut node = boot_to_shell(&spec, BOCHS_BOOT)?;
    let text = node.console().text();
    assert!(text.contains("smp: 2/2 cores online"), "not all cores came up:\n{text}");
    let answer = node.command("version", common::ANSWER)?;
    assert!(answer.contains("build "), "{answer}");
    Ok(())
}
