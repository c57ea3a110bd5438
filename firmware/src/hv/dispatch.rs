//! The exit dispatch, generic over the [`Vcpu`] backend and the [`Machine`] around it: one
//! `step` per VM entry that delivers pending interrupts, runs the guest and answers the neutral
//! [`Exit`] — CPUID, MSRs and the virtual x2APIC, port I/O, HLT, CR writes, hypercalls, nested
//! page faults, INIT/SIPI and fatal exits. Nothing here touches hardware, so a fake backend
//! drives all of it in host tests; VMX (and later SVM) only translate their exits.

use core::sync::atomic::Ordering;

use super::cpuid::{self, Regs4, Topology};
use super::hypercall;
use super::mmio;
use super::msr::{Load, MsrFile};
use super::stats::{State, VcpuStats};
use super::vlapic::{self, Dest, Effect, IpiKind, Shared};
use super::{Breakage, Exit, IoDir, Regs, Snapshot, Vcpu};

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It asked to exit (debug port or hypercall) with this code.
    Exit(u32),
    /// The hypervisor stopped it: what happened.
    Fatal(&'static str),
}

/// The answer to a nested page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The page is mapped with the rights the access needs: retry the access.
    Mapped,
    /// The page is on its way: park the vCPU until [`Machine::kick`] wakes it.
    Wait,
    /// No memory there (or the mapping failed): the guest is stopped with this reason.
    Deny(&'static str),
}

/// The guest machine around one vCPU: its memory, devices, the other vCPUs and time. The
/// firmware's `Vm` implements it over hardware; tests implement it over plain memory.
pub trait Machine {
    /// vCPUs of the guest.
    fn vcpus(&self) -> u32;
    /// The APIC state other vCPUs write, of `vcpu`, a vCPU of this node.
    fn shared(&self, vcpu: usize) -> &vlapic::Shared;
    /// The counters of `vcpu`, a vCPU of this node.
    fn stats(&self, vcpu: usize) -> &VcpuStats;
    /// Delivers an IPI from `from` to vCPU `to` (any vCPU of the guest, on any node).
    fn ipi(&self, from: usize, to: usize, kind: IpiKind);
    /// This node's id in the cluster (0 alone).
    fn node(&self) -> u16;
    /// The guest has ended (on any vCPU).
    fn stopped(&self) -> bool;
    /// Ends the guest with `verdict` (the first verdict wins), found by `vcpu`.
    fn stop(&self, vcpu: usize, verdict: Verdict);
    /// Makes `vcpu` leave the guest or its sleep soon (an IPI to its core).
    fn kick(&self, vcpu: usize);
    /// The host's TSC now.
    fn now(&self) -> u64;
    /// What the guest's TSC adds to the host's on this node (wrapping): the same for every
    /// vCPU here, agreed with the other nodes (`timesync`), and only ever moved forward.
    fn tsc_offset(&self) -> u64;
    /// TSC ticks per second.
    fn tsc_hz(&self) -> u64;
    /// The host CPU's CPUID answer.
    fn host_cpuid(&self, leaf: u32, sub: u32) -> Regs4;
    /// A port access by `vcpu` (one element of `size` bytes): the value read for `In`, or
    /// None when another node's devices answer it: the vCPU parks until
    /// [`Machine::take_port_reply`] has the value.
    fn port(&self, vcpu: usize, port: u16, size: u8, dir: IoDir, value: u32) -> Option<u32>;
    /// Takes the answer to `vcpu`'s device read (port or MMIO) that went elsewhere, if it
    /// came.
    fn take_device_reply(&self, _vcpu: usize) -> Option<u64> {
        None
    }
    /// A nested page fault at `gpa`.
    fn nested_fault(&self, vcpu: usize, gpa: u64, write: bool, exec: bool) -> Fault;
    /// `vcpu` is about to enter the guest: the nested-paging generation it must have flushed
    /// (bumped whenever rights went down).
    fn entering(&self, vcpu: usize) -> u64;
    /// `vcpu` flushed its nested translations up to `generation` and enters now.
    fn flushed(&self, vcpu: usize, generation: u64);
    /// `vcpu` left the guest.
    fn left(&self, vcpu: usize);
    /// Takes the wake-up of a vCPU parked on a page fault, if it came.
    fn take_resume(&self, vcpu: usize) -> bool;
    /// Nested page faults served so far.
    fn faults(&self) -> u64;
    /// The test hypercalls (PROTECT, BREAK) are allowed: only under `test=`.
    fn test_hooks(&self) -> bool;
    /// Test hook: sets the rights of the guest page at `gpa`; false when `gpa` is not guest
    /// RAM or the tables refuse.
    fn protect(&self, gpa: u64, rights: u64) -> bool;
    /// A host interrupt made the guest exit: take it now (on hardware, a moment with IF set).
    fn take_host_interrupt(&self);
    /// A fatal exit of `vcpu`, for the console (before the guest is stopped).
    fn report_fatal(&self, vcpu: usize, what: &str, exit: &Exit, snap: &Snapshot, regs: &Regs);
    /// Every exit, for tracing.
    fn trace(&self, _vcpu: usize, _exit: &Exit) {}
    /// `gpa` is on an emulated device page (never mapped to RAM): its accesses come to
    /// [`Machine::mmio_read`] and [`Machine::mmio_write`].
    fn is_mmio(&self, _gpa: u64) -> bool {
        false
    }
    /// A device read of `size` bytes at `gpa` by `vcpu`; None when another node's devices
    /// answer it (the vCPU parks as for [`Machine::port`]).
    fn mmio_read(&self, _vcpu: usize, _gpa: u64, _size: u8) -> Option<u64> {
        Some(u64::MAX)
    }
    /// A device write of `size` bytes at `gpa` by `vcpu`.
    fn mmio_write(&self, _vcpu: usize, _gpa: u64, _size: u8, _value: u64) {}
    /// Reads guest RAM at `gpa` (for the instruction behind an MMIO access and the page walk
    /// that finds it); false when it is not readable here.
    fn read_guest(&self, _gpa: u64, _buf: &mut [u8]) -> bool {
        false
    }
}

