//! The VMX vCPU backend under Bochs (`corei7_skylake_x`, 1 and 2 CPUs): the guest payloads of
//! ci/payloads run as the node's guest (a Multiboot module) and print PASS/FAIL lines the
//! firmware relays as `guest: …`; the firmware's `test=vmx` / `test=vmx-fault` give the verdict.
//! Also: the `vcpu` shell command and console input to the guest. (QEMU TCG has no VMX: its
//! nodes run guests with the SVM backend, ci/tests/svm.rs.)
//!
//! The payloads are built by `ci/payloads/build.sh` (the tests build them when missing).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::guest::{payload, GUEST_RUN};
use common::{artifacts, ANSWER, BOCHS_BOOT};
use gestalt_ci::{Artifacts, Boot, Emu, HarnessError, Node, NodeSpec};

/// Artifacts whose ISO boots the firmware with `cmdline` and the payload as the guest module.
struct GuestImage {
    dir: PathBuf,
}

impl GuestImage {
    fn new(tag: &str, name: &str, cmdline: &str) -> GuestImage {
        let dir = std::env::temp_dir().join(format!("gestalt-vmx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let elf = artifacts().elf().expect("gestalt.elf: run `make image` first");
        let bytes = std::fs::read(elf).expect("reading gestalt.elf");
        // `name` may carry the module's arguments: "litmus runs=2000".
        let (file, args) = name.split_once(' ').unwrap_or((name, ""));
        let module = payload(file);
        let mname = format!("payload-{file} {args}").trim_end().to_string();
        // The guest gets the node's whole pool unless capped: 64 MiB keeps the tests quick.
        let cmdline = if cmdline.contains("mem=") {
            cmdline.to_string()
        } else {
            format!("{cmdline} mem=64M")
        };
        gestalt_image::iso::make_iso(
            &bytes,
            &cmdline,
            &[(module.as_path(), mname.as_str())],
            &dir.join("gestalt.iso"),
        )
        .expect("making the guest ISO");
        GuestImage { dir }
    }

    fn artifacts(&self) -> Artifacts {
        Artifacts::at(&self.dir)
    }
}

impl Drop for GuestImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bochs(name: &str, cpus: u32) -> NodeSpec {
    // The command line lives in the ISO: an empty spec command line boots it as it is.
    NodeSpec::new(name, Emu::Bochs, Boot::Iso).cpus(cpus)
}

/// Boots the payload with `test=<test>` and returns the console once the verdict is printed.
fn run_test(tag: &str, name: &str, test: &str, cpus: u32) -> Result<String, HarnessError> {
    let img = GuestImage::new(tag, name, &format!("test={test}"));
    let mut node = Node::start(&bochs(tag, cpus), &img.artifacts())?;
    let mut verdict = node.wait_for(&format!("test: {test} "), BOCHS_BOOT + GUEST_RUN)?;
    while verdict.contains("starting") {
        verdict = node.wait_for(&format!("test: {test} "), GUEST_RUN)?;
    }
    let text = node.console().text();
    assert!(verdict.contains("PASS"), "{verdict}\n{text}");
    Ok(text)
}

fn numbers_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(marker))
}

#[test]
fn smp_payload_passes_on_one_vcpu() -> Result<(), HarnessError> {
    let text = run_test("smp1", "smp", "vmx", 1)?;
    assert!(text.contains("hv: VMX ready: EPT, unrestricted guest"), "{text}");
    assert!(text.contains("guest: smp: PASS all"), "{text}");
    assert!(text.contains("guest: smp: PASS TSC-deadline timer"), "{text}");
    assert!(text.contains("guest: smp: PASS interrupt held while IF=0"), "{text}");
    assert!(text.contains("guest: smp: PASS XSETBV loaded XCR0"), "{text}");
    assert!(text.contains(" irq-window "), "the window exit is counted:\n{text}");
    assert!(text.contains("vcpu 0 node 0 cpu 0 stopped rip "), "{text}");
    for m in ["hypercall round trip", "cpuid round trip", "VM exits in"] {
        if let Some(l) = numbers_after(&text, m) {
            eprintln!("{l}");
        }
    }
    Ok(())
}

