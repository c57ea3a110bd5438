//! The node: the boot sequence that brings every part up in order, then the main loop that
//! serves the console shell (and, as they land, the transport, coherence and vCPUs).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use spin::{Mutex, Once};

use crate::arch::{self, power, smp, time};
use crate::boot::multiboot::{self, BootInfo};
use crate::cmdline::{self, Config};
use crate::console::serial::{self, write_bytes};
use crate::console::shell::{self, Command, Edit, LineEditor, HELP};
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::{self, Region, Regions};
use crate::mem::MIB;
use crate::pci::{self, Size};
use crate::{error, info, kprint, kprintln, warn, PhysRead};

/// Reads identity-mapped physical memory below 4 GiB (mapped by the boot tables and ours).
struct Identity;

impl PhysRead for Identity {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else { return false };
        if end > 1 << 32 {
            return false;
        }
        // SAFETY: [addr, end) is below 4 GiB, identity-mapped; firmware tables and the loader's
        // structures are plain RAM or ROM there.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

/// What the node learnt at boot, for the shell and later layers.
pub struct Node {
    /// Configuration from the command line.
    pub cfg: Config,
    /// What the loader handed over.
    pub boot: BootInfo,
    /// Usable RAM.
    pub usable: Regions,
    /// Hypervisor reserve.
    pub reserve: Regions,
    /// Guest memory pool.
    pub pool: Regions,
    /// Bytes of the heap.
    pub heap_bytes: u64,
    /// CPUs the firmware knows of.
    pub cpus: u32,
    /// PCI functions.
    pub pci: Vec<pci::Device>,
    /// Frames of the reserve not yet handed out.
    pub frames: Mutex<FrameAllocator>,
}

static NODE: Once<Node> = Once::new();

fn halt_with(msg: core::fmt::Arguments<'_>) -> ! {
    error!("{msg}");
    error!("boot: cannot continue; halted");
    power::stop(false)
}

/// The firmware's Rust entry on the bootstrap processor.
pub fn kmain(magic: u32, info_addr: u32) -> ! {
    time::start();
    serial::init();
    let image = crate::info::current();
    info!("boot: {image}");

    let boot = multiboot::parse(magic, u64::from(info_addr), &Identity)
        .unwrap_or_else(|e| halt_with(format_args!("boot: {e}")));

    // Memory: everything usable minus low memory (BIOS data, AP trampoline), the image and
    // the modules; the bottom of the rest is the hypervisor reserve.
    let usable = regions::usable(&boot.mmap);
    let mut holes: heapless::Vec<Region, 24> = heapless::Vec::new();
    let _ = holes.extend_from_slice(&[Region::new(0, 0x10_0000), arch::paging::image_range()]);
    for m in &boot.modules {
        let _ = holes.push(m.range);
    }
    let free = regions::subtract(&usable, &holes);
    let (reserve, pool) = regions::split(&free, regions::reserve_size(regions::total(&free)));
    let mut frames = FrameAllocator::new(&reserve);
    let heap_bytes = (regions::total(&reserve) / 2).min(64 * MIB) / 4096 * 4096;
    let heap = frames
        .alloc(heap_bytes / 4096, 4096)
        .unwrap_or_else(|| halt_with(format_args!("mem: no room for a {heap_bytes}-byte heap")));
    // SAFETY: the range comes from the reserve, handed out once, identity-mapped below 4 GiB.
    unsafe { crate::mem::heap::init(heap, heap_bytes) };

    let (cfg, errors) = cmdline::parse(&boot.cmdline);
    serial::set_level(cfg.log);
    power::TEST_MODE.store(cfg.test.is_some(), Ordering::Relaxed);
    // The cluster key never reaches the console: its fingerprint stands in for it.
    info!("boot: cmdline \"{}\"", crate::net::secrets::redacted_cmdline(&boot.cmdline));
    if !boot.loader.is_empty() {
        info!("boot: loaded by {}", boot.loader);
    }
    for e in &errors {
        error!("cmdline: error: {}", crate::net::secrets::redacted_error(e));
    }
    if boot.truncated {
        warn!("boot: some loader data did not fit and was cut");
    }

    arch::gdt::init_this_cpu();
    arch::idt::init_this_cpu();
    match time::calibrate() {
        Ok(hz) => info!(
            "time: TSC {}.{:03} MHz (calibrated against PIT)",
            hz / 1_000_000,
            hz / 1000 % 1000
        ),
        Err(e) => warn!("time: {e}; uptimes will read 0"),
    }
    let mut brand = [0u8; 48];
    info!(
        "cpu: {}{}",
        arch::cpu::brand(&mut brand),
        if arch::cpu::has_vmx() { ", VMX" } else { "" }
    );
    let vmx_ok = crate::hv::vm::probe();

    // ACPI sits in low memory that our own tables leave unmapped (page 0): read it first.
    let cpus = crate::acpi::find_rsdp(&Identity)
        .ok_or(crate::acpi::AcpiError::NoRsdp)
        .and_then(|r| crate::acpi::find_madt(&Identity, r))
        .and_then(|m| crate::acpi::madt_cpus(&Identity, m));

    let top = usable.last().map_or(0, |r| r.end).max(1 << 32).next_multiple_of(2 * MIB);
    match arch::paging::install(&mut frames, top) {
        Ok(s) => info!(
            "paging: identity map to {:#x}: {} x 1 GiB, {} x 2 MiB, {} x 4 KiB pages",
            top, s.huge, s.large, s.small
        ),
        Err(e) => halt_with(format_args!("paging: {e}")),
    }

    let mode = arch::apic::init_this_cpu();
    info!("apic: {mode}, bsp apic id {}", arch::apic::id());
    let cpus = match cpus {
        Ok(m) if !m.cpus.is_empty() => {
            if m.beyond > 0 {
                warn!(
                    "smp: the MADT lists {} more processors than the {} this build runs; they stay offline",
                    m.beyond,
                    crate::acpi::MAX_CPUS
                );
            }
            m.cpus
        }
        Ok(_) => {
            warn!("smp: the MADT lists no processor; running on the boot CPU only");
            heapless::Vec::new()
        }
        Err(e) => {
            warn!("smp: {e}; running on the boot CPU only");
            heapless::Vec::new()
        }
    };
    let total = (cpus.len() as u32).max(1);
    smp::start_aps(&cpus);
    info!("smp: {}/{} cores online", smp::ONLINE.load(Ordering::SeqCst), total);

    let devices = pci::config::enumerate();
    for d in &devices {
        info!("pci: {d}");
        for (i, b) in d.bars.iter().enumerate() {
            if let Some(b) = b {
                info!("pci:   bar{i} {b}");
            }
        }
    }

    info!(
        "mem: {} MiB usable; hypervisor reserve {} MiB, guest pool {} MiB",
        regions::total(&usable) / MIB,
        regions::total(&reserve) / MIB,
        regions::total(&pool) / MIB
    );
    let node = NODE.call_once(|| Node {
        cfg,
        boot,
        usable,
        reserve,
        pool,
        heap_bytes,
        cpus: total,
        pci: devices,
        frames: Mutex::new(frames),
    });

    let net = match crate::net::nic::probe(
        &node.pci,
        crate::net::hal::FwHal::new(&node.frames),
        node.cfg.jumbo,
    ) {
        Ok(mut nic) => {
            info!(
                "net: {} at {} mac {} link {} mtu {}",
                nic.name,
                nic.bdf,
                gestalt_netstack::formation::Mac(nic.dev.mac()),
                if nic.dev.link_up() { "up" } else { "down" },
                nic.dev.mtu()
            );
            if node.cfg.jumbo && nic.dev.mtu() < 9000 {
                warn!(
                    "net: mtu=9000 asked but {} runs at mtu {}: every node of a cluster must use the same MTU",
                    nic.name,
                    nic.dev.mtu()
                );
            }
            let cores = u16::try_from(total).unwrap_or(u16::MAX);
            // What this node can hold of a guest: whole 2 MiB chunks of its pool, up to mem=.
            let holds =
                crate::hv::memory::capacity(&node.pool).min(node.cfg.mem.unwrap_or(u64::MAX));
            Some(crate::net::stack::NodeNet::new(nic.dev, &node.cfg, cores, holds))
        }
        Err(e) => {
            warn!("net: {e}; this node runs alone");
            None
        }
    };

    let mut guest = guest_plan(node, vmx_ok);
    if net.is_none() {
        if let Some(g) = guest.take() {
            let aps = crate::hv::sched::registered_aps();
            let shape = crate::hv::sched::alone(
                aps.len(),
                crate::hv::memory::capacity(&node.pool),
                node.cfg.mem,
            );
            start_guest(node, &g, shape, 0, &aps);
        }
    } else if guest.is_some() {
        info!("hv: the guest starts once the view is committed");
    }
    if let Some(t) = node.cfg.test {
        run_test(t, guest.is_some());
    }
    shell_loop(node, net, guest)
}

/// The guest this node will run its share of: the first boot module (docs/contracts.md §4
/// `guest=`), which only the primary loads; the others serve their share without it.
struct GuestPlan {
    image: &'static [u8],
    /// The second module: a Linux guest's initrd (empty when none).
    initrd: &'static [u8],
    cmdline: &'static str,
    test: Option<&'static str>,
}

fn guest_plan(node: &'static Node, vmx_ok: bool) -> Option<GuestPlan> {
    let m = node.boot.modules.first();
    if !node.cfg.guest {
        if let Some(m) = m {
            info!("hv: guest=off: module '{}' not started", m.cmdline);
        }
        return None;
    }
    if !vmx_ok {
        return None;
    }
    let test = node.cfg.test.filter(|t| t.starts_with("vmx"));
    Some(match m {
        Some(m) => GuestPlan {
            // SAFETY: a module range the loader reported; excluded from every allocator,
            // identity-mapped.
            image: unsafe { crate::hv::vm::module_bytes(m.range) },
            // SAFETY: as for the first module.
            initrd: node
                .boot
                .modules
                .get(1)
                .map_or(&[][..], |m| unsafe { crate::hv::vm::module_bytes(m.range) }),
            cmdline: m.cmdline.as_str(),
            test,
        },
        None => GuestPlan { image: &[], initrd: &[], cmdline: "", test },
    })
}

fn start_guest(
    node: &'static Node,
    g: &GuestPlan,
    shape: crate::hv::cluster::Shape,
    me: u16,
    aps: &[(usize, u32)],
) {
    if me == 0 && g.image.is_empty() {
        error!("hv: no guest module on the primary: no guest runs");
        return;
    }
    let (frames, pool) = (&node.frames, &node.pool);
    crate::hv::vm::set_dilation(node.cfg.dilation);
    let r =
        crate::hv::vm::start(frames, pool, g.image, g.initrd, g.cmdline, g.test, shape, me, aps);
    match r {
        Ok(_) => {
            if let Some(us) = node.cfg.hold_us {
                crate::hv::vm::set_hold_us(us);
            }
            match (node.cfg.tsc_skew, g.test) {
                (Some(t), Some(_)) => crate::hv::vm::skew_for_test(t),
                (Some(_), None) => error!("hv: tscskew= is a test hook: ignored without test="),
                _ => {}
            }
        }
        Err(e) => error!("hv: cannot start the guest: {e}"),
    }
}

/// Once the view is committed, this node starts its share of the guest the view shapes.
fn start_guest_in_view(
    node: &'static Node,
    g: &GuestPlan,
    view: &gestalt_netstack::formation::View,
) {
    let members: Vec<crate::hv::cluster::Member> = view
        .members
        .iter()
        .map(|m| crate::hv::cluster::Member {
            node: m.id,
            cores: u32::from(m.announce.cores),
            pool: m.announce.memory_bytes,
        })
        .collect();
    match crate::hv::cluster::Shape::new(&members, u64::MAX) {
        Ok(shape) => {
            let aps = crate::hv::sched::registered_aps();
            start_guest(node, g, shape, view.me, &aps);
        }
        Err(e) => error!("hv: no guest for this view: {e}"),
    }
}

fn run_test(name: &str, guest_waits_for_view: bool) {
    info!("test: {name} starting");
    match name {
        "boot" => {
            info!("test: boot PASS");
            power::exit_emulator(true)
        }
        "pagefault" => {
            // Canonical, far above anything mapped: the #PF diagnostic must name it in CR2.
            let bad = 0x0000_4000_0000_0000 as *const u64;
            // SAFETY: deliberately unsound: this test exists to fault.
            let v = unsafe { core::ptr::read_volatile(bad) };
            error!("test: pagefault FAIL read {v:#x} without a fault");
            power::exit_emulator(false)
        }
        // The network loop runs it once the view is committed; the node keeps serving its
        // peers afterwards (they may still need its acknowledgements).
        "mesh" => {}
        "vmx" | "vmx-fault" => {
            // The guest decides: the hypervisor prints the verdict when it stops.
            if !guest_waits_for_view && crate::hv::vm::status() != "guest running" {
                error!("test: {name} FAIL {}", crate::hv::vm::status());
                power::exit_emulator(false)
            }
        }
        other => {
            error!("test: {other} FAIL no such test");
            power::exit_emulator(false)
        }
    }
}

/// Where application processors wait for work.
pub fn ap_idle(index: usize) -> ! {
    crate::hv::vm::ap_register(index);
    loop {
        // Interrupts off while checking the mailbox: a wake IPI then ends the HLT below.
        x86_64::instructions::interrupts::disable();
        crate::hv::vm::ap_poll(index);
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

const PROMPT: &[u8] = b"gestalt> ";
/// Quiet time after which the node loop sleeps between polls.
const IDLE_AFTER_US: u64 = 20_000;

fn shell_loop(
    node: &'static Node,
    mut net: Option<crate::net::stack::NodeNet>,
    mut guest: Option<GuestPlan>,
) -> ! {
    if let Err(e) = arch::idle::init() {
        warn!("idle: {e}; this node polls without sleeping");
    }
    info!("shell: ready");
    write_bytes(PROMPT);
    let mut ed = LineEditor::default();
    let mut last_busy = time::uptime_us();
    loop {
        let mut busy = crate::hv::vm::bsp_slice();
        if let Some(n) = net.as_mut() {
            let before = n.activity();
            n.poll();
            busy |= n.activity() != before;
            if let Some(view) = n.view().filter(|_| guest.is_some()) {
                let view = view.clone();
                if let Some(g) = guest.take() {
                    start_guest_in_view(node, &g, &view);
                }
            }
        }
        busy |= crate::hv::vm::has_outgoing() || serial::has_pending_output();
        let now = time::uptime_us();
        if busy {
            last_busy = now;
        }
        let Some(b) = serial::try_read() else {
            // Nothing for a while: sleep until the tick or a core that hands us work. While
            // traffic flows (a remote fault's reply is due) the loop keeps polling.
            if now.saturating_sub(last_busy) > IDLE_AFTER_US {
                arch::idle::sleep();
            } else {
                core::hint::spin_loop();
            }
            continue;
        };
        last_busy = now;
        if crate::hv::vm::console_input(b) {
            continue;
        }
        match ed.feed(b) {
            Edit::Echo(s) => write_bytes(s),
            Edit::EchoByte(c) => write_bytes(&[c]),
            Edit::None => {}
            Edit::Line => {
                write_bytes(b"\r\n");
                run(node, net.as_mut(), ed.line());
                ed.clear();
                write_bytes(PROMPT);
            }
        }
    }
}

fn run(node: &Node, net: Option<&mut crate::net::stack::NodeNet>, line: &str) {
    let cmd = match shell::parse(line, shell::NODE_COMMANDS) {
        Ok(c) => c,
        Err(e) => {
            kprintln!("{e}");
            return;
        }
    };
    match cmd {
        Command::Empty => {}
        Command::Help => {
            for (c, what) in HELP {
                kprintln!("  {c:<36} {what}");
            }
        }
        Command::Version => kprintln!("{}", crate::info::current()),
        Command::Status => {
            let us = time::uptime_us();
            kprintln!("uptime {}.{:06} s", us / 1_000_000, us % 1_000_000);
            kprintln!("cores {} online of {}", smp::ONLINE.load(Ordering::SeqCst), node.cpus);
            kprintln!(
                "memory {} MiB usable: hypervisor reserve {} MiB, guest pool {} MiB",
                regions::total(&node.usable) / MIB,
                regions::total(&node.reserve) / MIB,
                regions::total(&node.pool) / MIB
            );
            kprintln!("tsc {} Hz, log level {}", time::tsc_hz(), serial::level().name());
            match arch::idle::asleep_per_mille() {
                Some(pm) => kprintln!(
                    "idle: the boot CPU slept {}.{}% of the time since the shell started",
                    pm / 10,
                    pm % 10
                ),
                None => kprintln!("idle: the boot CPU never sleeps (no tick)"),
            }
            match net.as_ref().map(|n| (n.view(), n.left_out())) {
                None => kprintln!("cluster: no network"),
                Some((None, true)) => {
                    kprintln!("cluster: left out: a view was committed without this node");
                }
                Some((None, false)) => kprintln!("cluster: forming (see 'nodes')"),
                Some((Some(v), _)) => kprintln!(
                    "cluster: node {} of {}, {} cores and {} MiB in all",
                    v.me,
                    v.members.len(),
                    v.cores(),
                    v.memory() >> 20
                ),
            }
        }
        Command::Mem => {
            for (name, list) in
                [("usable", &node.usable), ("reserve", &node.reserve), ("pool", &node.pool)]
            {
                kprintln!("{name}: {}", Size(regions::total(list)));
                for r in list.iter() {
                    kprintln!("  {:#014x}-{:#014x} {}", r.start, r.end, Size(r.len()));
                }
            }
            let (used, free) = crate::mem::heap::usage();
            kprintln!(
                "heap: {} used, {} free of {}",
                Size(used as u64),
                Size(free as u64),
                Size(node.heap_bytes)
            );
            let f = node.frames.lock();
            kprintln!(
                "frames: {} handed out, {} left in the reserve",
                Size(f.used()),
                Size(f.remaining())
            );
            for m in &node.boot.modules {
                kprintln!("module: {:#x}-{:#x} {}", m.range.start, m.range.end, m.cmdline);
            }
        }
        Command::Pci => {
            for d in &node.pci {
                kprintln!("{d}");
                for (i, b) in d.bars.iter().enumerate() {
                    if let Some(b) = b {
                        kprintln!("    bar{i} {b}");
                    }
                }
            }
        }
        Command::LogShow => kprintln!("log level {}", serial::level().name()),
        Command::LogSet(l) => {
            serial::set_level(l);
            kprintln!("log level {}", l.name());
        }
        Command::Reboot => {
            kprintln!("rebooting");
            power::reboot()
        }
        Command::Poweroff => {
            kprintln!("powering off");
            power::poweroff()
        }
        Command::Other(c @ ("net" | "nodes" | "ping" | "netbench"), args) => match net {
            None => kprintln!("{c}: no network on this node (no supported NIC)"),
            Some(n) => match c {
                "net" => n.print_status(),
                "nodes" => n.print_nodes(),
                "ping" => n.ping(args),
                _ => n.netbench(args),
            },
        },
        Command::Other("vcpu", _) => crate::hv::vm::print_vcpus(),
        Command::Other("stats", "") => crate::hv::vm::print_stats(false),
        Command::Other("stats", "reset") => crate::hv::vm::print_stats(true),
        Command::Other("stats", _) => kprintln!("usage: stats [reset]"),
        Command::Other(c, _) => kprint!("'{c}' is not available on this node\n"),
    }
}

/// Prints the panic and stops (or ends the emulator in test mode).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let us = time::uptime_us();
    serial::print_forced(format_args!(
        "[{:5}.{:06}] ERROR panic: {} at {}:{}\n",
        us / 1_000_000,
        us % 1_000_000,
        info.message(),
        info.location().map_or("?", |l| l.file()),
        info.location().map_or(0, core::panic::Location::line),
    ));
    power::stop(false)
}