/// What the scheduler does after one [`Runner::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Enter the guest again.
    Continue,
    /// Give the core back now (the slice ended or a host interrupt was taken).
    Yield,
    /// Nothing to run until an interrupt, a start-up IPI or a page arrives: sleep.
    Idle,
    /// The guest ended.
    Stopped,
}

/// How a vCPU starts: the guest's boot processor enters its kernel, the others wait for SIPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// 32-bit protected mode at `eip` with RAX, RBX and RSI set (Multiboot §3.2: magic and
    /// info block; Linux's 32-bit boot protocol: boot_params in ESI).
    ProtectedMode {
        /// Entry point.
        eip: u32,
        /// RAX at entry.
        rax: u64,
        /// RBX at entry.
        rbx: u64,
        /// RSI at entry.
        rsi: u64,
    },
    /// Wait-for-SIPI.
    WaitForSipi,
}

/// A device read whose answer comes from another node: how to retire it.
#[derive(Clone, Copy, Debug)]
enum Parked {
    /// An IN of this many bytes.
    In(u8),
    /// A decoded MMIO load.
    Mmio(mmio::Access),
}

fn port_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// One vCPU with its local APIC and MSRs, on the core that runs it.
pub struct Runner<V: Vcpu> {
    /// The backend.
    pub v: V,
    /// Global vCPU index (= x2APIC id).
    pub id: usize,
    /// The local APIC.
    pub apic: vlapic::Local,
    state: State,
    msrs: MsrFile,
    nested_gen: u64,
    tsc_offset: u64,
    /// The device read parked in [`State::WaitDevice`].
    parked: Parked,
}

impl<V: Vcpu> Runner<V> {
    /// Wraps backend `v` as vCPU `id` on host CPU `cpu`.
    pub fn new<M: Machine>(m: &M, mut v: V, id: usize, cpu: usize, start: Start) -> Self {
        let state = match start {
            Start::ProtectedMode { eip, rax, rbx, rsi } => {
                v.enter_protected_mode(eip);
                let r = v.regs();
                r.rax = rax;
                r.rbx = rbx;
                r.rsi = rsi;
                State::Running
            }
            Start::WaitForSipi => State::WaitForSipi,
        };
        m.stats(id).cpu.store(cpu as u32, Ordering::Relaxed);
        m.stats(id).set_state(state);
        Runner {
            v,
            id,
            apic: vlapic::Local::new(id as u32),
            state,
            msrs: MsrFile::new(id == 0),
            nested_gen: 0,
            tsc_offset: 0,
            parked: Parked::In(1),
        }
    }