#[test]
fn smp_payload_starts_its_second_vcpu_with_init_sipi_and_passes_on_two_cores(
) -> Result<(), HarnessError> {
    let text = run_test("smp2", "smp", "vmx", 2)?;
    assert!(text.contains("guest: smp: 2/2 vCPUs started with INIT/SIPI"), "{text}");
    assert!(text.contains("guest: smp: vcpu 1 up (x2APIC id 1)"), "{text}");
    assert!(text.contains("guest: smp: PASS atomic counter 40000 = 2 vCPUs"), "{text}");
    assert!(text.contains("guest: smp: PASS memory sweep on 2 vCPUs"), "{text}");
    assert!(text.contains("guest: smp: PASS fixed IPIs delivered to 1 halted vCPUs"), "{text}");
    assert!(text.contains("vcpu 1 node 0 cpu 1 stopped rip "), "{text}");
    Ok(())
}

#[test]
fn ept_payload_is_demand_mapped_gets_a_rights_fault_and_is_stopped_outside_its_memory(
) -> Result<(), HarnessError> {
    ept_payload(1)
}

#[test]
fn ept_payload_passes_with_a_second_vcpu_waiting_for_sipi() -> Result<(), HarnessError> {
    ept_payload(2)
}

fn ept_payload(cpus: u32) -> Result<(), HarnessError> {
    let text = run_test(&format!("ept{cpus}"), "ept", "vmx-fault", cpus)?;
    assert!(text.contains("guest: ept: PASS all"), "{text}");
    assert!(text.contains("EPT violation outside guest memory (denied)"), "{text}");
    assert!(text.contains("gpa: 3221225472"), "the diagnostic names the address:\n{text}");
    assert!(text.contains("hv:   rip "), "registers are dumped:\n{text}");
    if let Some(l) = numbers_after(&text, "fault round trip") {
        eprintln!("{l}");
    }
    Ok(())
}

#[test]
fn triple_fault_is_diagnosed_with_a_register_dump_and_never_hangs() -> Result<(), HarnessError> {
    triple_payload(1).map(|_| ())
}

#[test]
fn triple_fault_on_a_two_core_node_stops_both_vcpus() -> Result<(), HarnessError> {
    let text = triple_payload(2)?;
    assert!(text.contains("vcpu 1 node 0 cpu 1 stopped"), "{text}");
    Ok(())
}

fn triple_payload(cpus: u32) -> Result<String, HarnessError> {
    let text = run_test(&format!("triple{cpus}"), "triple", "vmx-fault", cpus)?;
    assert!(text.contains("guest: triple: loading an empty IDT"), "{text}");
    assert!(text.contains("hv: vcpu 0 triple fault"), "{text}");
    assert!(text.contains("hv:   rip ") && text.contains("hv:   rax "), "{text}");
    assert!(text.contains("hv: guest stopped: triple fault"), "{text}");
    Ok(text)
}

