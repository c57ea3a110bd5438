//! Shared by the emulator tests: artifacts, generous timeouts, boot helpers.
#![allow(dead_code)]

use std::time::Duration;

use gestalt_ci::{Artifacts, Boot, Emu, HarnessError, Node, NodeSpec};

/// QEMU TCG reaches the shell in well under a second; tests run in parallel on 2 cores.
pub const QEMU_BOOT: Duration = Duration::from_secs(60);
/// Bochs: BIOS + GRUB + firmware, a few seconds per CPU; leave room for a loaded machine.
pub const BOCHS_BOOT: Duration = Duration::from_secs(180);
/// A shell command's answer.
pub const ANSWER: Duration = Duration::from_secs(30);

/// The artifacts of `make image` (`$GESTALT_OUT` or `<workspace>/out/`).
pub fn artifacts() -> Artifacts {
    Artifacts::locate()
}

/// Boot a node and wait for `shell: ready` and the first prompt; prints the boot time.
pub fn boot_to_shell(spec: &NodeSpec, timeout: Duration) -> Result<Node, HarnessError> {
    let mut node = Node::start(spec, &artifacts())?;
    node.wait_for("shell: ready", timeout)?;
    eprintln!(
        "{} ({:?} {:?}, {} cpus): shell ready after {:.2?}",
        spec.name,
        spec.emu,
        spec.boot,
        spec.cpus,
        node.elapsed()
    );
    node.wait_for_text("gestalt> ", timeout)?;
    Ok(node)
}

/// A QEMU node spec.
pub fn qemu(name: &str, boot: Boot) -> NodeSpec {
    NodeSpec::new(name, Emu::Qemu, boot)
}

pub mod guest;
pub mod linux;