    /// Where the vCPU is.
    pub fn state(&self) -> State {
        self.state
    }

    fn set_state<M: Machine>(&mut self, m: &M, s: State) {
        self.state = s;
        m.stats(self.id).set_state(s);
    }

    /// Runs until the next exit (handled), entering the guest at most until TSC `slice_end`.
    pub fn step<M: Machine>(&mut self, m: &M, slice_end: u64) -> Step {
        if m.stopped() {
            self.set_state(m, State::Stopped);
            return Step::Stopped;
        }
        let shared = m.shared(self.id);
        let (init, sipi) = shared.take_startup();
        if init {
            shared.reset();
            self.apic = vlapic::Local::new(self.id as u32);
            self.set_state(m, State::WaitForSipi);
        }
        if let Some(vector) = sipi.filter(|_| self.state == State::WaitForSipi) {
            self.v.enter_sipi(vector);
            self.msrs.efer = 0;
            // The backend's reset loads the power-on PAT; an INIT leaves the guest's.
            self.v.set_pat(self.msrs.pat);
            self.set_state(m, State::Running);
        }
        if self.state == State::WaitForSipi {
            return Step::Idle;
        }
        if self.state == State::WaitPage {
            if !m.take_resume(self.id) {
                return Step::Idle;
            }
            self.set_state(m, State::Running);
        }
        if self.state == State::WaitDevice {
            // The IN retires with the primary's value before anything is injected.
            let Some(value) = m.take_device_reply(self.id) else { return Step::Idle };
            match self.parked {
                Parked::In(size) => {
                    self.complete_in(size, value as u32);
                    self.v.skip_instruction();
                }
                Parked::Mmio(a) => {
                    a.complete(self.v.regs(), value);
                    self.v.advance_rip(u64::from(a.len));
                }
            }
            self.set_state(m, State::Running);
        }
        let host_now = m.now();
        // The virtual APIC's timer runs on guest time (its TSC deadline is a guest TSC value).
        let now = host_now.wrapping_add(self.tsc_offset);
        self.apic.poll_timer(shared, now);
        let pending = self.apic.deliverable(shared);
        let nmi = shared.nmi_pending();
        if self.state == State::Halted {
            if pending.is_none() && !nmi {
                return Step::Idle;
            }
            self.set_state(m, State::Running);
        }
        if nmi && self.v.nmi_allowed() && shared.take_nmi() {
            self.v.inject_nmi();
        } else if let Some(vec) = pending {
            if self.v.interruptible() {
                self.v.inject_interrupt(vec);
                self.apic.accept(shared, vec);
                self.v.set_interrupt_window(false);
            } else {
                self.v.set_interrupt_window(true);
            }
        }
        let until_timer = self.apic.deadline().map_or(u64::MAX, |d| d.saturating_sub(now));
        self.v.set_time_slice(slice_end.saturating_sub(host_now).min(until_timer).max(1));
        let gen = m.entering(self.id);
        if self.nested_gen != gen {
            self.v.flush_nested();
            self.nested_gen = gen;
        }
        // Read after `entering`: a barrier that saw this generation flushed knows the vCPU
        // also runs with every TSC step made before it (see `Vm::observe_time`).
        let offset = m.tsc_offset();
        if offset != self.tsc_offset {
            self.v.set_tsc_offset(offset);
            self.tsc_offset = offset;
        }
        m.flushed(self.id, gen);
        let exit = self.v.run();
        m.left(self.id);
        m.stats(self.id).count(exit.kind());
        m.trace(self.id, &exit);
        self.handle(m, exit)
    }

    fn fatal<M: Machine>(&mut self, m: &M, what: &'static str, exit: &Exit) -> Step {
        let snap = self.v.snapshot();
        let regs = *self.v.regs();
        m.report_fatal(self.id, what, exit, &snap, &regs);
        self.set_state(m, State::Stopped);
        m.stop(self.id, Verdict::Fatal(what));
        Step::Stopped
    }

