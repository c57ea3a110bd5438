//! The dispatch driven by a scripted backend and a machine over plain memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::vec::Vec;

use super::*;
use crate::hv::devices::{Devices, PortEffect, DEBUG_EXIT_PORT};

/// A backend that replays exits and records what the dispatch asked of it.
#[derive(Default)]
struct FakeVcpu {
    exits: VecDeque<Exit>,
    regs: Regs,
    rip: u64,
    if_set: bool,
    injected: Vec<u8>,
    nmis: u32,
    nmi_blocked: bool,
    exceptions: Vec<(u8, Option<u32>)>,
    window: bool,
    flushes: u32,
    efer: Option<u64>,
    pat: Option<u64>,
    sipi: Option<u8>,
    protected: Option<u32>,
    broken: Option<Breakage>,
    slice: u64,
    xcr0: Option<u64>,
    tsc_offset: u64,
    tsc_loads: u32,
    /// EFER.LMA as the CPU set it (after CR0.PG with LME).
    lma: bool,
    /// Runs 64-bit code with paging (CR3 below) instead of the default flat state.
    long_mode_cr3: Option<u64>,
}

impl FakeVcpu {
    fn with(exits: &[Exit]) -> FakeVcpu {
        FakeVcpu { exits: exits.iter().copied().collect(), if_set: true, ..FakeVcpu::default() }
    }
}

impl Vcpu for FakeVcpu {
    fn run(&mut self) -> Exit {
        self.exits.pop_front().expect("the test scripted no more exits")
    }
    fn regs(&mut self) -> &mut Regs {
        &mut self.regs
    }
    fn skip_instruction(&mut self) {
        self.rip += 1;
    }
    fn advance_rip(&mut self, len: u64) {
        self.rip += len;
    }
    fn snapshot(&self) -> Snapshot {
        let efer = self.efer.unwrap_or(0) | if self.lma { 1 << 10 } else { 0 };
        match self.long_mode_cr3 {
            Some(cr3) => Snapshot {
                rip: self.rip,
                efer: efer | (1 << 8) | (1 << 10),
                cr0: (1 << 31) | 1,
                cr3,
                cr4: 1 << 5,
                cs: (0x10, 0, u32::MAX, 1 << 13),
                ..Snapshot::default()
            },
            None => Snapshot { rip: self.rip, efer, ..Snapshot::default() },
        }
    }
    fn interruptible(&self) -> bool {
        self.if_set
    }
    fn inject_interrupt(&mut self, vector: u8) {
        self.injected.push(vector);
    }
    fn nmi_allowed(&self) -> bool {
        !self.nmi_blocked
    }
    fn inject_nmi(&mut self) {
        self.nmis += 1;
    }
    fn set_interrupt_window(&mut self, on: bool) {
        self.window = on;
    }
    fn set_time_slice(&mut self, tsc_ticks: u64) {
        self.slice = tsc_ticks;
    }
    fn set_efer(&mut self, efer: u64) {
        self.efer = Some(efer);
    }
    fn set_pat(&mut self, pat: u64) {
        self.pat = Some(pat);
    }
    fn set_cr(&mut self, _cr: u8, _val: u64) {}
    fn enter_protected_mode(&mut self, eip: u32) {
        self.protected = Some(eip);
    }
    fn enter_sipi(&mut self, vector: u8) {
        self.sipi = Some(vector);
    }
    fn flush_nested(&mut self) {
        self.flushes += 1;
    }
    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        self.exceptions.push((vector, error));
    }
    fn break_for_test(&mut self, what: Breakage) {
        self.broken = Some(what);
    }
    fn set_xcr0(&mut self, value: u64) {
        self.xcr0 = Some(value);
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
        self.tsc_loads += 1;
    }
}

/// A guest of `n` vCPUs with RAM `0..ram` and the real port devices.
struct FakeMachine {
    shared: Vec<vlapic::Shared>,
    stats: Vec<VcpuStats>,
    verdict: RefCell<Option<Verdict>>,
    kicks: RefCell<Vec<usize>>,
    now: Cell<u64>,
    tsc_offset: Cell<u64>,
    devices: RefCell<Devices>,
    lines: RefCell<Vec<Vec<u8>>>,
    ram: u64,
    test: bool,
    protected: RefCell<Vec<(u64, u64)>>,
    fault: Cell<Fault>,
    generation: Cell<u64>,
    in_guest: Cell<bool>,
    flushed_gen: Cell<u64>,
    resumed: Cell<bool>,
    /// Port reads go elsewhere (None from `port`); the answer waits here.
    ports_elsewhere: Cell<bool>,
    port_reply: Cell<Option<u64>>,
    fatal: RefCell<Vec<String>>,
    /// Guest RAM bytes the MMIO path reads (page tables, instructions).
    guest: RefCell<std::collections::BTreeMap<u64, u8>>,
}