#[test]
fn vcpu_command_shows_each_vcpu_with_its_exits_while_the_shell_keeps_working(
) -> Result<(), HarnessError> {
    let img = GuestImage::new("vcpu", "smp", "log=info");
    let mut node = Node::start(&bochs("vcpu", 2), &img.artifacts())?;
    node.wait_for("guest: smp: PASS all", BOCHS_BOOT + GUEST_RUN)?;
    node.wait_for("hv: guest exited with code 0x0", GUEST_RUN)?;
    let answer = node.command("vcpu", ANSWER)?;
    assert!(answer.contains("VMX root operation on 2 cores"), "{answer}");
    assert!(answer.contains("guest: 2 vCPUs, 64 MiB RAM"), "{answer}");
    assert!(answer.contains("vcpu 0 node 0 cpu 0 stopped rip "), "{answer}");
    assert!(answer.contains("vcpu 1 node 0 cpu 1 stopped rip "), "{answer}");
    assert!(answer.contains(" hypercall ") && answer.contains(" cpuid "), "{answer}");
    // Every page came through the coherence engine, as local hits on a one-node cluster.
    let mem = answer.lines().find(|l| l.contains("memory: coherence engine")).unwrap_or("");
    let hits: u64 = mem
        .split(" local hits")
        .next()
        .and_then(|h| h.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(hits > 100, "the guest's pages were mapped by the engine: {answer}");
    assert!(mem.contains(" 0 messages and 0 pages sent"), "{answer}");
    let status = node.command("status", ANSWER)?;
    assert!(status.contains("uptime"), "{status}");
    Ok(())
}

#[test]
fn console_input_reaches_the_guest_uart_after_ctrl_bracket() -> Result<(), HarnessError> {
    let img = GuestImage::new("echo", "echo", "log=info");
    let mut node = Node::start(&bochs("echo", 1), &img.artifacts())?;
    node.wait_for("guest: echo: type a line", BOCHS_BOOT + GUEST_RUN)?;
    // Ctrl-] gives the console to the guest; the rest of the line goes to its UART.
    node.send_line("\u{1d}hello gestalt")?;
    node.wait_for("hv: console input goes to the guest's UART", ANSWER)?;
    node.wait_for("guest: echo: hello gestalt", GUEST_RUN)?;
    node.wait_for("hv: guest exited with code 0x0", GUEST_RUN)?;
    Ok(())
}

/// The guest's devices live on the primary: a vCPU on node 1 writes the UART's scratch
/// register and an I/O APIC entry that vCPU 0 reads back on node 0, then reads a line typed on node 0's console and
/// ends the guest through the debug-exit port, all through the primary's one UART.
#[test]
fn a_vcpu_on_another_node_uses_the_primarys_uart_and_debug_exit_port() -> Result<(), HarnessError> {
    let (_sw, mut n0, mut n1, _images) = cluster_of("echo", "echo2n", "mem=32M", "log=info")?;
    let ready = n0.wait_for("(vcpu 1 on node 1)", BOCHS_BOOT + GUEST_RUN);
    let text = n0.console().text();
    ready.inspect_err(|_| eprintln!("node 0:\n{text}\nnode 1:\n{}", n1.console().text()))?;
    assert!(
        text.contains(
            "guest: echo: PASS the UART scratch register vcpu 1 wrote reads back on vcpu 0"
        ),
        "{text}"
    );
    assert!(
        text.contains("guest: echo: PASS the I/O APIC entry vcpu 1 wrote reads back on vcpu 0"),
        "{text}"
    );
    n0.send_line("\u{1d}typed on node 0")?;
    n0.wait_for("guest: echo: typed on node 0", GUEST_RUN)?;
    cluster_verdict_passes(&mut n0, &n1)?;
    let text1 = n1.console().text();
    assert!(!text1.contains("guest: "), "node 1 prints no guest line itself:\n{text1}");
    // Every byte the vCPU printed is two accesses (LSR poll, THR write): dozens of each.
    let stats = n1.command("stats", ANSWER)?;
    let line = stats.lines().find(|l| l.contains("stats: devices: on node 0; ")).unwrap_or("");
    let count = |after: &str| -> u64 {
        let rest = line.split(after).nth(1).unwrap_or("");
        rest.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0)
    };
    assert!(count("node 0; ") >= 50 && count("answer), ") >= 50, "{stats}");
    eprintln!("{stats}");
    Ok(())
}

#[test]
fn invalid_guest_state_is_decoded_and_dumped() -> Result<(), HarnessError> {
    let text = run_test("badstate", "badstate", "vmx-fault", 1)?;
    assert!(text.contains("hv: vcpu 0 invalid guest state: InvalidGuestState"), "{text}");
    assert!(text.contains("hv:   rip ") && text.contains("hv:   rax "), "{text}");
    assert!(text.contains("hv: guest stopped: invalid guest state"), "{text}");
    Ok(())
}

#[test]
fn failed_vm_entry_names_the_vm_instruction_error() -> Result<(), HarnessError> {
    let text = run_test("badctl", "badctl", "vmx-fault", 1)?;
    assert!(text.contains("EntryFailed { code: 7"), "{text}");
    assert!(text.contains("hv: guest stopped: VM entry with invalid control field(s)"), "{text}");
    Ok(())
}

