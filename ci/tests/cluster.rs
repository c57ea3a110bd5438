//! Several nodes joined by the virtual switch: they find each other and agree on a view; a
//! partition keeps them apart; `gestalt-cluster run` shows prefixed consoles and stops every
//! emulator at end of input.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{artifacts, QEMU_BOOT};
use gestalt_ci::{Boot, Cluster, Emu, HarnessError};

#[test]
fn two_qemu_nodes_on_the_switch_find_each_other_and_commit_a_view() -> Result<(), HarnessError> {
    let mut c = Cluster::start(2, Emu::Qemu, Boot::Kernel, 1, "", &artifacts(), 11)?;
    for node in c.nodes.iter_mut() {
        node.wait_for("shell: ready", QEMU_BOOT)?;
        let view = node.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
        eprintln!("{}: {view}", node.name());
    }
    let n = c.switch.counters();
    assert!(n.received > 0 && n.sent > 0, "no frames crossed the switch: {n:?}");
    Ok(())
}

#[test]
fn a_qemu_node_and_a_bochs_node_on_the_switch_commit_a_view() -> Result<(), HarnessError> {
    let kinds = [(Emu::Qemu, Boot::Kernel), (Emu::Bochs, Boot::Iso)];
    let mut c = Cluster::start_mixed(&kinds, 1, "", &artifacts(), 13)?;
    for node in c.nodes.iter_mut() {
        node.wait_for("shell: ready", common::BOCHS_BOOT)?;
    }
    for node in c.nodes.iter_mut() {
        let view = node.wait_for("view committed: 2 nodes", common::BOCHS_BOOT)?;
        eprintln!("{}: {view}", node.name());
    }
    Ok(())
}

#[test]
fn partitioned_nodes_do_not_find_each_other() -> Result<(), HarnessError> {
    let mut c = Cluster::start(2, Emu::Qemu, Boot::Kernel, 1, "", &artifacts(), 12)?;
    c.switch.partition(&[&[0], &[1]]);
    for node in c.nodes.iter_mut() {
        node.wait_for("shell: ready", QEMU_BOOT)?;
    }
    // Not a sleep: each node must have announced itself many times (the switch dropped every
    // copy) before "no view" means anything.
    for node in c.nodes.iter_mut() {
        let deadline = Instant::now() + QEMU_BOOT;
        loop {
            let net = node.command("net", common::ANSWER)?;
            let sent = net
                .split("discovery: ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            if sent >= 8 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} announced only {sent} times:\n{net}",
                node.name()
            );
        }
    }
    for node in &c.nodes {
        let text = node.console().text();
        assert!(
            !text.contains("view committed"),
            "{} formed a view across a partition:\n{text}",
            node.name()
        );
    }
    assert!(c.switch.counters().dropped_partition > 0);
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn gestalt_cluster_run_prefixes_consoles_routes_input_and_stops_every_node_at_eof() {
    artifacts().elf().expect("artifacts");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gestalt-cluster"))
        .args(["run", "--nodes", "2", "--emu", "qemu"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gestalt-cluster starts");
    // Whatever happens below, the child goes away with the test.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut child = Reap(child);
    let pids = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                l.split(" is pid ").nth(1).and_then(|r| r.split(',').next()?.parse::<u32>().ok())
            })
            .collect::<Vec<u32>>()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen: Vec<String> = Vec::new();
    // Waits for a line, looking at those already seen too (the nodes print in any order).
    let mut wait_line = |pred: &dyn Fn(&str) -> bool| {
        if seen.iter().any(|l| pred(l)) {
            return;
        }
        let deadline = Instant::now() + QEMU_BOOT;
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return;
                }
            }
        }
        panic!("gestalt-cluster never printed the expected line; it printed:\n{}", seen.join("\n"));
    };
    wait_line(&|l| l.starts_with("n0| ") && l.contains("shell: ready"));
    wait_line(&|l| l.starts_with("n1| ") && l.contains("shell: ready"));
    wait_line(&|l| l.starts_with("n1| gestalt> "));
    writeln!(stdin, "1: version").unwrap();
    wait_line(&|l| l.starts_with("n1| Gestalt "));
    drop(stdin); // end of input
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "gestalt-cluster did not stop at end of input");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = pids.join().unwrap();
    assert_eq!(pids.len(), 2, "expected two emulator pids on stderr");
    for pid in pids {
        assert!(!alive(pid), "emulator pid {pid} survived gestalt-cluster");
    }
}