impl FakeMachine {
    fn new(n: usize) -> FakeMachine {
        FakeMachine {
            shared: (0..n).map(|_| vlapic::Shared::NEW).collect(),
            stats: (0..n).map(|_| VcpuStats::NEW).collect(),
            verdict: RefCell::new(None),
            kicks: RefCell::new(Vec::new()),
            now: Cell::new(1000),
            tsc_offset: Cell::new(0),
            devices: RefCell::new(Devices::default()),
            lines: RefCell::new(Vec::new()),
            ram: 16 << 20,
            test: false,
            protected: RefCell::new(Vec::new()),
            fault: Cell::new(Fault::Mapped),
            generation: Cell::new(0),
            in_guest: Cell::new(false),
            flushed_gen: Cell::new(0),
            resumed: Cell::new(false),
            ports_elsewhere: Cell::new(false),
            port_reply: Cell::new(None),
            fatal: RefCell::new(Vec::new()),
            guest: RefCell::new(std::collections::BTreeMap::new()),
        }
    }

    fn put(&self, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.guest.borrow_mut().insert(gpa + i as u64, *b);
        }
    }

    fn verdict(&self) -> Option<Verdict> {
        *self.verdict.borrow()
    }
}

impl Machine for FakeMachine {
    fn is_mmio(&self, gpa: u64) -> bool {
        gpa & !0xfff == crate::hv::acpi::IOAPIC_GPA
    }
    fn mmio_read(&self, _vcpu: usize, gpa: u64, _size: u8) -> Option<u64> {
        if self.ports_elsewhere.get() {
            return None;
        }
        Some(u64::from(self.devices.borrow().ioapic.read(gpa & 0xfff)))
    }
    fn mmio_write(&self, _vcpu: usize, gpa: u64, _size: u8, value: u64) {
        self.devices.borrow_mut().ioapic.write(gpa & 0xfff, value as u32);
    }
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let g = self.guest.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            match g.get(&(gpa + i as u64)) {
                Some(v) => *b = *v,
                None => return false,
            }
        }
        true
    }
    fn vcpus(&self) -> u32 {
        self.shared.len() as u32
    }
    fn shared(&self, vcpu: usize) -> &vlapic::Shared {
        &self.shared[vcpu]
    }
    fn stats(&self, vcpu: usize) -> &VcpuStats {
        &self.stats[vcpu]
    }
    fn stopped(&self) -> bool {
        self.verdict.borrow().is_some()
    }
    fn stop(&self, _vcpu: usize, verdict: Verdict) {
        self.verdict.borrow_mut().get_or_insert(verdict);
    }
    fn kick(&self, vcpu: usize) {
        self.kicks.borrow_mut().push(vcpu);
    }
    fn ipi(&self, from: usize, to: usize, kind: IpiKind) {
        deliver_ipi(&self.shared[to], kind);
        if to != from {
            self.kick(to);
        }
    }
    fn node(&self) -> u16 {
        3
    }
    fn now(&self) -> u64 {
        self.now.get()
    }
    fn tsc_offset(&self) -> u64 {
        self.tsc_offset.get()
    }
    fn tsc_hz(&self) -> u64 {
        1_000_000_000
    }
    fn host_cpuid(&self, leaf: u32, _sub: u32) -> Regs4 {
        match leaf {
            // XSAVE components x87, SSE, AVX.
            0xD => Regs4 { eax: 0b111, ebx: 0, ecx: 0, edx: 0 },
            _ => Regs4 { eax: 1, ebx: 2, ecx: 3, edx: 4 },
        }
    }
    fn port(&self, _vcpu: usize, port: u16, size: u8, dir: IoDir, value: u32) -> Option<u32> {
        if self.ports_elsewhere.get() && dir == IoDir::In {
            return None;
        }
        let (v, effect) = self.devices.borrow_mut().access(port, size, dir, value);
        match effect {
            PortEffect::None => {}
            PortEffect::Line(l) => self.lines.borrow_mut().push(l.to_vec()),
            PortEffect::Exit(code) => self.stop(0, Verdict::Exit(code)),
            PortEffect::PowerOff => self.stop(0, Verdict::Exit(0)),
            PortEffect::Reset => self.stop(0, Verdict::Fatal("reset")),
        }
        Some(v)
    }
    fn take_device_reply(&self, _vcpu: usize) -> Option<u64> {
        self.port_reply.take()
    }
    fn nested_fault(&self, _vcpu: usize, _gpa: u64, _write: bool, _exec: bool) -> Fault {
        self.fault.get()
    }
    fn entering(&self, _vcpu: usize) -> u64 {
        self.in_guest.set(true);
        self.generation.get()
    }
    fn flushed(&self, _vcpu: usize, generation: u64) {
        self.flushed_gen.set(generation);
    }
    fn left(&self, _vcpu: usize) {
        self.in_guest.set(false);
    }
    fn take_resume(&self, _vcpu: usize) -> bool {
        self.resumed.replace(false)
    }
    fn faults(&self) -> u64 {
        7
    }
    fn test_hooks(&self) -> bool {
        self.test
    }
    fn protect(&self, gpa: u64, rights: u64) -> bool {
        if gpa >= self.ram {
            return false;
        }
        self.protected.borrow_mut().push((gpa, rights));
        true
    }
    fn take_host_interrupt(&self) {}
    fn report_fatal(&self, _vcpu: usize, what: &str, _e: &Exit, _s: &Snapshot, _r: &Regs) {
        self.fatal.borrow_mut().push(what.into());
    }
}