#[test]
fn a_vcpu_spinning_without_exits_on_an_ap_is_preempted_and_gets_its_timer(
) -> Result<(), HarnessError> {
    let text = run_test("slice", "slice", "vmx", 2)?;
    assert!(text.contains("guest: slice: PASS vcpu 1 spinning without exits"), "{text}");
    Ok(())
}

#[test]
fn test_hypercalls_are_refused_to_a_guest_booted_without_test_mode() -> Result<(), HarnessError> {
    let img = GuestImage::new("hooks", "hooks", "");
    let mut node = Node::start(&bochs("hooks", 1), &img.artifacts())?;
    let end = node.wait_for("hv: guest exited with code", BOCHS_BOOT + GUEST_RUN)?;
    let text = node.console().text();
    assert!(text.contains("guest: hooks: PASS test hypercalls are refused"), "{text}");
    assert!(end.contains("code 0x0"), "{text}");
    Ok(())
}

#[test]
fn hypercall_exit_rate_is_measured_in_emulated_and_wall_time() -> Result<(), HarnessError> {
    let img = GuestImage::new("bench", "bench", "test=vmx");
    let mut node = Node::start(&bochs("bench", 1), &img.artifacts())?;
    node.wait_for("guest: bench: start", BOCHS_BOOT + GUEST_RUN)?;
    let t0 = std::time::Instant::now();
    let done = node.wait_for("guest: bench: done", GUEST_RUN)?;
    let wall = t0.elapsed();
    let verdict = node.wait_for("test: vmx P", GUEST_RUN)?;
    assert!(verdict.contains("PASS"), "{verdict}");
    // Both lines cross the same console path, so their latency cancels out.
    eprintln!("{done}");
    eprintln!(
        "bench: 100000 VM exits in {:.3} s wall time = {:.0} exits/s (Bochs, this machine's load)",
        wall.as_secs_f64(),
        100_000.0 / wall.as_secs_f64()
    );
    Ok(())
}

/// Two Bochs nodes (2 CPUs each: a service core and a vCPU) through our switch on 127.0.0.1.
type SpanCluster = (gestalt_ci::Switch, Node, Node, Vec<GuestImage>);

/// Waits for the primary's `test=vmx` verdict and checks it passed (showing both consoles when
/// not); returns the primary's console.
fn cluster_verdict_passes(n0: &mut Node, n1: &Node) -> Result<String, HarnessError> {
    cluster_verdict_within(n0, n1, BOCHS_BOOT + GUEST_RUN)
}

/// [`cluster_verdict_passes`] for a guest that may run up to `limit`.
fn cluster_verdict_within(
    n0: &mut Node,
    n1: &Node,
    limit: Duration,
) -> Result<String, HarnessError> {
    let verdict = n0.wait_for("test: vmx P", limit);
    let text = n0.console().text();
    let shown = || format!("node 0:\n{text}\nnode 1:\n{}", n1.console().text());
    let verdict = verdict.inspect_err(|_| eprintln!("{}", shown()))?;
    assert!(verdict.contains("PASS"), "{verdict}\n{}", shown());
    Ok(text)
}

fn span_cluster(tag: &str, extra: &str) -> Result<SpanCluster, HarnessError> {
    cluster_of("span", tag, "mem=32M", extra)
}

/// Two Bochs nodes running `payload` as one guest, `mem` on both command lines.
fn cluster_of(
    payload: &str,
    tag: &str,
    mem: &str,
    extra: &str,
) -> Result<SpanCluster, HarnessError> {
    let (sw, mut nodes, images) = bochs_cluster(2, payload, tag, mem, extra)?;
    let n1 = nodes.pop().expect("two nodes");
    let n0 = nodes.pop().expect("two nodes");
    Ok((sw, n0, n1, images))
}

/// `n` Bochs nodes (2 CPUs each) on one switch, each booting `payload` as the guest module;
/// node 0 is the primary under `test=vmx`.
fn bochs_cluster(
    n: usize,
    payload: &str,
    tag: &str,
    mem: &str,
    extra: &str,
) -> Result<(gestalt_ci::Switch, Vec<Node>, Vec<GuestImage>), HarnessError> {
    bochs_cluster_cpus(n, 2, payload, tag, mem, extra)
}

