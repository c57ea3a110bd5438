//! Several nodes joined by the virtual switch: they find each other and agree on a view; a
//! partition keeps them apart; `gestalt-cluster run` shows prefixed consoles and stops every
//! emulator at end of input.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{artifacts, BOCHS_BOOT, QEMU_BOOT};
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

/// `gestalt-cluster run ARGS` as a user runs it: its prefixed consoles line by line, its
/// stdin, and the emulator pids it names; dropping it kills it.
struct Cli {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    pids: Option<std::thread::JoinHandle<Vec<u32>>>,
}

impl Cli {
    fn run(args: &[&str]) -> Cli {
        artifacts().elf().expect("artifacts");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gestalt-cluster"))
            .arg("run")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gestalt-cluster starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let pids = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    l.split(" is pid ")
                        .nth(1)
                        .and_then(|r| r.split(',').next()?.parse::<u32>().ok())
                })
                .collect::<Vec<u32>>()
        });
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Cli { child, stdin, lines, seen: Vec::new(), pids: Some(pids) }
    }

    /// Waits for a line, looking at those already seen too (the nodes print in any order).
    fn wait_line(&mut self, within: Duration, pred: &dyn Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(l.clone());
                if pred(&l) {
                    return l;
                }
            }
        }
        panic!(
            "gestalt-cluster never printed the expected line; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().expect("stdin open"), "{line}").unwrap();
    }

    /// Ends its input and checks that it stopped, and every emulator it started with it.
    fn end_of_input_stops_everything(mut self, nodes: usize) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "gestalt-cluster did not stop at end of input");
            std::thread::sleep(Duration::from_millis(50));
        }
        let pids = self.pids.take().unwrap().join().unwrap();
        assert_eq!(pids.len(), nodes, "expected {nodes} emulator pids on stderr");
        for pid in pids {
            assert!(!alive(pid), "emulator pid {pid} survived gestalt-cluster");
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        // Whatever happened, the child goes away with the test (and its emulators with it).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gestalt_cluster_run_prefixes_consoles_routes_input_and_stops_every_node_at_eof() {
    let mut cli = Cli::run(&["--nodes", "2", "--emu", "qemu"]);
    cli.wait_line(QEMU_BOOT, &|l| l.starts_with("n0| ") && l.contains("shell: ready"));
    cli.wait_line(QEMU_BOOT, &|l| l.starts_with("n1| ") && l.contains("shell: ready"));
    cli.wait_line(QEMU_BOOT, &|l| l.starts_with("n1| gestalt> "));
    cli.send("1: version");
    cli.wait_line(QEMU_BOOT, &|l| l.starts_with("n1| Gestalt "));
    cli.end_of_input_stops_everything(2);
}

/// What `make run EMU=bochs` does: two Bochs nodes run the span payload as one guest, its
/// output on node 0's console, and both shells keep answering.
#[test]
fn gestalt_cluster_run_on_bochs_runs_one_guest_across_the_nodes_and_the_shells_keep_answering() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("payloads/target/x86_64-gestalt/release/payload-span");
    assert!(guest.exists(), "{} missing: run ci/payloads/build.sh", guest.display());
    let g = guest.to_str().expect("utf-8 path");
    let mut cli = Cli::run(&[
        "--nodes",
        "2",
        "--emu",
        "bochs",
        "--cpus",
        "2",
        "--guest",
        g,
        "--cmdline",
        "mem=32M",
    ]);
    let within = BOCHS_BOOT + Duration::from_secs(300);
    cli.wait_line(within, &|l| {
        l.starts_with("n0| ") && l.contains("guest: span: vcpu 1 up on node 1")
    });
    cli.wait_line(within, &|l| l.starts_with("n0| ") && l.contains("guest: span: PASS all"));
    cli.wait_line(within, &|l| {
        l.starts_with("n0| ") && l.contains("hv: guest exited with code 0x0")
    });
    cli.send("1: stats");
    cli.wait_line(within, &|l| l.starts_with("n1| stats: node 1 of 2: "));
    cli.send("vcpu");
    cli.wait_line(within, &|l| l.starts_with("n0| vcpu 1 node 1"));
    cli.end_of_input_stops_everything(2);
}