fn boot(m: &FakeMachine, exits: &[Exit]) -> Runner<FakeVcpu> {
    let start = Start::ProtectedMode { eip: 0x10_0000, rax: 0x2BAD_B002, rbx: 0x9000, rsi: 0 };
    Runner::new(m, FakeVcpu::with(exits), 0, 0, start)
}

fn run_all(r: &mut Runner<FakeVcpu>, m: &FakeMachine) -> Vec<Step> {
    let mut steps = Vec::new();
    while !r.v.exits.is_empty() {
        steps.push(r.step(m, u64::MAX));
    }
    steps
}

#[test]
fn the_boot_vcpu_enters_its_kernel_with_the_multiboot_registers() {
    let m = FakeMachine::new(1);
    let r = boot(&m, &[]);
    assert_eq!(r.v.protected, Some(0x10_0000));
    assert_eq!((r.v.regs.rax, r.v.regs.rbx), (0x2BAD_B002, 0x9000));
    assert_eq!(r.state(), State::Running);
}

#[test]
fn cpuid_answers_in_the_registers_and_moves_past_the_instruction() {
    let m = FakeMachine::new(2);
    let mut r = boot(&m, &[Exit::Cpuid { leaf: 0x4000_0000, sub: 0 }]);
    assert_eq!(run_all(&mut r, &m), [Step::Continue]);
    assert_eq!(r.v.rip, 1);
    let sig = cpuid::SIGNATURE;
    assert_eq!(r.v.regs.rbx as u32, u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]));
}

#[test]
fn an_unknown_msr_read_raises_gp_without_skipping() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Msr { msr: 0x1234, write: None }]);
    run_all(&mut r, &m);
    assert_eq!(r.v.exceptions, [(13, Some(0))]);
    assert_eq!(r.v.rip, 0);
}

#[test]
fn an_efer_write_reaches_the_backend_and_reads_back() {
    let m = FakeMachine::new(1);
    let mut r = boot(
        &m,
        &[
            Exit::Msr { msr: 0xC000_0080, write: Some(0x100) },
            Exit::Msr { msr: 0xC000_0080, write: None },
        ],
    );
    run_all(&mut r, &m);
    assert_eq!(r.v.efer, Some(0x100));
    assert_eq!(r.v.regs.rax, 0x100);
    assert_eq!(r.v.rip, 2);
}

#[test]
fn a_pat_write_reaches_the_backend_and_a_reserved_memory_type_does_not() {
    // Linux's PAT (WB, WC, UC-, UC, WB, WP, UC-, WT), then one with reserved type 2.
    let linux = 0x0407_0506_0007_0106;
    let m = FakeMachine::new(1);
    let mut r = boot(
        &m,
        &[
            Exit::Msr { msr: 0x277, write: Some(linux) },
            Exit::Msr { msr: 0x277, write: Some(0x0407_0506_0007_0102) },
            Exit::Msr { msr: 0x277, write: None },
        ],
    );
    run_all(&mut r, &m);
    assert_eq!(r.v.pat, Some(linux), "the CPU's page walks must use the guest's PAT");
    assert_eq!(r.v.exceptions, [(13, Some(0))], "type 2 is reserved: #GP");
    assert_eq!(r.v.regs.rax, linux & 0xffff_ffff);
    assert_eq!(r.v.regs.rdx, linux >> 32);
}