    /// Answers one exit.
    pub fn handle<M: Machine>(&mut self, m: &M, exit: Exit) -> Step {
        match exit {
            Exit::Preempted => {
                // Where the guest is, for `vcpu` (sampled once a slice, not on every exit).
                m.stats(self.id).rip.store(self.v.snapshot().rip, Ordering::Relaxed);
                Step::Yield
            }
            Exit::Interrupt => {
                m.take_host_interrupt();
                Step::Yield
            }
            Exit::InterruptWindow => {
                self.v.set_interrupt_window(false);
                Step::Continue
            }
            Exit::Hlt => {
                m.stats(self.id).rip.store(self.v.snapshot().rip, Ordering::Relaxed);
                self.v.skip_instruction();
                if self.apic.deliverable(m.shared(self.id)).is_none() {
                    self.set_state(m, State::Halted);
                    return Step::Idle;
                }
                Step::Continue
            }
            Exit::Cpuid { leaf, sub } => {
                let host = cpuid::Host::probe(|l, s| m.host_cpuid(l, s));
                let t = Topology { vcpus: m.vcpus(), tsc_hz: m.tsc_hz(), host };
                let a = cpuid::answer(leaf, sub, m.host_cpuid(leaf, sub), self.id as u32, &t);
                let r = self.v.regs();
                (r.rax, r.rbx, r.rcx, r.rdx) =
                    (a.eax.into(), a.ebx.into(), a.ecx.into(), a.edx.into());
                self.v.skip_instruction();
                Step::Continue
            }
            Exit::Hypercall { nr } => self.hypercall(m, nr),
            Exit::Io { port, size, dir, string } => {
                if string {
                    return self.fatal(m, "string port I/O is not emulated", &exit);
                }
                if !self.io(m, port, size, dir) {
                    // Another node's devices answer: park with the instruction not retired.
                    self.parked = Parked::In(size);
                    self.set_state(m, State::WaitDevice);
                    return Step::Idle;
                }
                self.v.skip_instruction();
                if m.stopped() {
                    self.set_state(m, State::Stopped);
                    return Step::Stopped;
                }
                Step::Continue
            }
            Exit::Msr { msr, write } => self.msr(m, msr, write),
            Exit::CrAccess { cr, write } => {
                if let Some(v) = write {
                    self.v.set_cr(cr, v);
                }
                self.v.skip_instruction();
                Step::Continue
            }
            Exit::NestedPageFault { gpa, write, exec, .. } if m.is_mmio(gpa) && !exec => {
                self.mmio(m, gpa, write, &exit)
            }
            Exit::NestedPageFault { gpa, write, exec, .. } => {
                match m.nested_fault(self.id, gpa, write, exec) {
                    Fault::Mapped => Step::Continue,
                    Fault::Wait => {
                        self.set_state(m, State::WaitPage);
                        Step::Idle
                    }
                    Fault::Deny(what) => self.fatal(m, what, &exit),
                }
            }
            Exit::Xsetbv { xcr, value } => {
                let host = m.host_cpuid(0xD, 0);
                let supported = u64::from(host.eax) | (u64::from(host.edx) << 32);
                if xcr == 0 && xcr0_valid(value, supported) {
                    self.v.set_xcr0(value);
                    self.v.skip_instruction();
                } else {
                    self.v.inject_exception(13, Some(0));
                }
                Step::Continue
            }
            Exit::Undefined { .. } => {
                self.v.inject_exception(6, None);
                Step::Continue
            }
            Exit::NoOp { .. } => {
                self.v.skip_instruction();
                Step::Continue
            }
            Exit::Exception { .. } | Exit::Init | Exit::Sipi { .. } => Step::Continue,
            Exit::TripleFault => self.fatal(m, "triple fault", &exit),
            Exit::InvalidGuestState { what, .. }
            | Exit::EntryFailed { what, .. }
            | Exit::Other { what, .. } => self.fatal(m, what, &exit),
        }
    }

