//! Guest payloads for the backend tests: building them once, and QEMU nodes that boot one
//! as the guest module (`-kernel` with `-initrd`: no ISO to make, a node boots in a fraction of
//! a second).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use gestalt_ci::{Boot, Emu, HarnessError, Node, NodeSpec};

use super::{artifacts, QEMU_BOOT};

/// A guest run after boot: payload work, a few hundred thousand exits at most.
pub const GUEST_RUN: Duration = Duration::from_secs(300);

static BUILD: Mutex<bool> = Mutex::new(false);

/// The payload `name` (built by `ci/payloads/build.sh` unless `GESTALT_PAYLOADS_PREBUILT`).
pub fn payload(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("payloads");
    let path = dir.join("target/x86_64-gestalt/release").join(format!("payload-{name}"));
    let mut built = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built && std::env::var_os("GESTALT_PAYLOADS_PREBUILT").is_none() {
        let st = Command::new("sh")
            .arg(dir.join("build.sh"))
            .status()
            .expect("cannot run ci/payloads/build.sh");
        assert!(st.success(), "ci/payloads/build.sh failed");
        *built = true;
    }
    assert!(path.exists(), "payload {} missing: run ci/payloads/build.sh", path.display());
    path
}

/// A QEMU node (TCG, the harness's SVM CPU) booting payload `name` with `cmdline`; 64 MiB of
/// guest RAM unless the command line says otherwise.
pub fn qemu_guest(tag: &str, name: &str, cmdline: &str, cpus: u32) -> NodeSpec {
    let cmdline =
        if cmdline.contains("mem=") { cmdline.to_string() } else { format!("{cmdline} mem=64M") };
    NodeSpec::new(tag, Emu::Qemu, Boot::Kernel).cpus(cpus).cmdline(&cmdline).guest(&payload(name))
}

/// Boots payload `name` on QEMU with `test=<test>` and returns the console once the verdict is
/// printed (asserting it passed).
pub fn run_qemu_test(tag: &str, name: &str, test: &str, cpus: u32) -> Result<String, HarnessError> {
    let spec = qemu_guest(tag, name, &format!("test={test}"), cpus);
    let mut node = Node::start(&spec, &artifacts())?;
    let mut verdict = node.wait_for(&format!("test: {test} "), QEMU_BOOT + GUEST_RUN)?;
    while verdict.contains("starting") {
        verdict = node.wait_for(&format!("test: {test} "), GUEST_RUN)?;
    }
    let text = node.console().text();
    assert!(verdict.contains("PASS"), "{verdict}\n{text}");
    Ok(text)
}