#[test]
fn an_efer_read_in_long_mode_shows_lma_and_unknown_msrs_are_counted() {
    let m = FakeMachine::new(1);
    let mut r = boot(
        &m,
        &[
            Exit::Msr { msr: 0xC000_0080, write: Some(0x100) },
            Exit::Msr { msr: 0xC000_0080, write: None },
            Exit::Msr { msr: 0x179, write: Some(1) },
        ],
    );
    r.v.lma = true;
    run_all(&mut r, &m);
    assert_eq!(r.v.regs.rax, 0x500, "LME and LMA");
    assert_eq!(r.v.exceptions, [(13, Some(0))], "MCG_CAP is not modelled: #GP on write");
    assert_eq!(m.stats(0).msr_gp.load(Ordering::Relaxed), 1);
    assert_eq!(m.stats(0).last_msr_gp.load(Ordering::Relaxed), 0x179);
}

#[test]
fn the_tsc_msr_reads_the_machine_time() {
    let m = FakeMachine::new(1);
    m.now.set(0x1_2345_6789);
    let mut r = boot(&m, &[Exit::Msr { msr: 0x10, write: None }]);
    run_all(&mut r, &m);
    assert_eq!((r.v.regs.rdx, r.v.regs.rax), (1, 0x2345_6789));
}

#[test]
fn a_write_to_the_debug_port_ends_the_guest_with_its_code() {
    let m = FakeMachine::new(1);
    let mut r =
        boot(&m, &[Exit::Io { port: DEBUG_EXIT_PORT, size: 1, dir: IoDir::Out, string: false }]);
    r.v.regs.rax = 0x1_0042; // only the low byte is the access
    assert_eq!(run_all(&mut r, &m), [Step::Stopped]);
    assert_eq!(m.verdict(), Some(Verdict::Exit(0x42)));
    assert_eq!(r.state(), State::Stopped);
}

#[test]
fn a_port_read_replaces_only_the_bytes_of_its_size() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Io { port: 0x40, size: 2, dir: IoDir::In, string: false }]);
    r.v.regs.rax = 0xdead_0000_1234_5678;
    run_all(&mut r, &m);
    assert_eq!(r.v.regs.rax, 0xdead_0000_1234_ffff);
}

#[test]
fn a_port_read_answered_elsewhere_parks_the_vcpu_and_retires_with_the_answer() {
    let m = FakeMachine::new(1);
    m.ports_elsewhere.set(true);
    let mut r = boot(
        &m,
        &[Exit::Io { port: 0x3fd, size: 1, dir: IoDir::In, string: false }, Exit::Preempted],
    );
    r.v.regs.rax = 0x1234_5678;
    let rip = r.v.rip;
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(m.stats[0].state(), State::WaitDevice);
    assert_eq!(r.v.rip, rip, "not retired while the answer is away");
    // Parked: no entry until the answer comes, even with an interrupt pending.
    r.apic.write(&m.shared[0], 0x80F, 0x1FF, 0).unwrap();
    m.shared[0].raise(0x40);
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.v.exits.len(), 1);
    assert!(r.v.injected.is_empty());
    m.port_reply.set(Some(0x60));
    assert_eq!(r.step(&m, u64::MAX), Step::Yield);
    assert_eq!(r.v.regs.rax, 0x1234_5660, "only the low byte");
    assert_eq!(r.v.rip, rip + 1, "retired before the interrupt is taken");
    assert_eq!(r.v.injected, [0x40]);
    assert_eq!(r.state(), State::Running);
}

#[test]
fn string_port_io_stops_the_guest_with_a_reason() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Io { port: 0x3f8, size: 1, dir: IoDir::Out, string: true }]);
    assert_eq!(run_all(&mut r, &m), [Step::Stopped]);
    assert_eq!(m.verdict(), Some(Verdict::Fatal("string port I/O is not emulated")));
    assert_eq!(m.fatal.borrow().len(), 1);
}

#[test]
fn hlt_without_a_pending_interrupt_parks_the_vcpu_until_one_arrives() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hlt, Exit::Hlt]);
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.state(), State::Halted);
    // Nothing pending: the next step does not enter the guest.
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.v.exits.len(), 1);
    // Enable the virtual APIC (SVR bit 8) so the raised vector is deliverable.
    r.apic.write(&m.shared[0], 0x80F, 0x1FF, 0).unwrap();
    m.shared[0].raise(0x40);
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.v.injected, [0x40]);
}

#[test]
fn a_page_that_is_on_its_way_parks_the_vcpu_without_entering_until_it_is_resumed() {
    let m = FakeMachine::new(1);
    m.fault.set(Fault::Wait);
    let mut r = boot(
        &m,
        &[
            Exit::NestedPageFault { gpa: 0x5000, write: true, exec: false, present: false },
            Exit::Hypercall { nr: hypercall::NOP },
        ],
    );
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.state(), State::WaitPage);
    assert_eq!(m.stats[0].state(), State::WaitPage);
    // Parked: steps do not enter the guest.
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.v.exits.len(), 1);
    m.resumed.set(true);
    assert_eq!(r.step(&m, u64::MAX), Step::Continue);
    assert!(r.v.exits.is_empty(), "resumed, it retried the access");
    assert_eq!(r.state(), State::Running);
    assert_eq!(m.verdict(), None);
}