/// [`bochs_cluster`] with `cpus` CPUs per node (one service core, the rest vCPUs).
fn bochs_cluster_cpus(
    n: usize,
    cpus: u32,
    payload: &str,
    tag: &str,
    mem: &str,
    extra: &str,
) -> Result<(gestalt_ci::Switch, Vec<Node>, Vec<GuestImage>), HarnessError> {
    bochs_nodes(n, cpus, payload, tag, Some("vmx"), &format!("{mem} {extra}"))
}

/// `n` Bochs nodes of `cpus` CPUs on one switch, each booting `payload` as the guest module
/// with `words` on its command line; node 0 is the primary, under `test=<test>` if given (then
/// it leaves the emulator with the guest's verdict).
fn bochs_nodes(
    n: usize,
    cpus: u32,
    payload: &str,
    tag: &str,
    test: Option<&str>,
    words: &str,
) -> Result<(gestalt_ci::Switch, Vec<Node>, Vec<GuestImage>), HarnessError> {
    let mut sw = gestalt_ci::Switch::new(31)?;
    let mut nodes = Vec::new();
    let mut images = Vec::new();
    for i in 0..n {
        let role = match (i, test) {
            (0, Some(t)) => format!("nodes={n} primary test={t}"),
            (0, None) => format!("nodes={n} primary"),
            _ => format!("nodes={n}"),
        };
        let img = GuestImage::new(&format!("{tag}{i}"), payload, &format!("{role} {words}"));
        let port = sw.add_port(gestalt_ci::PortKind::Bochs)?;
        let spec =
            bochs(&format!("{tag}{i}"), cpus).nic(port, [0x52, 0x54, 0x00, 0x53, 0x50, i as u8]);
        nodes.push(Node::start(&spec, &img.artifacts())?);
        images.push(img);
    }
    Ok((sw, nodes, images))
}

#[test]
fn one_guest_spans_two_bochs_nodes_with_coherent_memory_atomics_and_ipis(
) -> Result<(), HarnessError> {
    // Bound in this order, dropped in reverse: the nodes stop before the switch does.
    // The primary's guest clock starts 10^12 ticks (minutes) ahead: node 1's must catch up,
    // or its vCPU reads TSC values published on node 0 from its future.
    let (_sw, mut n0, mut n1, _images) = span_cluster("span", "tscskew=1000000000000")?;
    let text = cluster_verdict_passes(&mut n0, &n1)?;
    let text1 = n1.console().text();
    eprintln!("{}", n1.command("stats", ANSWER)?);
    assert!(text.contains("guest: span: PASS guest TSC: 1 vCPUs on other nodes"), "{text}");
    assert!(text1.contains("hv: guest clock set from node 0's: 8 probes"), "{text1}");
    assert!(text.contains("guest: span: 2/2 vCPUs started with INIT/SIPI"), "{text}");
    // A line the vCPU on node 1 wrote appears on node 0's console, in guest order: before the
    // line vCPU 0 wrote after it saw vCPU 1's later store.
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no '{needle}':\n{text}"));
    assert!(
        at("guest: span: vcpu 1 up on node 1") < at("guest: span: every vCPU reported its node"),
        "{text}"
    );
    assert!(
        text.contains("guest: span: PASS atomic counter 600 = 2 vCPUs x 300 on 2 nodes"),
        "{text}"
    );
    assert!(text.contains("guest: span: PASS integrity"), "{text}");
    assert!(text.contains("guest: span: PASS fixed and broadcast IPIs"), "{text}");
    assert!(text.contains("guest: span: PASS a logical-destination IPI and an NMI"), "{text}");
    assert!(text1.contains("hv: node 1 runs vCPUs 1..2 of 2"), "{text1}");
    // Node 1 keeps serving its shell: its profile shows remote faults served with latencies.
    let stats = n1.command("stats", ANSWER)?;
    assert!(stats.contains("stats: node 1 of 2: "), "{stats}");
    assert!(!stats.contains(" 0 remote faults"), "{stats}");
    assert!(stats.contains("median in "), "{stats}");
    assert!(stats.contains("stats: guest time: skew to node 0 "), "{stats}");
    let vcpu = n1.command("vcpu", ANSWER)?;
    assert!(vcpu.contains("vcpu 0 node 0") && vcpu.contains("vcpu 1 node 1 cpu 1"), "{vcpu}");
    eprintln!("{stats}");
    for l in text.lines().chain(text1.lines()) {
        if l.contains("guest: span:")
            || l.contains("memory: coherence")
            || l.contains("VM exits in")
        {
            eprintln!("{l}");
        }
    }
    Ok(())
}

