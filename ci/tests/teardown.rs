//! Every emulator the harness starts is gone when its owner is: after a normal drop and after
//! a panic in the middle of a test.

mod common;

use common::{artifacts, qemu, QEMU_BOOT};
use gestalt_ci::{Boot, Emu, Node, NodeSpec};

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited; it only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn a_node_is_killed_when_the_test_holding_it_panics() {
    artifacts().elf().expect("artifacts");
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let mut node = Node::start(&qemu("panicking", Boot::Kernel), &artifacts()).unwrap();
        tx.send(node.pid()).unwrap();
        node.wait_for("shell: ready", QEMU_BOOT).unwrap();
        panic!("a test failing while its node runs");
    })
    .join();
    assert!(result.is_err(), "the thread was meant to panic");
    let pid = rx.recv().unwrap();
    assert!(!alive(pid), "QEMU pid {pid} outlived the panicking test");
}

#[test]
fn a_bochs_node_is_killed_on_drop_although_bochs_ignores_sigterm() {
    artifacts().iso().expect("artifacts");
    let mut node =
        Node::start(&NodeSpec::new("dropped", Emu::Bochs, Boot::Iso), &artifacts()).unwrap();
    let pid = node.pid();
    // Running for sure: the firmware is printing.
    node.wait_for("boot: Gestalt", common::BOCHS_BOOT).unwrap();
    assert!(alive(pid));
    drop(node);
    assert!(!alive(pid), "Bochs pid {pid} survived the drop");
}