#[test]
fn a_vcpu_is_marked_in_the_guest_only_while_it_runs_there_and_after_flushing() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hypercall { nr: hypercall::NOP }]);
    m.generation.set(3);
    r.step(&m, u64::MAX);
    assert!(!m.in_guest.get());
    assert_eq!(m.flushed_gen.get(), 3);
    assert_eq!(r.v.flushes, 1);
}

#[test]
fn a_denied_page_fault_stops_the_guest_with_the_reason() {
    let m = FakeMachine::new(1);
    m.fault.set(Fault::Deny("EPT violation outside guest memory (denied)"));
    let mut r = boot(
        &m,
        &[Exit::NestedPageFault { gpa: 1 << 40, write: false, exec: false, present: false }],
    );
    assert_eq!(run_all(&mut r, &m), [Step::Stopped]);
    assert_eq!(m.verdict(), Some(Verdict::Fatal("EPT violation outside guest memory (denied)")));
}

#[test]
fn test_hypercalls_do_nothing_outside_test_mode() {
    let m = FakeMachine::new(1);
    let mut r = boot(
        &m,
        &[Exit::Hypercall { nr: hypercall::PROTECT }, Exit::Hypercall { nr: hypercall::BREAK }],
    );
    r.v.regs.rbx = 0x5000;
    r.v.regs.rcx = 1;
    assert_eq!(r.step(&m, u64::MAX), Step::Continue);
    assert_eq!(r.v.regs.rax, u64::MAX);
    r.v.regs.rbx = 0;
    assert_eq!(r.step(&m, u64::MAX), Step::Continue);
    assert_eq!(r.v.regs.rax, u64::MAX);
    assert!(m.protected.borrow().is_empty());
    assert_eq!(r.v.broken, None);
}

#[test]
fn protect_in_test_mode_changes_guest_ram_only() {
    let mut m = FakeMachine::new(1);
    m.test = true;
    let mut r = boot(
        &m,
        &[Exit::Hypercall { nr: hypercall::PROTECT }, Exit::Hypercall { nr: hypercall::PROTECT }],
    );
    (r.v.regs.rbx, r.v.regs.rcx) = (0x5123, 0xff);
    r.step(&m, u64::MAX);
    assert_eq!(r.v.regs.rax, 0);
    (r.v.regs.rbx, r.v.regs.rcx) = (1 << 40, 1);
    r.step(&m, u64::MAX);
    assert_eq!(r.v.regs.rax, u64::MAX);
    assert_eq!(*m.protected.borrow(), [(0x5000, 7)]);
}

#[test]
fn the_exit_hypercall_ends_the_guest_with_rbx() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hypercall { nr: hypercall::EXIT }]);
    r.v.regs.rbx = 5;
    assert_eq!(run_all(&mut r, &m), [Step::Stopped]);
    assert_eq!(m.verdict(), Some(Verdict::Exit(5)));
}

#[test]
fn an_unknown_hypercall_returns_all_ones() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hypercall { nr: 999 }]);
    run_all(&mut r, &m);
    assert_eq!(r.v.regs.rax, u64::MAX);
    assert_eq!(r.v.rip, 1);
}

/// x2APIC ICR (SDM Vol. 3A §11.12.9): delivery mode in bits 8-10, destination in 32-63.
fn icr(m: &FakeMachine, r: &mut Runner<FakeVcpu>, value: u64) {
    r.v.exits.push_back(Exit::Msr { msr: 0x830, write: Some(value) });
    assert_eq!(r.step(m, u64::MAX), Step::Continue);
}

#[test]
fn init_and_startup_ipis_bring_an_ap_from_wait_for_sipi_into_the_guest() {
    let m = FakeMachine::new(2);
    let mut bsp = boot(&m, &[]);
    let mut ap = Runner::new(&m, FakeVcpu::with(&[]), 1, 1, Start::WaitForSipi);
    assert_eq!(ap.step(&m, u64::MAX), Step::Idle);
    icr(&m, &mut bsp, (1 << 32) | (5 << 8) | (1 << 14)); // INIT, assert
    icr(&m, &mut bsp, (1 << 32) | (6 << 8) | 0x08); // SIPI, vector 8
    assert_eq!(*m.kicks.borrow(), [1, 1]);
    ap.v.exits.push_back(Exit::Hlt);
    ap.step(&m, u64::MAX);
    assert_eq!(ap.v.sipi, Some(8));
    assert_eq!(ap.state(), State::Halted);
}