#[test]
fn the_spanning_guest_passes_with_five_percent_loss_duplication_and_reordering_in_the_switch(
) -> Result<(), HarnessError> {
    let (sw, mut n0, n1, _images) = span_cluster("lossy", "")?;
    sw.set_loss(0.05);
    sw.set_duplication(0.05);
    // Up to 2 ms of jitter on each frame reorders them.
    sw.set_delay(Duration::from_micros(100), Duration::from_millis(2));
    let text = cluster_verdict_passes(&mut n0, &n1)?;
    assert!(text.contains("guest: span: PASS atomic counter 600"), "{text}");
    assert!(text.contains("guest: span: PASS integrity"), "{text}");
    Ok(())
}

#[test]
fn killing_a_node_stops_the_spanning_guest_on_the_other_with_a_report_naming_it(
) -> Result<(), HarnessError> {
    let (_sw, mut n0, n1, _images) = span_cluster("kill", "")?;
    n0.wait_for("guest: span: vcpu 1 up on node 1", BOCHS_BOOT + GUEST_RUN)?;
    drop(n1); // SIGKILL, as a node that loses power
    let line = n0.wait_for("stopped answering: the guest is stopped", Duration::from_secs(60))?;
    assert!(line.contains("hv: node 1 stopped answering"), "{line}");
    n0.wait_for(
        "hv: guest stopped: a node of the guest stopped answering",
        Duration::from_secs(10),
    )?;
    Ok(())
}

/// Figures for the closing note (ignored in CI): the remote-fault profile on both nodes after
/// the spanning payload, beside the raw-frame and page-message round trips between the same
/// two nodes (`netbench`); first with a service core per node (2 CPUs: the network is polled
/// while the vCPU runs), then with one CPU per node (the vCPU runs 2 ms slices between polls,
/// the alternative the service core was chosen over), in one run.
#[test]
#[ignore]
fn span_figures() -> Result<(), HarnessError> {
    // GESTALT_SPAN_CMDLINE adds words to both nodes' command lines (e.g. `hold=200`).
    let extra = std::env::var("GESTALT_SPAN_CMDLINE").unwrap_or_default();
    for cpus in [2, 1] {
        // Not under test=: the primary stays up after the guest, for `stats` and `netbench`.
        let words = format!("mem=32M {extra}");
        let (sw, mut nodes, _images) =
            bochs_nodes(2, cpus, "span", &format!("figs{cpus}-"), None, &words)?;
        let (n0, n1) = nodes.split_at_mut(1);
        let (n0, n1) = (&mut n0[0], &mut n1[0]);
        n0.wait_for("hv: guest exited", BOCHS_BOOT + GUEST_RUN)?;
        eprintln!("=== {cpus} CPU(s) per node");
        for l in n0.console().text().lines().filter(|l| l.contains("guest: span:")) {
            eprintln!("{l}");
        }
        for n in [&mut *n0, &mut *n1] {
            eprintln!("{}", n.command("stats", ANSWER)?);
        }
        eprintln!("{}", n1.command("netbench 0", Duration::from_secs(120))?);
        drop(nodes);
        drop(sw);
    }
    Ok(())
}