    /// Emulates the MOV that faulted on device page `gpa`: fetches it through the guest's page
    /// tables, decodes it, does the access and moves RIP past it.
    fn mmio<M: Machine>(&mut self, m: &M, gpa: u64, write: bool, exit: &Exit) -> Step {
        let s = self.v.snapshot();
        // The first guest page the decode could not read here (held by another node).
        let missing = core::cell::Cell::new(None);
        let read = |a: u64, n: usize| {
            let mut b = [0u8; 8];
            let ok = m.read_guest(a, &mut b[..n]);
            if !ok && missing.get().is_none() {
                missing.set(Some(a));
            }
            ok.then(|| u64::from_le_bytes(b))
        };
        let cs_base = if s.efer & (1 << 10) != 0 { 0 } else { s.cs.1 };
        let la = cs_base.wrapping_add(s.rip);
        // Up to 15 bytes, in at most two pages.
        let mut bytes = [0u8; 15];
        let first = (4096 - (la & 0xfff)).min(15) as usize;
        let mut got = 0;
        for (at, n) in [(la, first), (la.wrapping_add(first as u64), 15 - first)] {
            if n == 0 {
                continue;
            }
            match mmio::translate(s.cr0, s.cr3, s.cr4, s.efer, at, read) {
                Some(pa) if m.read_guest(pa, &mut bytes[got..got + n]) => got += n,
                Some(pa) => {
                    missing.set(missing.get().or(Some(pa)));
                    break;
                }
                None => break,
            }
        }
        let decoded = match got {
            0 => None,
            _ => Some(mmio::decode(&bytes[..got], mmio::bitness(s.efer, s.cs.3))),
        };
        let a = match (decoded, missing.get()) {
            (Some(Ok(a)), _) if a.uses_rsp() => {
                return self.fatal(m, "MMIO through RSP is not emulated", exit);
            }
            (Some(Ok(a)), _) => a,
            // The code or a page table it runs on is on another node: fetch it as a fault
            // would, then the instruction runs (and exits) again.
            (_, Some(gpa)) => return self.fetch_for_decode(m, gpa, exit),
            (Some(Err(e)), None) => return self.fatal(m, e.what(), exit),
            (None, None) => {
                return self.fatal(m, "MMIO: the faulting instruction cannot be read", exit)
            }
        };
        match a.store_value(self.v.regs()) {
            Some(v) if write => m.mmio_write(self.id, gpa, a.size, v),
            None if !write => match m.mmio_read(self.id, gpa, a.size) {
                Some(v) => a.complete(self.v.regs(), v),
                None => {
                    self.parked = Parked::Mmio(a);
                    self.set_state(m, State::WaitDevice);
                    return Step::Idle;
                }
            },
            _ => return self.fatal(m, "MMIO: the decoded access disagrees with the fault", exit),
        }
        self.v.advance_rip(u64::from(a.len));
        Step::Continue
    }

    /// Brings guest page `gpa` here (read-only will do) for the MMIO decode.
    fn fetch_for_decode<M: Machine>(&mut self, m: &M, gpa: u64, exit: &Exit) -> Step {
        match m.nested_fault(self.id, gpa & !0xfff, false, false) {
            Fault::Mapped => Step::Continue,
            Fault::Wait => {
                self.set_state(m, State::WaitPage);
                Step::Idle
            }
            Fault::Deny(what) => self.fatal(m, what, exit),
        }
    }

    fn hypercall<M: Machine>(&mut self, m: &M, nr: u64) -> Step {
        let (rbx, rcx) = (self.v.regs().rbx, self.v.regs().rcx);
        let ret = match nr {
            hypercall::VERSION => u64::from(cpuid::ABI_VERSION),
            hypercall::EXIT => {
                self.v.skip_instruction();
                m.stop(self.id, Verdict::Exit(rbx as u32));
                self.set_state(m, State::Stopped);
                return Step::Stopped;
            }
            hypercall::TSC_HZ => m.tsc_hz(),
            hypercall::NOP => 0,
            hypercall::FAULTS => m.faults(),
            hypercall::NODE => u64::from(m.node()),
            // Test hooks exist only under `test=`: a production guest must not reshape the
            // EPT or break its own vCPU.
            hypercall::PROTECT if m.test_hooks() => {
                if m.protect(rbx & !0xfff, rcx & 7) {
                    0
                } else {
                    u64::MAX
                }
            }
            hypercall::BREAK if m.test_hooks() => {
                self.v.regs().rax = 0;
                self.v.skip_instruction();
                let what = if rbx == 0 { Breakage::Guest } else { Breakage::Control };
                self.v.break_for_test(what);
                return Step::Continue;
            }
            _ => u64::MAX,
        };
        self.v.regs().rax = ret;
        self.v.skip_instruction();
        Step::Continue
    }

    /// One port access; false if its answer comes later (the vCPU parks).
    fn io<M: Machine>(&mut self, m: &M, port: u16, size: u8, dir: IoDir) -> bool {
        let val = (self.v.regs().rax & port_mask(size)) as u32;
        match m.port(self.id, port, size, dir, val) {
            Some(result) => {
                if dir == IoDir::In {
                    self.complete_in(size, result);
                }
                true
            }
            None => false,
        }
    }