#[test]
fn a_broadcast_ipi_raises_the_vector_on_every_other_vcpu_once() {
    let m = FakeMachine::new(4);
    let mut bsp = boot(&m, &[]);
    icr(&m, &mut bsp, (3 << 18) | 0x50); // all excluding self, fixed, vector 0x50
    assert_eq!(*m.kicks.borrow(), [1, 2, 3]);
    assert_eq!(m.shared[0].highest(), None);
    for s in &m.shared[1..] {
        assert_eq!(s.highest(), Some(0x50));
    }
}

#[test]
fn an_ipi_to_a_vcpu_that_does_not_exist_reaches_nobody() {
    assert_eq!(targets(Dest::One(9), 0, 4).count(), 0);
    assert_eq!(targets(Dest::All, 0, 3).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn a_vcpu_flushes_its_nested_translations_once_after_rights_went_down() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hypercall { nr: hypercall::NOP }; 3]);
    r.step(&m, u64::MAX);
    assert_eq!(r.v.flushes, 0);
    m.generation.set(1);
    r.step(&m, u64::MAX);
    r.step(&m, u64::MAX);
    assert_eq!(r.v.flushes, 1);
}

#[test]
fn a_stopped_guest_is_never_entered_again() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hlt]);
    m.stop(0, Verdict::Fatal("elsewhere"));
    assert_eq!(r.step(&m, u64::MAX), Step::Stopped);
    assert_eq!(r.v.exits.len(), 1);
}

#[test]
fn an_interrupt_the_guest_cannot_take_opens_an_interrupt_window() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::InterruptWindow]);
    r.apic.write(&m.shared[0], 0x80F, 0x1FF, 0).unwrap();
    r.v.if_set = false;
    m.shared[0].raise(0x41);
    r.step(&m, u64::MAX);
    // The window was asked for, then closed by the window exit; nothing was injected.
    assert!(r.v.injected.is_empty());
    assert!(!r.v.window);
}

#[test]
fn the_node_tsc_offset_is_loaded_before_entry_and_only_when_it_moved() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Preempted, Exit::Preempted, Exit::Preempted]);
    m.tsc_offset.set(5_000);
    r.step(&m, u64::MAX);
    r.step(&m, u64::MAX);
    assert_eq!((r.v.tsc_offset, r.v.tsc_loads), (5_000, 1));
    m.tsc_offset.set(9_000);
    r.step(&m, u64::MAX);
    assert_eq!((r.v.tsc_offset, r.v.tsc_loads), (9_000, 2));
}

#[test]
fn the_tsc_msr_and_the_tsc_deadline_use_guest_time_not_host_time() {
    let m = FakeMachine::new(1);
    // Guest time = host 1000 + 10^9: a deadline 500 ticks ahead in guest time.
    m.tsc_offset.set(1_000_000_000);
    let deadline = 1_000_001_500u64;
    let mut r = boot(
        &m,
        &[
            Exit::Preempted,
            Exit::Msr { msr: 0x10, write: None },
            Exit::Msr { msr: 0x6e0, write: Some(deadline) },
            Exit::Preempted,
        ],
    );
    r.apic.write(m.shared(0), 0x832, (1 << 18) | 0x40, 0).unwrap(); // LVT timer: TSC-deadline
    r.step(&m, u64::MAX);
    r.step(&m, u64::MAX);
    assert_eq!((r.v.regs.rdx << 32) | r.v.regs.rax, 1_000_001_000);
    r.step(&m, u64::MAX);
    // The slice ends at the guest deadline, converted back to host ticks.
    r.step(&m, m.now() + 10_000);
    assert_eq!(r.v.slice, 500);
}

#[test]
fn the_time_slice_ends_at_the_slice_or_the_guest_timer_whichever_is_first() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Preempted]);
    assert_eq!(r.step(&m, m.now() + 500), Step::Yield);
    assert_eq!(r.v.slice, 500);
}

#[test]
fn xsetbv_loads_what_the_host_supports_and_faults_on_the_rest() {
    let m = FakeMachine::new(1);
    let mut r = boot(
        &m,
        &[
            Exit::Xsetbv { xcr: 0, value: 0b111 },
            Exit::Xsetbv { xcr: 0, value: 0b1110_0111 }, // AVX-512: not on this host
            Exit::Xsetbv { xcr: 1, value: 1 },
        ],
    );
    assert_eq!(run_all(&mut r, &m), [Step::Continue; 3]);
    assert_eq!(r.v.xcr0, Some(0b111));
    assert_eq!(r.v.rip, 1);
    assert_eq!(r.v.exceptions, [(13, Some(0)), (13, Some(0))]);
    assert_eq!(m.verdict(), None);
}