#[test]
fn a_guest_larger_than_any_node_sweeps_all_of_it_from_both_nodes_with_evictions(
) -> Result<(), HarnessError> {
    // Each node holds 8 MiB: it homes 6 MiB of the 12 MiB guest and caches 2 MiB (512 frames)
    // of the other's, so the sweep cannot fit in either without evicting.
    let (_sw, mut n0, mut n1, _images) = cluster_of("beyond", "beyond", "mem=8M", "")?;
    let text = cluster_verdict_passes(&mut n0, &n1)?;
    assert!(text.contains("guest: beyond: 12 MiB of guest RAM on 2 vCPUs"), "{text}");
    assert!(text.contains("guest: beyond: PASS "), "{text}");
    let evictions = |stats: &str| -> u64 {
        let line = stats.lines().find(|l| l.contains("stats: guest RAM")).unwrap_or("");
        line.split(" evictions")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // Node 0's profile is printed with its verdict; node 1 answers `stats`.
    let stats1 = n1.command("stats", ANSWER)?;
    assert!(evictions(&text) > 500, "node 0 evicted pages homed on node 1:\n{text}");
    assert!(evictions(&stats1) > 300, "node 1 evicted pages homed on node 0:\n{stats1}");
    for l in text.lines().filter(|l| l.starts_with("stats:")) {
        eprintln!("node 0 {l}");
    }
    eprintln!("{stats1}");
    Ok(())
}

/// Two Bochs nodes of 3 CPUs (two vCPUs each): MP, SB, SB+mfence and LB between vCPU 0 and a
/// vCPU on node 1, and IRIW with the writers on different nodes and a reader on each.
fn litmus_cluster(tag: &str, runs: u32) -> Result<String, HarnessError> {
    let (_sw, mut nodes, _images) =
        bochs_cluster_cpus(2, 3, &format!("litmus runs={runs}"), tag, "mem=32M", "")?;
    let n1 = nodes.pop().expect("two nodes");
    let mut n0 = nodes.pop().expect("two nodes");
    // A round costs a few remote faults: allow a second per run and test beyond the usual.
    let limit = BOCHS_BOOT + GUEST_RUN + Duration::from_secs(5 * u64::from(runs.max(100) - 100));
    let text = cluster_verdict_within(&mut n0, &n1, limit)?;
    assert!(text.contains(&format!("guest: litmus: {runs} runs per test")), "{text}");
    for t in ["MP", "SB", "SB+mfence", "LB", "IRIW"] {
        assert!(text.contains(&format!("guest: litmus: PASS {t}: {runs} runs")), "{text}");
    }
    for l in text.lines().filter(|l| l.contains("guest: litmus: ")) {
        eprintln!("{l}");
    }
    Ok(text)
}

#[test]
fn litmus_tests_across_two_nodes_never_show_an_outcome_x86_tso_forbids() -> Result<(), HarnessError>
{
    litmus_cluster("litmus", 100).map(|_| ())
}

/// The litmus figures: thousands of runs per test (an hour of Bochs time; not in `make test`).
/// `GESTALT_LITMUS_RUNS` sets the count (default 2000).
#[test]
#[ignore]
fn litmus_figures() -> Result<(), HarnessError> {
    let runs = std::env::var("GESTALT_LITMUS_RUNS").ok().and_then(|v| v.parse().ok());
    litmus_cluster("litmusfig", runs.unwrap_or(2000)).map(|_| ())
}

/// Three Bochs nodes run the span payload: with three nodes a reader, a home and an owner can
/// all differ, so pages also travel the 3-hop way (owner straight to reader).
#[test]
fn one_guest_spans_three_bochs_nodes_and_pages_travel_three_hops() -> Result<(), HarnessError> {
    let (_sw, mut nodes, _images) = bochs_cluster(3, "span", "three", "mem=32M", "")?;
    let verdict = nodes[0].wait_for("test: vmx P", BOCHS_BOOT + GUEST_RUN)?;
    let text = nodes[0].console().text();
    assert!(verdict.contains("PASS"), "{verdict}\n{text}");
    assert!(text.contains("guest: span: 3/3 vCPUs started with INIT/SIPI"), "{text}");
    assert!(
        text.contains("guest: span: PASS atomic counter 900 = 3 vCPUs x 300 on 3 nodes"),
        "{text}"
    );
    let mut three_hop = 0;
    for n in &mut nodes[1..] {
        let stats = n.command("stats", ANSWER)?;
        three_hop += stats
            .split("3-hop ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        eprintln!("{stats}");
    }
    assert!(three_hop > 0, "no page came from an owner that was not its home");
    Ok(())
}
