//! The network between nodes (issue: netstack in the firmware): nodes find each other through
//! the switch, the transport loses nothing on a lossy link, QEMU and Bochs nodes talk, and a
//! node with another cluster key is refused on both sides.

mod common;

use std::time::Duration;

use common::{artifacts, ANSWER, BOCHS_BOOT, QEMU_BOOT};
use gestalt_ci::{Boot, Cluster, Emu, HarnessError, Node, NodeSpec, PortKind, Switch};

/// Formation, then 200 messages to every peer with 5 % loss: generous for a loaded machine.
const MESH: Duration = Duration::from_secs(180);

fn mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x4e, 0x54, i]
}

/// The line with `needle`, whether it was printed already or comes within the boot timeout
/// (the refusal and the view commit race each other).
fn seen_or_wait(n: &mut Node, needle: &str) -> Result<String, HarnessError> {
    match n.console().line_with(needle) {
        Some(line) => Ok(line),
        None => n.wait_for(needle, QEMU_BOOT),
    }
}

#[test]
fn three_qemu_nodes_deliver_every_message_in_order_through_a_switch_dropping_five_percent(
) -> Result<(), HarnessError> {
    let mut c = Cluster::start(3, Emu::Qemu, Boot::Kernel, 1, "test=mesh", &artifacts(), 21)?;
    c.switch.set_loss(0.05);
    let mut retransmits = 0u64;
    for node in c.nodes.iter_mut() {
        node.wait_for("view committed: 3 nodes", MESH)?;
        let verdict = node.wait_for("test: mesh ", MESH)?;
        assert!(verdict.contains("PASS"), "{}: {verdict}", node.name());
        // "... in order; N retransmits, M duplicates suppressed"
        retransmits += verdict
            .split("; ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let n = c.switch.counters();
    assert!(n.dropped_loss > 0, "the switch dropped nothing: {n:?}");
    assert!(
        retransmits > 0,
        "frames were dropped ({}) but nothing was retransmitted",
        n.dropped_loss
    );
    Ok(())
}

#[test]
fn e1000_e1000e_and_virtio_net_nodes_with_static_addresses_exchange_messages(
) -> Result<(), HarnessError> {
    let art = artifacts();
    let mut sw = Switch::new(24)?;
    let models = ["e1000", "e1000e", "virtio-net-pci"];
    let mut nodes = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let port = sw.add_port(PortKind::Qemu)?;
        // Static addresses here (the other tests use link-local): ip=A.B.C.D/N end to end.
        let ip = format!("ip=10.47.0.{}/24", 10 + i);
        let line = if i == 0 {
            format!("nodes=3 primary test=mesh {ip}")
        } else {
            format!("nodes=3 test=mesh {ip}")
        };
        let spec = NodeSpec::new(&format!("{model}-node"), Emu::Qemu, Boot::Kernel)
            .cmdline(&line)
            .nic_model(model)
            .nic(port, mac(30 + i as u8));
        nodes.push(Node::start(&spec, &art)?);
    }
    let drivers = ["net: e1000 at", "net: e1000e at", "net: virtio-net at"];
    for (i, (n, driver)) in nodes.iter_mut().zip(drivers).enumerate() {
        n.wait_for(driver, QEMU_BOOT)?;
        let addr = n.wait_for("net: address", QEMU_BOOT)?;
        assert!(addr.contains(&format!("10.47.0.{}/24 (static)", 10 + i)), "{addr}");
        // The verdict follows the view ("test: mesh starting" comes before both).
        n.wait_for("view committed: 3 nodes", MESH)?;
        let verdict = n.wait_for("test: mesh ", MESH)?;
        assert!(verdict.contains("PASS"), "{}: {verdict}", n.name());
    }
    Ok(())
}

#[test]
fn a_bochs_node_and_a_qemu_node_form_a_cluster_and_ping_each_other() -> Result<(), HarnessError> {
    let art = artifacts();
    let mut sw = Switch::new(22)?;
    let pq = sw.add_port(PortKind::Qemu)?;
    let pb = sw.add_port(PortKind::Bochs)?;
    let q = NodeSpec::new("q0", Emu::Qemu, Boot::Kernel).cmdline("nodes=2 primary").nic(pq, mac(1));
    let b = NodeSpec::new("b1", Emu::Bochs, Boot::Iso).cmdline("nodes=2").nic(pb, mac(2));
    let mut q = Node::start(&q, &art)?;
    let mut b = Node::start(&b, &art)?;
    b.wait_for("view committed: 2 nodes", BOCHS_BOOT)?;
    q.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    let from_qemu = q.command("ping 1", ANSWER)?;
    assert!(from_qemu.contains("64 bytes from node 1"), "QEMU → Bochs ping:\n{from_qemu}");
    let from_bochs = b.command("ping 0", ANSWER)?;
    assert!(from_bochs.contains("64 bytes from node 0"), "Bochs → QEMU ping:\n{from_bochs}");
    Ok(())
}

#[test]
fn a_node_with_another_cluster_key_is_refused_and_both_sides_say_so() -> Result<(), HarnessError> {
    let art = artifacts();
    let mut sw = Switch::new(23)?;
    let key_b = "key=".to_string() + &"5a".repeat(32);
    let specs = [
        ("good0", "nodes=2 primary".to_string()),
        ("good1", "nodes=2".to_string()),
        ("intruder", format!("nodes=2 {key_b}")),
    ];
    let mut nodes = Vec::new();
    for (i, (name, line)) in specs.iter().enumerate() {
        let port = sw.add_port(PortKind::Qemu)?;
        let spec =
            NodeSpec::new(name, Emu::Qemu, Boot::Kernel).cmdline(line).nic(port, mac(10 + i as u8));
        nodes.push(Node::start(&spec, &art)?);
    }
    // The two good nodes agree without the intruder…
    for n in nodes.iter_mut().take(2) {
        n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    }
    // …each refuses it, and it refuses them: the refusal is logged on both sides.
    for n in nodes.iter_mut() {
        let line = seen_or_wait(n, "failed authentication (wrong cluster key?)")?;
        assert!(line.contains("refused"), "{}: {line}", n.name());
    }
    let intruder = nodes[2].console().text();
    assert!(!intruder.contains("view committed"), "the intruder joined a view:\n{intruder}");
    Ok(())
}

#[test]
fn a_silent_node_is_reported_down_and_back_up_when_the_link_heals() -> Result<(), HarnessError> {
    let mut c = Cluster::start(2, Emu::Qemu, Boot::Kernel, 1, "", &artifacts(), 26)?;
    for n in c.nodes.iter_mut() {
        n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    }
    c.switch.partition(&[&[0], &[1]]);
    // Heartbeats stop crossing: after the peer timeout (3 s) each side names the other.
    c.nodes[0].wait_for("net: node 1 stopped answering", QEMU_BOOT)?;
    c.nodes[1].wait_for("net: node 0 stopped answering", QEMU_BOOT)?;
    c.switch.heal();
    c.nodes[0].wait_for("net: node 1 answers again", QEMU_BOOT)?;
    c.nodes[1].wait_for("net: node 0 answers again", QEMU_BOOT)?;
    let answer = c.nodes[0].command("ping 1", ANSWER)?;
    assert!(answer.contains("64 bytes from node 1"), "{answer}");
    let status = c.nodes[1].command("status", ANSWER)?;
    assert!(status.contains("cluster: node 1 of 2"), "{status}");
    Ok(())
}

#[test]
fn a_link_local_address_already_taken_is_given_up_for_the_next_candidate(
) -> Result<(), HarnessError> {
    use gestalt_netstack::iface::LinkLocal;
    let art = artifacts();
    let mut sw = Switch::new(28)?;
    let auto_mac = mac(50);
    // The first address `ip=auto` would pick for that MAC, held statically by another node.
    let taken = LinkLocal::candidate_for(auto_mac, 0);
    let holder = NodeSpec::new("holder", Emu::Qemu, Boot::Kernel)
        .cmdline(&format!("nodes=2 primary ip={taken}/16"))
        .nic(sw.add_port(PortKind::Qemu)?, mac(51));
    let mut holder = Node::start(&holder, &art)?;
    holder.wait_for(&format!("net: address {taken}/16 (static)"), QEMU_BOOT)?;
    let auto = NodeSpec::new("auto", Emu::Qemu, Boot::Kernel)
        .cmdline("nodes=2")
        .nic(sw.add_port(PortKind::Qemu)?, auto_mac);
    let mut auto = Node::start(&auto, &art)?;
    // QEMU's e1000 delivers nothing for about a second, so the holder's answer may come only
    // after the probes: then the node claims the address, hears the holder, and moves on.
    let next = LinkLocal::candidate_for(auto_mac, 1);
    let line = auto.wait_for(&format!("net: address {next}/16 (link-local)"), QEMU_BOOT)?;
    assert!(!line.contains(&taken.to_string()), "{line}");
    // Both sit in 169.254/16 and form their cluster.
    auto.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    holder.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    Ok(())
}

/// A directory removed when dropped, also when the test fails.
struct OwnDir(std::path::PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gestalt.elf` as another build would be: one byte of the commit text changed, the build id
/// stamped again. Written to a directory of its own under the OS temp dir.
fn another_image() -> Result<(gestalt_ci::Artifacts, OwnDir), HarnessError> {
    let mut bytes = std::fs::read(artifacts().elf()?).expect("gestalt.elf is readable");
    // The ELF32 wrapper puts the flat load image at file offset 0x1000 (docs/contracts.md §1).
    let flat = &mut bytes[0x1000..];
    let info = gestalt_image::info::find(flat).expect("gestalt.elf has an info block");
    flat[info.offset + 88] ^= 0x01; // first character of the commit text
    let stamped = gestalt_image::info::stamp(flat).expect("restamp");
    assert_ne!(stamped.build_id, info.build_id);
    let dir = std::env::temp_dir().join(format!("gestalt-other-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("gestalt.elf"), &bytes).expect("write the other image");
    Ok((gestalt_ci::Artifacts::at(&dir), OwnDir(dir)))
}

#[test]
fn a_node_running_another_image_is_refused_and_the_others_go_on() -> Result<(), HarnessError> {
    let art = artifacts();
    let (other, _dir) = another_image()?;
    let mut sw = Switch::new(27)?;
    let mut nodes = Vec::new();
    for (i, (name, line, image)) in [
        ("same0", "nodes=2 primary", &art),
        ("same1", "nodes=2", &art),
        ("upgraded", "nodes=2", &other),
    ]
    .into_iter()
    .enumerate()
    {
        let port = sw.add_port(PortKind::Qemu)?;
        let spec =
            NodeSpec::new(name, Emu::Qemu, Boot::Kernel).cmdline(line).nic(port, mac(40 + i as u8));
        nodes.push(Node::start(&spec, image)?);
    }
    for n in nodes.iter_mut().take(2) {
        n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    }
    for n in nodes.iter_mut() {
        let line = seen_or_wait(n, "runs another image (build ")?;
        assert!(line.contains("all nodes must boot the same image"), "{}: {line}", n.name());
    }
    let odd = nodes[2].console().text();
    assert!(!odd.contains("view committed"), "the other image joined a view:\n{odd}");
    Ok(())
}

/// Not a pass/fail test: the figures for the closing note and the README. Run with
/// `cargo test -p gestalt-ci --test net_cluster -- --ignored --nocapture netbench_figures`.
#[test]
#[ignore = "a measurement, not a check: run by hand"]
fn netbench_figures() -> Result<(), HarnessError> {
    for line in ["", "mtu=9000"] {
        let mut c = Cluster::start(2, Emu::Qemu, Boot::Kernel, 1, line, &artifacts(), 25)?;
        for n in c.nodes.iter_mut() {
            n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
        }
        let out = c.nodes[0].command("netbench 1", Duration::from_secs(120))?;
        println!(
            "--- netbench, 2 QEMU nodes, {} ---\n{out}",
            if line.is_empty() { "mtu 1500" } else { line }
        );
    }
    Ok(())
}

#[test]
fn a_node_beyond_the_expected_count_is_left_out_says_so_and_stays_out() -> Result<(), HarnessError>
{
    let art = artifacts();
    let mut sw = Switch::new(30)?;
    let mut nodes = Vec::new();
    // nodes=2, three nodes: ids follow the MAC, so the one with the highest MAC is left out.
    for i in 0..3u8 {
        let spec = NodeSpec::new(&format!("m{i}"), Emu::Qemu, Boot::Kernel)
            .cmdline("nodes=2")
            .nic(sw.add_port(PortKind::Qemu)?, mac(70 + i));
        nodes.push(Node::start(&spec, &art)?);
    }
    for n in nodes.iter_mut().take(2) {
        n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    }
    let out = &mut nodes[2];
    let line = out.wait_for("net: left out: node ", QEMU_BOOT)?;
    assert!(line.contains("this node stays out of the cluster"), "{line}");
    let answer = out.command("nodes", ANSWER)?;
    assert!(answer.contains("not a member: a view was committed without this node"), "{answer}");
    let text = out.console().text();
    assert!(!text.contains("view committed"), "the left-out node committed a view:\n{text}");
    // The members see it as late, not as one of them.
    let members = nodes[0].command("nodes", ANSWER)?;
    assert!(members.contains("2 nodes"), "{members}");
    assert!(!members.contains(&gestalt_ci::switch::mac_str(mac(72))), "{members}");
    Ok(())
}

/// An IPv4 broadcast UDP frame to the transport port from a spoofed source: an announcement's
/// magic with a tag that cannot verify, `payload_len` bytes long.
fn spoofed_announcement(i: u32, payload_len: usize) -> Vec<u8> {
    let b = i.to_be_bytes();
    let src_ip = [10, b[1], b[2], b[3]];
    let mut f = Vec::with_capacity(14 + 28 + payload_len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0x5a, b[0], b[1], b[2], b[3]]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&[255; 4]);
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&7470u16.to_be_bytes());
    f.extend_from_slice(&7470u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (RFC 768: allowed over IPv4)
    let mut payload = vec![0u8; payload_len];
    payload[..4].copy_from_slice(&gestalt_netstack::membership::ANNOUNCE_MAGIC.to_be_bytes());
    payload[4] = gestalt_netstack::transport::PROTOCOL_VERSION;
    payload[8..12].copy_from_slice(&1u32.to_be_bytes()); // cluster 1: only the tag is wrong
    payload[12..16].copy_from_slice(&b);
    f.extend_from_slice(&payload);
    f
}

#[test]
fn thousands_of_spoofed_sources_write_a_few_lines_and_the_cluster_keeps_answering(
) -> Result<(), HarnessError> {
    let mut c = Cluster::start(2, Emu::Qemu, Boot::Kernel, 1, "", &artifacts(), 31)?;
    for n in c.nodes.iter_mut() {
        n.wait_for("view committed: 2 nodes", QEMU_BOOT)?;
    }
    // The attacker owns a switch port: it sends raw frames, no emulator behind it.
    let port = c.switch.add_port(PortKind::Qemu)?;
    let sock = std::net::UdpSocket::bind(("127.0.0.1", port.peer_udp)).expect("attacker socket");
    const SOURCES: u32 = 3000;
    for i in 0..SOURCES {
        // This build's announcement length, and the 64 bytes of the first protocol version
        // (a flood need not match the version; a refusal line is what it is after).
        let len = if i % 2 == 0 { gestalt_netstack::membership::ANNOUNCE_LEN } else { 64 };
        sock.send_to(&spoofed_announcement(i, len), ("127.0.0.1", port.switch_udp))
            .expect("attacker send");
        if i % 50 == 49 {
            // Pacing, not waiting: about 5 s of flood, longer than the peer timeout (3 s),
            // and slow enough that the emulated NICs take most of it.
            std::thread::sleep(Duration::from_millis(80));
        }
    }
    // The members still hear each other, during and after the flood.
    let answer = c.nodes[0].command("ping 1", ANSWER)?;
    assert!(answer.contains("64 bytes from node 1"), "{answer}");
    for n in c.nodes.iter_mut() {
        let net = n.command("net", ANSWER)?;
        let text = n.console().text();
        let lines = text.matches("net: refused 10.").count();
        // 8 at once, then one a second.
        assert!(lines <= 40, "{}: {lines} refusal lines for {SOURCES} sources", n.name());
        assert!(!text.contains("stopped answering"), "{}: a peer timed out:\n{text}", n.name());
        // What was not shown is counted.
        let refused = net
            .split(" heard, ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|r| r.parse::<u32>().ok())
            .unwrap_or(0);
        assert!(refused >= SOURCES / 2, "{}: only {refused} refusals counted:\n{net}", n.name());
        assert!(net.contains("over the rate limit"), "{net}");
    }
    Ok(())
}

/// How formation ended on `n`: the committed view's members (`<id> mac <mac>` each), or `None`
/// when the node says it is left out. Waits (polling its console) until one of the two.
fn outcome(n: &Node, timeout: Duration) -> Option<Vec<String>> {
    let end = std::time::Instant::now() + timeout;
    loop {
        let text = n.console().text();
        if text.contains("net: left out: ") {
            return None;
        }
        if let Some(at) = text.find("view committed: ") {
            let count: usize = text[at + 16..]
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .expect("view committed: <n> nodes");
            let members: Vec<String> = text[at..]
                .lines()
                .skip(1)
                .filter_map(|l| l.split("net:   node ").nth(1))
                .map(|m| m.split(' ').take(3).collect::<Vec<_>>().join(" "))
                .take(count)
                .collect();
            if members.len() == count {
                return Some(members);
            }
        }
        assert!(std::time::Instant::now() < end, "{}: no view and not left out:\n{text}", n.name());
        std::thread::sleep(Duration::from_millis(100)); // polling the console for a condition
    }
}

#[test]
fn nodes_booting_seconds_apart_without_nodes_end_with_one_view_or_none() -> Result<(), HarnessError>
{
    let art = artifacts();
    let mut sw = Switch::new(32)?;
    let mut nodes: Vec<Node> = Vec::new();
    // Each boots 4 s after the previous one got its address, and comes earlier in id order
    // (lower MAC) than those already up: the formation timeout (5 s) passes on each at a
    // different time, with a different set of nodes there.
    for i in 0..3u8 {
        if let Some(prev) = nodes.last_mut() {
            prev.wait_for("net: address", QEMU_BOOT)?;
            std::thread::sleep(Duration::from_secs(4)); // the stagger itself: the stimulus
        }
        let spec = NodeSpec::new(&format!("s{i}"), Emu::Qemu, Boot::Kernel)
            .cmdline("")
            .nic(sw.add_port(PortKind::Qemu)?, mac(92 - i));
        nodes.push(Node::start(&spec, &art)?);
    }
    let outcomes: Vec<Option<Vec<String>>> =
        nodes.iter().map(|n| outcome(n, Duration::from_secs(90))).collect();
    eprintln!("outcomes (None: left out): {outcomes:?}");
    let views: Vec<&Vec<String>> = outcomes.iter().flatten().collect();
    assert!(!views.is_empty(), "no node committed a view: {outcomes:?}");
    assert!(views.iter().all(|v| *v == views[0]), "different views committed: {outcomes:?}");
    for (n, o) in nodes.iter().zip(&outcomes) {
        let mac = gestalt_ci::switch::mac_str(mac(92 - n.name()[1..].parse::<u8>().unwrap()));
        let member = views[0].iter().any(|m| m.ends_with(&mac));
        assert_eq!(member, o.is_some(), "{}: member {member}, outcome {o:?}", n.name());
    }
    Ok(())
}

/// The announcements (IPv4/UDP to the transport port, magic `GSTA`) among `frames` that
/// came from `src`.
fn announcements_from(frames: &[Vec<u8>], src: [u8; 6]) -> Vec<Vec<u8>> {
    let magic = gestalt_netstack::membership::ANNOUNCE_MAGIC.to_be_bytes();
    frames
        .iter()
        .filter(|f| f.len() > 46 && f[6..12] == src && f[12..14] == [0x08, 0x00])
        .filter(|f| f[36..38] == 7470u16.to_be_bytes() && f[42..46] == magic)
        .cloned()
        .collect()
}

#[test]
fn announcements_recorded_in_an_earlier_boot_never_make_a_ghost_member() -> Result<(), HarnessError>
{
    let art = artifacts();
    let mut sw = Switch::new(33)?;
    // The attacker's port: it hears what the switch floods (broadcasts) and can send.
    let tap = sw.add_port(PortKind::Qemu)?;
    let sock = std::net::UdpSocket::bind(("127.0.0.1", tap.peer_udp)).expect("tap socket");
    let spec = |sw: &mut Switch, i: u8| -> Result<NodeSpec, HarnessError> {
        let line = if i == 0 { "nodes=3 primary" } else { "nodes=3" };
        Ok(NodeSpec::new(&format!("g{i}"), Emu::Qemu, Boot::Kernel)
            .cmdline(line)
            .nic(sw.add_port(PortKind::Qemu)?, mac(100 + i)))
    };
    // Boot 1: three nodes form a view while the attacker records.
    let mut first = Vec::new();
    for i in 0..3 {
        first.push(Node::start(&spec(&mut sw, i)?, &art)?);
    }
    for n in first.iter_mut() {
        n.wait_for("view committed: 3 nodes", QEMU_BOOT)?;
    }
    drop(first);
    sock.set_nonblocking(true).expect("nonblocking tap");
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        frames.push(buf[..n].to_vec());
    }
    let ghost = announcements_from(&frames, mac(102));
    assert!(!ghost.is_empty(), "recorded nothing from g2 ({} frames)", frames.len());
    // Boot 2: g0 and g1 come back, g2 stays off; the attacker replays g2's announcements.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replay = {
        let (stop, sock, to) = (stop.clone(), sock.try_clone().expect("tap"), tap.switch_udp);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for f in &ghost {
                    let _ = sock.send_to(f, ("127.0.0.1", to));
                }
                std::thread::sleep(Duration::from_millis(100)); // pacing the replay
            }
        })
    };
    let mut second = Vec::new();
    for i in 0..2 {
        second.push(Node::start(&spec(&mut sw, i)?, &art)?);
    }
    // Not a sleep: each node must have found the other, taken many replays (far more
    // announcements heard than g0 and g1 send each other) and run many rounds (sent) before
    // "no view" means anything.
    for (i, n) in second.iter_mut().enumerate() {
        let other = gestalt_ci::switch::mac_str(mac(101 - i as u8));
        n.wait_for(&format!("net: found node {other}"), QEMU_BOOT)?;
        let deadline = std::time::Instant::now() + QEMU_BOOT;
        loop {
            let net = n.command("net", ANSWER)?;
            let count = |label: &str| {
                net.split(label)
                    .next()
                    .and_then(|p| p.rsplit(' ').next())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            if count(" heard, ") >= 500 && count(" announcements sent") >= 60 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}: not enough yet:\n{net}", n.name());
        }
        let nodes = n.command("nodes", ANSWER)?;
        assert!(
            nodes.contains("no view yet: 2 node(s) found so far"),
            "{}: {nodes}\n{}",
            n.name(),
            n.console().text()
        );
        let text = n.console().text();
        assert!(!text.contains("view committed"), "{}: a view with a ghost:\n{text}", n.name());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    replay.join().expect("replay thread");
    // The real g2 boots: one view of the three current boots.
    second.push(Node::start(&spec(&mut sw, 2)?, &art)?);
    for n in second.iter_mut() {
        n.wait_for("view committed: 3 nodes", QEMU_BOOT)?;
    }
    Ok(())
}