#[test]
fn xcr0_rules_follow_the_architecture() {
    let all = u64::MAX;
    assert!(xcr0_valid(0b11, all));
    assert!(!xcr0_valid(0b10, all), "x87 must stay on");
    assert!(!xcr0_valid(0b101, all), "AVX needs SSE");
    assert!(!xcr0_valid(0b0010_0111, all), "AVX-512 all or none");
    assert!(xcr0_valid(0b1110_0111, all));
    assert!(!xcr0_valid(0b1110_0011, all), "AVX-512 needs AVX");
    assert!(!xcr0_valid(0b111, 0b11), "beyond the host");
}

#[test]
fn instructions_a_guest_may_not_use_give_ud_and_never_stop_it() {
    let m = FakeMachine::new(1);
    let mut r =
        boot(&m, &[Exit::Undefined { what: "VMX instruction" }, Exit::NoOp { what: "INVD" }]);
    assert_eq!(run_all(&mut r, &m), [Step::Continue, Step::Continue]);
    assert_eq!(r.v.exceptions, [(6, None)]);
    assert_eq!(r.v.rip, 1, "INVD is skipped, the #UD instruction is not");
    assert_eq!(m.verdict(), None);
}

#[test]
fn the_node_hypercall_names_the_node_that_runs_the_vcpu() {
    let m = FakeMachine::new(1);
    let mut r = boot(&m, &[Exit::Hypercall { nr: hypercall::NODE }]);
    run_all(&mut r, &m);
    assert_eq!(r.v.regs.rax, 3);
}

#[test]
fn an_nmi_ipi_wakes_a_halted_vcpu_and_is_injected_once_unblocked() {
    let m = FakeMachine::new(2);
    let mut bsp = boot(&m, &[]);
    let mut ap = Runner::new(&m, FakeVcpu::with(&[Exit::Hlt]), 1, 1, Start::WaitForSipi);
    icr(&m, &mut bsp, (1 << 32) | (5 << 8) | (1 << 14));
    icr(&m, &mut bsp, (1 << 32) | (6 << 8) | 0x08);
    ap.step(&m, u64::MAX); // starts, halts
    assert_eq!(ap.state(), State::Halted);
    ap.v.nmi_blocked = true;
    icr(&m, &mut bsp, (1 << 32) | (4 << 8)); // NMI to vCPU 1
    ap.v.exits.push_back(Exit::Hypercall { nr: hypercall::NOP });
    ap.step(&m, u64::MAX);
    assert_eq!(ap.v.nmis, 0, "held while NMIs are blocked");
    ap.v.nmi_blocked = false;
    ap.v.exits.push_back(Exit::Hypercall { nr: hypercall::NOP });
    ap.step(&m, u64::MAX);
    assert_eq!(ap.v.nmis, 1);
    assert!(!m.shared[1].nmi_pending());
}

#[test]
fn a_logical_destination_reaches_exactly_the_vcpus_its_cluster_bitmap_names() {
    // Cluster 1 holds vCPUs 16..32: bits 0 and 3 name vCPUs 16 and 19.
    assert_eq!(targets(Dest::Logical(0x0001_0009), 0, 40).collect::<Vec<_>>(), [16, 19]);
    assert_eq!(targets(Dest::Logical(0x0000_0003), 5, 4).collect::<Vec<_>>(), [0, 1]);
}

/// A 64-bit guest whose first 2 MiB are identity-mapped (PML4 0x1000, PDPT 0x2000, PD 0x3000)
/// running `code` at 0x10_0000.
fn long_mode_guest(m: &FakeMachine, code: &[u8], exits: &[Exit]) -> Runner<FakeVcpu> {
    m.put(0x1000, &(0x2000u64 | 3).to_le_bytes());
    m.put(0x2000, &(0x3000u64 | 3).to_le_bytes());
    m.put(0x3000, &0x83u64.to_le_bytes());
    m.put(0x10_0000, code);
    // The rest of the page: the fetch reads up to 15 bytes.
    m.put(0x10_0000 + code.len() as u64, &[0x90; 32]);
    let mut r = boot(m, exits);
    r.v.rip = 0x10_0000;
    r.v.long_mode_cr3 = Some(0x1000);
    r
}

const IOAPIC: u64 = crate::hv::acpi::IOAPIC_GPA;

fn npf(gpa: u64, write: bool) -> Exit {
    Exit::NestedPageFault { gpa, write, exec: false, present: false }
}

