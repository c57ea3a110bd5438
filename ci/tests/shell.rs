//! The shell on COM1 answers: version (same build id as `gestalt-image inspect`), status,
//! help, and a hint for an unknown command.

mod common;

use common::{artifacts, boot_to_shell, qemu, ANSWER, QEMU_BOOT};
use gestalt_ci::{Boot, HarnessError};

#[test]
fn shell_commands_answer_and_version_matches_the_image() -> Result<(), HarnessError> {
    let elf = artifacts().elf()?;
    let bytes = std::fs::read(&elf).expect("gestalt.elf is readable");
    let report = gestalt_image::describe_file(&bytes).expect("gestalt.elf is a valid image");
    let build = report.info.build_id_short();

    let mut node = boot_to_shell(&qemu("shell", Boot::Kernel).cpus(2), QEMU_BOOT)?;

    let version = node.command("version", ANSWER)?;
    assert!(version.contains(&format!("build {build}")), "expected build {build} in:\n{version}");
    assert!(version.contains(&report.info.version), "{version}");
    assert!(version.contains(&format!("protocol {}", report.info.protocol)), "{version}");

    let status = node.command("status", ANSWER)?;
    assert!(status.contains("uptime"), "status lacks uptime:\n{status}");
    assert!(status.contains("2"), "status lacks the core count:\n{status}");

    let help = node.command("help", ANSWER)?;
    for cmd in ["help", "version", "status", "mem", "pci", "log", "reboot", "poweroff"] {
        assert!(help.contains(cmd), "help does not list {cmd}:\n{help}");
    }

    let unknown = node.command("frobnicate", ANSWER)?;
    assert!(
        unknown.contains("unknown command 'frobnicate'; type 'help' for the list"),
        "{unknown}"
    );
    Ok(())
}

#[test]
fn backspace_edits_the_line_and_the_other_commands_answer() -> Result<(), HarnessError> {
    let mut node = boot_to_shell(&qemu("shell-edit", Boot::Kernel).cpus(2), QEMU_BOOT)?;
    // "statux", DEL, "s": the shell must run "status".
    node.send_line("statux\u{7f}s")?;
    node.wait_for("cores 2 online of 2", ANSWER)?;
    // The rest of the answer, up to the next prompt, before the next command is typed.
    node.wait_for_text("gestalt> ", ANSWER)?;

    let mem = node.command("mem", ANSWER)?;
    for part in ["usable:", "reserve:", "pool:", "heap:", "frames:"] {
        assert!(mem.contains(part), "mem lacks {part}:\n{mem}");
    }
    let pci = node.command("pci", ANSWER)?;
    assert!(pci.contains("8086:1237") && pci.contains("host bridge"), "{pci}");
    let log = node.command("log debug", ANSWER)?;
    assert!(log.contains("log level debug"), "{log}");
    let bad = node.command("log loud", ANSWER)?;
    assert!(bad.contains("usage: log [error|warn|info|debug|trace]"), "{bad}");

    node.send_line("poweroff")?;
    let status = node.wait_exit(ANSWER)?;
    assert!(status.success(), "QEMU did not power off cleanly: {status:?}");
    Ok(())
}

/// The `idle:` line's percentage.
fn asleep_percent(status: &str) -> Option<f64> {
    let l = status.lines().find(|l| l.starts_with("idle: the boot CPU slept "))?;
    l.split("slept ").nth(1)?.split('%').next()?.parse().ok()
}

#[test]
fn an_idle_node_sleeps_instead_of_spinning_and_still_answers_at_once() -> Result<(), HarnessError> {
    // Alone on a switch port, the node waits 5 s of its own time for peers before it commits
    // a view of itself: 5 s of an idle node, announcements aside.
    let mut sw = gestalt_ci::Switch::new(41)?;
    let port = sw.add_port(gestalt_ci::PortKind::Qemu)?;
    let spec = qemu("idle", Boot::Kernel).nic(port, [0x52, 0x54, 0x00, 0x49, 0x44, 1]);
    let mut node = boot_to_shell(&spec, QEMU_BOOT)?;
    node.wait_for("net: view committed: 1 nodes", QEMU_BOOT)?;
    let status = node.command("status", ANSWER)?;
    let asleep = asleep_percent(&status).unwrap_or(0.0);
    assert!(asleep >= 50.0, "an idle node should sleep most of the time:\n{status}");
    eprintln!("{}", status.lines().find(|l| l.starts_with("idle:")).unwrap_or(""));
    Ok(())
}
