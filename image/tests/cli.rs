//! The `gestalt-image` command on files that are not images: a clear reason, a non-zero exit
//! status, and never a panic or backtrace.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gestalt-image")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("gestalt-image-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn verify_and_inspect_say_why_a_text_file_is_not_an_image() {
    let p = temp("text", b"hello, world\n");
    for cmd in ["verify", "inspect"] {
        let (ok, _, err) = run(&[cmd, p.to_str().unwrap()]);
        assert!(!ok, "{cmd} accepted a text file");
        assert!(err.contains("not an ELF file"), "{cmd}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{cmd}: {err}");
    }
    let _ = std::fs::remove_file(p);
}

#[test]
fn a_truncated_elf_header_is_reported_as_truncated() {
    let p = temp("trunc", b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0\x02\0");
    let (ok, _, err) = run(&["verify", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("truncated"), "{err}");
    let _ = std::fs::remove_file(p);
}

#[test]
fn a_missing_file_and_a_wrong_usage_fail_with_a_message() {
    let (ok, _, err) = run(&["verify", "/nonexistent/gestalt.elf"]);
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
    let (ok, _, err) = run(&["frobnicate"]);
    assert!(!ok);
    assert!(err.contains("usage"), "{err}");
    let (ok, _, err) = run(&["build", "--out", "/tmp/x"]);
    assert!(!ok);
    assert!(err.contains("--firmware is required"), "{err}");
}