#[test]
fn ioapic_mmio_is_emulated_from_the_decoded_instruction_and_rip_moves_past_it() {
    let m = FakeMachine::new(1);
    // mov dword [rdx], eax (select the version register); mov r9d, [rdx+0x10] (read it).
    let code = [0x89, 0x02, 0x44, 0x8b, 0x4a, 0x10];
    let mut r = long_mode_guest(&m, &code, &[npf(IOAPIC, true), npf(IOAPIC + 0x10, false)]);
    r.v.regs.rax = 1;
    r.v.regs.r9 = u64::MAX;
    assert_eq!(run_all(&mut r, &m), [Step::Continue, Step::Continue]);
    assert_eq!(r.v.regs.r9, u64::from(crate::hv::ioapic::VERSION), "zero-extended load");
    assert_eq!(r.v.rip, 0x10_0000 + 6);
    assert_eq!(m.verdict(), None);
}

#[test]
fn an_mmio_load_answered_elsewhere_parks_and_retires_into_its_register() {
    let m = FakeMachine::new(1);
    m.ports_elsewhere.set(true);
    // mov r9d, [rdx+0x10]
    let code = [0x44, 0x8b, 0x4a, 0x10];
    let mut r = long_mode_guest(&m, &code, &[npf(IOAPIC + 0x10, false), Exit::Preempted]);
    r.v.regs.r9 = u64::MAX;
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(m.stats[0].state(), State::WaitDevice);
    assert_eq!((r.v.rip, r.v.regs.r9), (0x10_0000, u64::MAX), "not retired yet");
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    m.port_reply.set(Some(0x1234_5678));
    assert_eq!(r.step(&m, u64::MAX), Step::Yield);
    assert_eq!(r.v.regs.r9, 0x1234_5678, "zero-extended load");
    assert_eq!(r.v.rip, 0x10_0000 + 4);
}

#[test]
fn mmio_that_cannot_be_emulated_stops_the_guest_with_the_reason() {
    // An ADD to the device page: a read-modify-write this emulation refuses.
    let m = FakeMachine::new(1);
    let mut r = long_mode_guest(&m, &[0x01, 0x02], &[npf(IOAPIC, true)]);
    assert_eq!(run_all(&mut r, &m), [Step::Stopped]);
    assert!(matches!(m.verdict(), Some(Verdict::Fatal(w)) if w.contains("not a MOV")));
    // A store decoded where the CPU reported a read.
    let m = FakeMachine::new(1);
    let mut r = long_mode_guest(&m, &[0x89, 0x02], &[npf(IOAPIC, false)]);
    run_all(&mut r, &m);
    assert!(matches!(m.verdict(), Some(Verdict::Fatal(w)) if w.contains("disagrees")));
    // Code that is not mapped in the guest's own tables (the rest of its PD is here, empty).
    let m = FakeMachine::new(1);
    let mut r = long_mode_guest(&m, &[0x89, 0x02], &[npf(IOAPIC, true)]);
    m.put(0x3008, &[0; 4088]);
    r.v.rip = 0x40_0000;
    run_all(&mut r, &m);
    assert!(matches!(m.verdict(), Some(Verdict::Fatal(w)) if w.contains("cannot be read")));
}

#[test]
fn mmio_code_held_by_another_node_is_fetched_like_a_fault_then_the_access_runs_again() {
    let m = FakeMachine::new(1);
    m.fault.set(Fault::Wait);
    // The PD page's other entries are here (empty) but the code page at 2 MiB is not.
    let mut r = long_mode_guest(&m, &[0x89, 0x02], &[npf(IOAPIC, true), npf(IOAPIC, true)]);
    m.put(0x3008, &0x20_0083u64.to_le_bytes());
    r.v.rip = 0x20_0000;
    assert_eq!(r.step(&m, u64::MAX), Step::Idle);
    assert_eq!(r.state(), State::WaitPage, "parked on the code page, not stopped");
    assert_eq!(m.verdict(), None);
    // The page came: the access runs again and is emulated.
    m.put(0x20_0000, &[0x89, 0x02, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90]);
    m.put(0x20_000a, &[0x90; 8]);
    m.resumed.set(true);
    r.v.regs.rax = 1;
    assert_eq!(r.step(&m, u64::MAX), Step::Continue);
    assert_eq!(r.v.rip, 0x20_0002);
    assert_eq!(m.verdict(), None);
}

#[test]
fn a_fault_outside_device_pages_still_goes_to_the_memory_path() {
    let m = FakeMachine::new(1);
    m.fault.set(Fault::Deny("outside guest memory"));
    let mut r = long_mode_guest(&m, &[0x89, 0x02], &[npf(IOAPIC + 0x1000, true)]);
    run_all(&mut r, &m);
    assert_eq!(m.verdict(), Some(Verdict::Fatal("outside guest memory")));
}