    /// An IN of `size` bytes replaces only those bytes of RAX.
    fn complete_in(&mut self, size: u8, value: u32) {
        let mask = port_mask(size);
        let r = self.v.regs();
        r.rax = (r.rax & !mask) | (u64::from(value) & mask);
    }

    fn msr<M: Machine>(&mut self, m: &M, msr: u32, write: Option<u64>) -> Step {
        let now = m.now().wrapping_add(self.tsc_offset);
        let is_apic =
            matches!(msr, vlapic::MSR_FIRST..=vlapic::MSR_LAST | vlapic::MSR_TSC_DEADLINE);
        let ok = match write {
            None => {
                let v = if is_apic {
                    self.apic.read(m.shared(self.id), msr, now)
                } else if msr == super::msr::EFER {
                    // With LMA as the CPU set it (the MSR file holds what the guest wrote).
                    Some(self.v.snapshot().efer)
                } else {
                    self.msrs.read(msr, now)
                };
                if let Some(v) = v {
                    let r = self.v.regs();
                    r.rax = v & 0xffff_ffff;
                    r.rdx = v >> 32;
                }
                v.is_some()
            }
            Some(v) if is_apic => match self.apic.write(m.shared(self.id), msr, v, now) {
                Ok(Effect::Ipi(dest, kind)) => {
                    self.ipi(m, dest, kind);
                    true
                }
                Ok(_) => true,
                Err(vlapic::Gp) => false,
            },
            Some(v) => match self.msrs.write(msr, v) {
                Ok(load) => {
                    match load {
                        Some(Load::Efer(e)) => self.v.set_efer(e),
                        Some(Load::Pat(p)) => self.v.set_pat(p),
                        None => {}
                    }
                    true
                }
                Err(vlapic::Gp) => false,
            },
        };
        if !ok {
            let st = m.stats(self.id);
            st.msr_gp.fetch_add(1, Ordering::Relaxed);
            st.last_msr_gp.store(msr, Ordering::Relaxed);
            self.v.inject_exception(13, Some(0));
            return Step::Continue;
        }
        self.v.skip_instruction();
        Step::Continue
    }

    fn ipi<M: Machine>(&mut self, m: &M, dest: Dest, kind: IpiKind) {
        for t in targets(dest, self.id, m.vcpus() as usize) {
            m.ipi(self.id, t, kind);
        }
    }
}

/// Carries out an IPI on the target's own APIC state (a vCPU of this node), and wakes it.
pub fn deliver_ipi(target: &Shared, kind: IpiKind) {
    match kind {
        IpiKind::Fixed(v) => target.raise(v),
        IpiKind::Nmi => target.post_nmi(),
        IpiKind::Init => target.post_init(),
        IpiKind::Startup(v) => target.post_sipi(v),
    }
}

/// XSETBV's rules for XCR0 (SDM Vol. 1 §13.3, Vol. 2C XSETBV): x87 always on, AVX only with
/// SSE, the three AVX-512 components all or none and only with AVX, and nothing the host CPU
/// does not support (`supported`: CPUID.(EAX=0DH,ECX=0) EDX:EAX).
pub fn xcr0_valid(value: u64, supported: u64) -> bool {
    const X87: u64 = 1;
    const SSE: u64 = 1 << 1;
    const AVX: u64 = 1 << 2;
    const AVX512: u64 = 0b111 << 5;
    value & X87 != 0
        && value & !supported == 0
        && (value & AVX == 0 || value & SSE != 0)
        && (value & AVX512 == 0 || (value & AVX512 == AVX512 && value & AVX != 0))
}

/// The vCPUs an IPI from `me` to `dest` reaches, among `n` (an id beyond them reaches none).
pub fn targets(dest: Dest, me: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&i| match dest {
        Dest::One(id) => i == id as usize,
        // x2APIC id = vCPU index, so its logical id is (index / 16) << 16 | 1 << (index % 16).
        Dest::Logical(ld) => (ld >> 16) as usize == i / 16 && ld & (1 << (i % 16)) != 0,
        Dest::Me => i == me,
        Dest::All => true,
        Dest::Others => i != me,
    })
}

#[cfg(test)]
mod tests;
