//! The guest on this node: the [`Vm`] (this node's share of the cluster guest: its vCPUs,
//! all of guest RAM behind the coherence engine, the port devices) implementing the
//! dispatch's [`Machine`], and the messages it exchanges with the other nodes' hypervisors —
//! coherence traffic, IPIs to vCPUs elsewhere, port accesses for the devices (which live on the
//! primary: writes posted, reads parked until it answers), and the guest's end. Scheduling and start-up live in `sched`.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::{Mutex, Once};

use gestalt_coherence::{Gfn, NodeId, VcpuId};

use super::acpi;
use super::cluster::{self, End, GuestMsg, Shape};
use super::coherent::Coherent;
use super::cpuid::Regs4;
use super::devices::rtc::Rtc;
use super::devices::{Devices, PortEffect, COM1};
use super::dispatch::{deliver_ipi, Fault, Machine, Verdict};
use super::faultstats;
use super::ioapic::{self, Irq};
use super::memory::{GuestMemory, Here};
use super::stats::{self, State, VcpuStats};
use super::timesync::{self, TimeSync};
use super::vcpus::VcpuSet;
use super::vlapic::{self, IpiKind};
use super::vmx::hw as vmx;
use super::{Exit, IoDir, Regs, Snapshot};
use crate::arch::{cpu::rdtsc, power, time};
use crate::mem::frames::FrameAllocator;
use crate::{error, info, kprintln};

pub use super::sched::{ap_poll, ap_register, bsp_slice, console_input, probe, start};
pub use super::sched::{module_bytes, status, VmError};

/// How long (µs) a page that just arrived stays before a waiting request takes it away, unless
/// `hold=` says otherwise: without one, a legal schedule lets two writers take a page from each
/// other before either retires its access. Measured with the span payload's contended counter
/// on two Bochs nodes (300 increments each, `span_figures`): 196 ms with no hold, 216 ms with
/// 100 µs, 183 ms with 1000 µs — within noise, against remote faults of 8-16 ms there; 100 µs
/// is ample for a resumed vCPU to retire one access and short against any remote fault.
pub const DEFAULT_HOLD_US: u64 = 100;

/// Bytes of guest messages held (in order) for a guest that does not exist here yet: they come
/// from the network, so the heap they may take is bounded.
const EARLY_LIMIT: usize = 1 << 20;

/// This node's part of the guest.
pub struct Vm {
    pub(super) me: u16,
    pub(super) shape: Shape,
    /// Global id of this node's first vCPU.
    pub(super) base: usize,
    pub(super) mem: GuestMemory,
    pub(super) vcpus: VcpuSet,
    coherent: Mutex<Coherent>,
    outbox: Mutex<VecDeque<(u16, Vec<u8>)>>,
    /// A message the transport refused, sent again before anything else (order per peer).
    retry: Mutex<Option<(u16, Vec<u8>)>>,
    pub(super) devices: Mutex<Devices>,
    stopped: AtomicBool,
    verdict: Mutex<Option<Verdict>>,
    start_tsc: AtomicU64,
    /// Guest TSC = host TSC + this (wrapping), for every vCPU here; only moves forward.
    tsc_offset: AtomicU64,
    /// Probes of the primary's clock (None on the primary).
    sync: Mutex<Option<TimeSync>>,
    /// Forward steps a stamp ahead of this clock made, and the largest, in ticks.
    time_steps: AtomicU64,
    time_step_max: AtomicU64,
    bad_messages: AtomicU64,
    /// Per local vCPU: the primary's answer to its parked device read.
    device_reply: Vec<Mutex<Option<u64>>>,
    /// Device reads and writes (ports, I/O APIC) sent to the primary; those it served.
    device_reads: AtomicU64,
    device_writes: AtomicU64,
    devices_served: AtomicU64,
    pub(super) entry: u32,
    pub(super) msr_bitmap: u64,
    pub(super) frames: &'static Mutex<FrameAllocator>,
    test: Option<&'static str>,
}

pub(super) static VM: Once<Vm> = Once::new();

impl Vm {
    /// Delivers an I/O APIC interrupt to the vCPUs it targets (`from`: the vCPU whose access
    /// raised it, or `usize::MAX` for none, so every target is woken).
    pub(super) fn raise_irq(&self, from: usize, irq: Irq) {
        let kind = if irq.nmi { IpiKind::Nmi } else { IpiKind::Fixed(irq.vector) };
        for to in ioapic::targets(irq.target, self.shape.vcpus() as usize) {
            Machine::ipi(self, from, to, kind);
        }
    }
}
/// Messages held for a guest not started yet, the bytes they take, and how many were dropped.
struct Early {
    queue: VecDeque<(u16, Vec<u8>)>,
    held: usize,
    dropped: u64,
}

static EARLY: Mutex<Early> = Mutex::new(Early { queue: VecDeque::new(), held: 0, dropped: 0 });

impl Vm {
    /// A guest shaped by `shape`, of which this node (`me`) runs its share.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        me: u16,
        shape: Shape,
        mem: GuestMemory,
        coherent: Coherent,
        entry: u32,
        msr_bitmap: u64,
        frames: &'static Mutex<FrameAllocator>,
        test: Option<&'static str>,
    ) -> Vm {
        let share = shape.share(me).copied().unwrap_or(shape.shares[0]);
        Vm {
            me,
            base: share.vcpu_base as usize,
            vcpus: VcpuSet::new(share.vcpus as usize),
            shape,
            mem,
            coherent: Mutex::new(coherent),
            outbox: Mutex::new(VecDeque::new()),
            retry: Mutex::new(None),
            devices: Mutex::new(Devices {
                // The guest's clock starts at the host's (node 0 answers every node's reads).
                rtc: Rtc::new(time::host_rtc_seconds().unwrap_or(0), rdtsc()),
                ..Devices::default()
            }),
            stopped: AtomicBool::new(false),
            verdict: Mutex::new(None),
            start_tsc: AtomicU64::new(rdtsc()),
            tsc_offset: AtomicU64::new(0),
            sync: Mutex::new((me != 0).then(|| TimeSync::new(time::tsc_hz()))),
            time_steps: AtomicU64::new(0),
            time_step_max: AtomicU64::new(0),
            bad_messages: AtomicU64::new(0),
            device_reply: (0..share.vcpus).map(|_| Mutex::new(None)).collect(),
            device_reads: AtomicU64::new(0),
            device_writes: AtomicU64::new(0),
            devices_served: AtomicU64::new(0),
            entry,
            msr_bitmap,
            frames,
            test,
        }
    }

    /// This node runs the guest's devices and console.
    pub fn primary(&self) -> bool {
        self.me == 0
    }

    /// The local slot of global vCPU `v`, if this node runs it.
    pub(super) fn local(&self, v: usize) -> Option<usize> {
        v.checked_sub(self.base).filter(|l| *l < self.vcpus.len())
    }

    /// The guest's TSC on this node now.
    fn guest_tsc(&self) -> u64 {
        rdtsc().wrapping_add(self.tsc_offset.load(Ordering::SeqCst))
    }

    /// Moves the guest clock forward to `target` (an offset), never back; true if it moved.
    fn advance_offset(&self, target: u64) -> bool {
        let mut cur = self.tsc_offset.load(Ordering::SeqCst);
        while (target.wrapping_sub(cur) as i64) > 0 {
            match self.tsc_offset.compare_exchange(cur, target, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// A message stamped with its sender's guest TSC `stamp` arrived: this clock must not be
    /// behind it before the message acts. `memory` says it may carry guest memory, which a vCPU
    /// here can read without an exit: then every vCPU re-enters with the new offset first.
    fn observe_time(&self, stamp: u64, memory: bool) {
        let before = self.tsc_offset.load(Ordering::SeqCst);
        let Some(target) = timesync::catch_up(stamp, rdtsc(), before) else { return };
        if self.advance_offset(target) {
            self.time_steps.fetch_add(1, Ordering::Relaxed);
            self.time_step_max.fetch_max(target.wrapping_sub(before), Ordering::Relaxed);
            if memory {
                // The same barrier as for rights going down: each vCPU reads the offset after
                // the generation it flushes (`Runner::step`).
                self.vcpus.flush_barrier();
            }
        }
    }

    /// A node other than the primary probes the primary's clock when a probe is due.
    fn probe_time(&self) {
        let due = self.sync.lock().as_mut().and_then(|s| s.probe(rdtsc()));
        if let Some(t0) = due {
            self.post(0, &GuestMsg::TimeProbe { t0 });
        }
    }

    fn post(&self, to: u16, msg: &GuestMsg<'_>) {
        self.outbox.lock().push_back((to, msg.encode()));
        crate::arch::idle::wake_service_core();
    }

    fn post_all(&self, msg: &GuestMsg<'_>) {
        let bytes = msg.encode();
        let mut out = self.outbox.lock();
        for s in self.shape.shares.iter().filter(|s| s.node != self.me) {
            out.push_back((s.node, bytes.clone()));
        }
        crate::arch::idle::wake_service_core();
    }

    fn here(&self) -> Here<'_> {
        Here { mem: &self.mem, vcpus: &self.vcpus, base: self.base }
    }

    /// Ends the guest here; `tell` sends the end to the other nodes.
    fn end(&self, vcpu: usize, v: Verdict, tell: bool) {
        {
            let mut g = self.verdict.lock();
            if g.is_some() {
                return;
            }
            *g = Some(v);
        }
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.local(vcpu).and_then(|l| self.vcpus.stats.get(l)) {
            s.set_state(State::Stopped);
        }
        self.vcpus.kick_others(usize::MAX);
        if let Some(line) = self.devices.lock().uart.take_partial() {
            self.line(vcpu, &line);
        }
        if tell && self.shape.nodes() > 1 {
            let end = match v {
                Verdict::Exit(code) => End::Exit(code),
                Verdict::Fatal(why) => End::Fatal(why.as_bytes()),
            };
            self.post_all(&GuestMsg::Stop { vcpu: vcpu as u32, end });
        }
        match v {
            Verdict::Exit(code) => info!("hv: guest exited with code {code:#x}"),
            Verdict::Fatal(what) => error!("hv: guest stopped: {what}"),
        }
        self.print_summary();
        if let (Some(t), true) = (self.test, self.primary()) {
            self.test_verdict(t, v);
        }
    }

    /// A port access on the primary's devices, by global vCPU `vcpu` of any node.
    fn device_access(&self, vcpu: usize, port: u16, size: u8, dir: IoDir, value: u32) -> u32 {
        let (v, effect, irq) = {
            let mut d = self.devices.lock();
            let (v, effect) = d.access(port, size, dir, value);
            let irq = if (COM1..COM1 + 8).contains(&port) { d.sync_irq() } else { None };
            (v, effect, irq)
        };
        if let Some(irq) = irq {
            self.raise_irq(vcpu, irq);
        }
        match effect {
            PortEffect::None => {}
            PortEffect::Line(line) => self.line(vcpu, &line),
            PortEffect::Exit(code) => self.stop(vcpu, Verdict::Exit(code)),
            PortEffect::PowerOff => {
                info!("hv: vcpu {vcpu}: the guest powered off (ACPI S5)");
                self.stop(vcpu, Verdict::Exit(0));
            }
            PortEffect::Reset => super::sched::reset(self, vcpu),
        }
        v
    }

    /// The primary's device memory (the I/O APIC).
    fn device_mmio_read(&self, gpa: u64) -> u64 {
        u64::from(self.devices.lock().ioapic.read(gpa & 0xfff))
    }

    fn device_mmio_write(&self, vcpu: usize, gpa: u64, value: u64) {
        let irq = self.devices.lock().ioapic.write(gpa & 0xfff, value as u32);
        if let Some(irq) = irq {
            self.raise_irq(vcpu, irq);
        }
    }

    /// Sends a device read of local `vcpu` to the primary; the vCPU parks for the answer.
    fn forward_read(&self, vcpu: usize, msg: &GuestMsg<'_>) {
        if let Some(l) = self.local(vcpu) {
            *self.device_reply[l].lock() = None;
        }
        self.device_reads.fetch_add(1, Ordering::Relaxed);
        self.post(0, msg);
    }

    /// A finished guest UART line: on the primary's console, from any node.
    fn line(&self, vcpu: usize, text: &[u8]) {
        if self.primary() {
            info!("guest: {}", core::str::from_utf8(text).unwrap_or("<binary>"));
        } else {
            self.post(0, &GuestMsg::Line { vcpu: vcpu as u32, text });
        }
    }

    fn print_summary(&self) {
        let ticks = rdtsc().wrapping_sub(self.start_tsc.load(Ordering::Relaxed));
        let exits: u64 = self.vcpus.stats.iter().map(VcpuStats::total).sum();
        let hz = time::tsc_hz().max(1);
        let us = (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64;
        info!(
            "hv: {exits} VM exits in {}.{:03} s of guest time: {} exits/s, {} nested page faults",
            us / 1_000_000,
            us / 1000 % 1000,
            u128::from(exits) * 1_000_000 / u128::from(us.max(1)),
            self.mem.faults()
        );
    }

    fn test_verdict(&self, t: &str, v: Verdict) -> ! {
        // Let the other vCPUs reach their stop before the table is printed.
        time::delay_us(20_000);
        print_vcpus();
        print_stats(false);
        let (pass, why) = match (t, v) {
            ("vmx", Verdict::Exit(0)) => (true, ""),
            ("vmx", Verdict::Exit(_)) => (false, "guest exit code not 0"),
            ("vmx", Verdict::Fatal(w)) => (false, w),
            ("vmx-fault", Verdict::Fatal(_)) => (true, ""),
            (_, _) => (false, "guest exited without the expected fault"),
        };
        if pass {
            info!("test: {t} PASS");
        } else {
            error!("test: {t} FAIL {why}");
        }
        power::exit_emulator(pass)
    }

    /// A guest message from node `from`, stamped with its guest TSC `stamp`.
    fn receive(&self, from: u16, stamp: u64, msg: GuestMsg<'_>) {
        self.observe_time(stamp, matches!(msg, GuestMsg::Coherence(_)));
        match msg {
            GuestMsg::Coherence(bytes) => {
                let mut here = self.here();
                let from = NodeId(from.min(255) as u8);
                let now = time::uptime_us();
                if self.coherent.lock().message(&mut here, from, bytes, now).is_err() {
                    self.bad_messages.fetch_add(1, Ordering::Relaxed);
                }
            }
            GuestMsg::Ipi { to, kind } => match self.local(to as usize) {
                Some(l) => {
                    deliver_ipi(&self.vcpus.shared[l], kind);
                    self.vcpus.kick(l);
                }
                None => {
                    self.bad_messages.fetch_add(1, Ordering::Relaxed);
                }
            },
            GuestMsg::Line { vcpu, text } => self.line(vcpu as usize, text),
            GuestMsg::Stop { vcpu, end } => {
                let v = match end {
                    End::Exit(code) => Verdict::Exit(code),
                    End::Fatal(why) => {
                        let why = core::str::from_utf8(why).unwrap_or("<binary>");
                        error!("hv: node {from} stopped the guest (vcpu {vcpu}): {why}");
                        Verdict::Fatal("stopped on another node")
                    }
                };
                self.end(vcpu as usize, v, false);
            }
            GuestMsg::TimeProbe { t0 } if self.primary() => {
                self.post(from, &GuestMsg::TimeReply { t0, primary: self.guest_tsc() });
            }
            GuestMsg::TimeReply { t0, primary } if from == 0 => {
                let offset = self.tsc_offset.load(Ordering::SeqCst);
                let step = self.sync.lock().as_mut().and_then(|s| {
                    let first = !s.synced();
                    let step = s.reply(t0, primary, rdtsc(), offset);
                    if first && s.synced() {
                        let us = |t: u64| t * 1_000_000 / time::tsc_hz().max(1);
                        info!(
                            "hv: guest clock set from node 0's: {} probes, best round trip {} us",
                            timesync::BURST,
                            us(s.best_rtt().unwrap_or(0))
                        );
                    }
                    step
                });
                if let Some(target) = step {
                    self.advance_offset(target);
                }
            }
            // Only the vCPU's own node may speak for it.
            GuestMsg::PortWrite { vcpu, port, size, value }
                if self.primary() && self.shape.node_of_vcpu(vcpu) == Some(from) =>
            {
                self.devices_served.fetch_add(1, Ordering::Relaxed);
                self.device_access(vcpu as usize, port, size, IoDir::Out, value);
            }
            GuestMsg::PortRead { vcpu, port, size }
                if self.primary() && self.shape.node_of_vcpu(vcpu) == Some(from) =>
            {
                self.devices_served.fetch_add(1, Ordering::Relaxed);
                let value = self.device_access(vcpu as usize, port, size, IoDir::In, 0);
                self.post(from, &GuestMsg::DeviceReply { vcpu, value: value.into() });
            }
            GuestMsg::MmioWrite { vcpu, gpa, value, .. }
                if self.primary()
                    && self.shape.node_of_vcpu(vcpu) == Some(from)
                    && Machine::is_mmio(self, gpa) =>
            {
                self.devices_served.fetch_add(1, Ordering::Relaxed);
                self.device_mmio_write(vcpu as usize, gpa, value);
            }
            GuestMsg::MmioRead { vcpu, gpa, .. }
                if self.primary()
                    && self.shape.node_of_vcpu(vcpu) == Some(from)
                    && Machine::is_mmio(self, gpa) =>
            {
                self.devices_served.fetch_add(1, Ordering::Relaxed);
                let value = self.device_mmio_read(gpa);
                self.post(from, &GuestMsg::DeviceReply { vcpu, value });
            }
            GuestMsg::DeviceReply { vcpu, value } if from == 0 => match self.local(vcpu as usize) {
                Some(l) => {
                    *self.device_reply[l].lock() = Some(value);
                    // The wake-up the sleeping core checks (sched) before it halts.
                    self.vcpus.resume(l);
                }
                None => {
                    self.bad_messages.fetch_add(1, Ordering::Relaxed);
                }
            },
            GuestMsg::TimeProbe { .. }
            | GuestMsg::TimeReply { .. }
            | GuestMsg::PortWrite { .. }
            | GuestMsg::PortRead { .. }
            | GuestMsg::MmioWrite { .. }
            | GuestMsg::MmioRead { .. }
            | GuestMsg::DeviceReply { .. } => {
                self.bad_messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Machine for Vm {
    fn vcpus(&self) -> u32 {
        self.shape.vcpus()
    }

    fn shared(&self, vcpu: usize) -> &vlapic::Shared {
        &self.vcpus.shared[vcpu - self.base]
    }

    fn stats(&self, vcpu: usize) -> &VcpuStats {
        &self.vcpus.stats[vcpu - self.base]
    }

    fn ipi(&self, from: usize, to: usize, kind: IpiKind) {
        match self.local(to) {
            Some(l) => {
                deliver_ipi(&self.vcpus.shared[l], kind);
                if to != from {
                    self.vcpus.kick(l);
                }
            }
            None => {
                if let Some(node) = self.shape.node_of_vcpu(to as u32) {
                    self.post(node, &GuestMsg::Ipi { to: to as u32, kind });
                }
            }
        }
    }

    fn node(&self) -> u16 {
        self.me
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn stop(&self, me: usize, v: Verdict) {
        self.end(me, v, true);
    }

    fn kick(&self, vcpu: usize) {
        if let Some(l) = self.local(vcpu) {
            self.vcpus.kick(l);
        }
    }

    fn now(&self) -> u64 {
        rdtsc()
    }

    fn tsc_offset(&self) -> u64 {
        self.tsc_offset.load(Ordering::SeqCst)
    }

    fn tsc_hz(&self) -> u64 {
        guest_tsc_hz()
    }

    fn host_cpuid(&self, leaf: u32, sub: u32) -> Regs4 {
        vmx::host_cpuid(leaf, sub)
    }

    fn port(&self, vcpu: usize, port: u16, size: u8, dir: IoDir, value: u32) -> Option<u32> {
        if self.primary() {
            return Some(self.device_access(vcpu, port, size, dir, value));
        }
        // The devices live on the primary. Writes are posted (the outbox keeps their order
        // with this vCPU's later accesses); a read parks the vCPU until the primary answers.
        let v = vcpu as u32;
        match dir {
            IoDir::Out => {
                self.device_writes.fetch_add(1, Ordering::Relaxed);
                self.post(0, &GuestMsg::PortWrite { vcpu: v, port, size, value });
                Some(0)
            }
            IoDir::In => {
                self.forward_read(vcpu, &GuestMsg::PortRead { vcpu: v, port, size });
                None
            }
        }
    }

    fn take_device_reply(&self, vcpu: usize) -> Option<u64> {
        let l = self.local(vcpu)?;
        let r = self.device_reply[l].lock().take()?;
        // The reply's wake-up (see `receive`) is consumed with it.
        self.vcpus.take_resume(l);
        Some(r)
    }

    fn is_mmio(&self, gpa: u64) -> bool {
        // The I/O APIC's page lies in the MMIO hole above guest RAM: never mapped, emulated.
        gpa & !0xfff == acpi::IOAPIC_GPA
    }

    fn mmio_read(&self, vcpu: usize, gpa: u64, size: u8) -> Option<u64> {
        if self.primary() {
            return Some(self.device_mmio_read(gpa));
        }
        self.forward_read(vcpu, &GuestMsg::MmioRead { vcpu: vcpu as u32, gpa, size });
        None
    }

    fn mmio_write(&self, vcpu: usize, gpa: u64, size: u8, value: u64) {
        if self.primary() {
            self.device_mmio_write(vcpu, gpa, value);
        } else {
            self.device_writes.fetch_add(1, Ordering::Relaxed);
            self.post(0, &GuestMsg::MmioWrite { vcpu: vcpu as u32, gpa, size, value });
        }
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.mem.read(gpa, buf)
    }

    fn nested_fault(&self, vcpu: usize, gpa: u64, write: bool, exec: bool) -> Fault {
        if gpa >= self.mem.ram {
            return Fault::Deny("EPT violation outside guest memory (denied)");
        }
        let mut here = self.here();
        let now = time::uptime_us();
        let fault =
            self.coherent.lock().fault(&mut here, Gfn(gpa / 4096), write, VcpuId(vcpu as u16), now);
        crate::debug!("hv: vcpu {vcpu} npf gpa {gpa:#x} write {write} exec {exec}: {fault:?}");
        self.mem.count_fault();
        if self.mem.lost_pages() != 0 {
            return Fault::Deny(
                "a guest page found no frame on this node (cache invariant broken)",
            );
        }
        match fault {
            // Its request waits in the outbox: the service core sends it now, not at its tick.
            Fault::Wait => crate::arch::idle::wake_service_core(),
            Fault::Deny(what) => error!("hv: vcpu {vcpu}: cannot map gpa {gpa:#x}: {what}"),
            Fault::Mapped => {}
        }
        fault
    }

    fn entering(&self, vcpu: usize) -> u64 {
        self.vcpus.entering(vcpu - self.base)
    }

    fn flushed(&self, vcpu: usize, generation: u64) {
        self.vcpus.flushed(vcpu - self.base, generation);
    }

    fn left(&self, vcpu: usize) {
        self.vcpus.left(vcpu - self.base);
    }

    fn take_resume(&self, vcpu: usize) -> bool {
        self.vcpus.take_resume(vcpu - self.base)
    }

    fn faults(&self) -> u64 {
        self.mem.faults()
    }

    fn test_hooks(&self) -> bool {
        self.test.is_some()
    }

    fn protect(&self, gpa: u64, rights: u64) -> bool {
        let ok = self.mem.protect(gpa, rights);
        if ok {
            // Rights went down: no vCPU may keep the old translation.
            self.vcpus.flush_barrier();
        }
        ok
    }

    fn take_host_interrupt(&self) {
        // The host interrupt is still pending at the local APIC: let it in.
        x86_64::instructions::interrupts::enable();
        core::hint::spin_loop();
        x86_64::instructions::interrupts::disable();
    }

    fn report_fatal(&self, vcpu: usize, what: &str, exit: &Exit, s: &Snapshot, r: &Regs) {
        error!("hv: vcpu {vcpu} {what}: {exit:?}");
        error!(
            "hv:   rip {:#018x} rsp {:#018x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            s.rip, s.rsp, s.rflags, s.cr0, s.cr3, s.cr4, s.efer
        );
        error!(
            "hv:   cs {:#06x} base {:#x} limit {:#x} ar {:#x}; ss {:#06x} ar {:#x}; interruptibility {:#x}",
            s.cs.0, s.cs.1, s.cs.2, s.cs.3, s.ss.0, s.ss.3, s.interruptibility
        );
        error!(
            "hv:   rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        );
        error!(
            "hv:   r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
        );
    }

    fn trace(&self, vcpu: usize, exit: &Exit) {
        crate::console::serial::log(
            crate::console::log::Level::Trace,
            format_args!("hv: vcpu {vcpu} exit {exit:?}"),
        );
    }
}

/// The node loop hands over a message from node `from`; false when it is not a guest message
/// (then it is the tools'). Guest messages that arrive before this node's guest exists are
/// held in order for it.
pub fn deliver(from: u16, bytes: &[u8]) -> bool {
    let Some((stamp, msg)) = cluster::decode(bytes) else {
        let ours = bytes.first() == Some(&cluster::TAG);
        if let Some(vm) = VM.get().filter(|_| ours) {
            vm.bad_messages.fetch_add(1, Ordering::Relaxed);
        }
        return ours;
    };
    match VM.get() {
        Some(vm) => vm.receive(from, stamp, msg),
        None => {
            let mut e = EARLY.lock();
            if e.held + bytes.len() <= EARLY_LIMIT {
                e.held += bytes.len();
                e.queue.push_back((from, bytes.to_vec()));
            } else {
                e.dropped += 1;
                if e.dropped == 1 {
                    error!(
                        "hv: guest messages from node {from} dropped: the guest is not started here yet and {} KiB already wait",
                        EARLY_LIMIT >> 10
                    );
                }
            }
        }
    }
    true
}

/// Hands the guest the messages that came before it existed.
pub(super) fn deliver_early(vm: &Vm) {
    let early = core::mem::take(&mut EARLY.lock().queue);
    for (from, bytes) in early {
        if let Some((stamp, msg)) = cluster::decode(&bytes) {
            vm.receive(from, stamp, msg);
        }
    }
}

/// The next guest message for the transport: (node, bytes).
pub fn next_outgoing() -> Option<(u16, Vec<u8>)> {
    let vm = VM.get()?;
    // The outbox (IPIs, console lines, the guest's end, clock probes) goes before coherence
    // traffic made after it: a line a vCPU printed before writing memory must reach the
    // primary before the page does, or the console would show it after what the write caused.
    // The transport keeps each peer's order.
    let (to, mut bytes) = if let Some(m) = vm.retry.lock().take() {
        m
    } else if let Some(m) = vm.outbox.lock().pop_front() {
        m
    } else {
        // Already framed as a guest message (`cluster::COHERENCE_PREFIX`).
        let (to, bytes) = vm.coherent.lock().next_outgoing()?;
        (u16::from(to.0), bytes)
    };
    // Stamped as it leaves: later than anything a vCPU here read before the message was made.
    cluster::stamp(&mut bytes, vm.guest_tsc());
    Some((to, bytes))
}

/// The transport has taken `bytes` (a copy): the buffer serves a later coherence message.
pub fn recycle_outgoing(bytes: Vec<u8>) {
    if let Some(vm) = VM.get() {
        vm.coherent.lock().recycle(bytes);
    }
}

/// Guest messages wait for the transport.
pub fn has_outgoing() -> bool {
    VM.get().is_some_and(|vm| {
        vm.retry.lock().is_some()
            || !vm.outbox.lock().is_empty()
            || vm.coherent.lock().has_outgoing()
    })
}

/// The transport could not take `bytes` for `to` now: it goes first next time.
pub fn push_back_outgoing(to: u16, bytes: Vec<u8>) {
    if let Some(vm) = VM.get() {
        *vm.retry.lock() = Some((to, bytes));
    }
}

/// The transport declared `node` down: a guest that spans it cannot go on.
pub fn peer_lost(node: u16) {
    let Some(vm) = VM.get() else { return };
    if vm.stopped() || vm.shape.share(node).is_none() {
        return;
    }
    error!("hv: node {node} stopped answering: the guest is stopped on every node");
    vm.end(vm.base, Verdict::Fatal("a node of the guest stopped answering"), true);
}

/// The `vcpu` shell command: each vCPU's state, node, host CPU and exit counts by reason, the
/// coherence engine's counters, and the ports the guest touched that no device answers.
pub fn print_vcpus() {
    let Some(vm) = VM.get() else {
        kprintln!("no vCPUs: {}", status());
        return;
    };
    kprintln!("{}", super::sched::backend_line());
    let verdict = *vm.verdict.lock();
    kprintln!(
        "guest: {} vCPUs, {} MiB RAM on {} node(s), {} nested page faults served here, {} resets, {}",
        vm.shape.vcpus(),
        vm.mem.ram >> 20,
        vm.shape.nodes(),
        vm.mem.faults(),
        super::sched::resets(),
        match verdict {
            None => "running".into(),
            Some(Verdict::Exit(c)) => alloc::format!("exited with code {c:#x}"),
            Some(Verdict::Fatal(w)) => alloc::format!("stopped: {w}"),
        }
    );
    {
        let co = vm.coherent.lock();
        let (c, g) = (co.counters(), co.stats());
        kprintln!(
            "memory: coherence engine, node {} of {}: {} read and {} write faults ({} local hits, {} spurious, {} coalesced), {} messages and {} pages sent, {} flush barriers, {} stalls over 2 s, {} protocol errors, {} bad messages",
            vm.me,
            vm.shape.nodes(),
            c.read_faults,
            c.write_faults,
            c.local_hits,
            c.spurious,
            c.coalesced,
            c.sent,
            c.pages_sent,
            g.barriers,
            g.stalls,
            g.protocol_errors,
            vm.bad_messages.load(Ordering::Relaxed)
        );
    }
    for s in &vm.shape.shares {
        if s.node == vm.me {
            continue;
        }
        for v in s.vcpu_base..s.vcpu_base + s.vcpus {
            kprintln!("vcpu {v} node {}", s.node);
        }
    }
    for (i, s) in vm.vcpus.stats.iter().enumerate() {
        let mut line = alloc::format!(
            "vcpu {} node {} cpu {} {} rip {:#x} exits {}",
            vm.base + i,
            vm.me,
            s.cpu.load(Ordering::Relaxed),
            s.state().name(),
            s.rip.load(Ordering::Relaxed),
            s.total()
        );
        for (k, name) in stats::NAMES.iter().enumerate() {
            let n = s.exits[k].load(Ordering::Relaxed);
            if n != 0 {
                line += &alloc::format!(" {name} {n}");
            }
        }
        let gp = s.msr_gp.load(Ordering::Relaxed);
        if gp != 0 {
            line += &alloc::format!(
                " msr-#gp {gp} (last {:#x})",
                s.last_msr_gp.load(Ordering::Relaxed)
            );
        }
        kprintln!("{line}");
    }
    let unclaimed = vm.devices.lock().unclaimed.clone();
    if !unclaimed.ports.is_empty() {
        let mut line = alloc::string::String::from("unclaimed ports:");
        for (port, n) in &unclaimed.ports {
            line += &alloc::format!(" {port:#x}×{n}");
        }
        if unclaimed.other != 0 {
            line += &alloc::format!(" others×{}", unclaimed.other);
        }
        kprintln!("{line}");
    }
}

/// The `stats` shell command: this node's remote-fault profile; `reset` clears it.
pub fn print_stats(reset: bool) {
    let Some(vm) = VM.get() else {
        kprintln!("no guest: {}", status());
        return;
    };
    let mut co = vm.coherent.lock();
    if reset {
        co.reset_fault_stats();
        kprintln!("stats: cleared");
        return;
    }
    let c = *co.counters();
    let s = co.fault_stats().clone();
    drop(co);
    kprintln!(
        "stats: node {} of {}: {} remote faults (read miss {}, write miss {}, upgrade {}, 3-hop {}); {} local hits",
        vm.me,
        vm.shape.nodes(),
        s.remote_faults(),
        s.read_miss,
        s.write_miss,
        s.upgrade,
        s.three_hop,
        c.local_hits
    );
    kprintln!(
        "stats: coherence messages sent {} received {}, pages sent {} received {}, invalidations sent {} received {}",
        s.messages_out,
        s.messages_in,
        s.pages_out,
        s.pages_in,
        c.invalidations,
        s.invalidations_in
    );
    let mut hist = alloc::string::String::from("stats: remote-fault latency (µs):");
    for (i, n) in s.latency.iter().enumerate().filter(|(_, n)| **n != 0) {
        hist += &alloc::format!(" {}-{} {n};", 1u64 << i, (1u64 << (i + 1)) - 1);
    }
    match s.median_us() {
        Some(m) => hist += &alloc::format!(" median in {m}-{} µs", 2 * m - 1),
        None => hist += " none served yet",
    }
    kprintln!("{hist}");
    let mut mean = alloc::string::String::from("stats: mean remote-fault latency:");
    for (class, name) in faultstats::CLASSES {
        match s.mean_us(class) {
            Some((us, n)) => mean += &alloc::format!(" {name} {us} µs ({n});"),
            None => mean += &alloc::format!(" {name} none;"),
        }
    }
    kprintln!("{mean}");
    let mut hot = alloc::string::String::from("stats: hottest pages:");
    for (gfn, n) in s.hottest(10) {
        hot += &alloc::format!(" {:#x} ×{n}", gfn * 4096);
    }
    kprintln!("{hot}");
    let (used, cap, _) = vm.mem.cache_use();
    kprintln!(
        "stats: guest RAM {} MiB, {} MiB homed here; cache of pages homed elsewhere: {used} of {cap} frames in use, {} evictions",
        vm.mem.ram >> 20,
        vm.shape.share(vm.me).map_or(0, |x| x.ram_bytes >> 20),
        c.evictions
    );
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    if vm.primary() {
        let lost = vm.devices.lock().uart.lost();
        kprintln!(
            "stats: devices: the guest's devices are here; {} accesses served for vCPUs on other nodes; {lost} console bytes lost to a full UART receive FIFO",
            n(&vm.devices_served)
        );
    } else {
        kprintln!(
            "stats: devices: on node 0; {} reads sent there (ports and I/O APIC; each parks its vCPU for the answer), {} writes posted",
            n(&vm.device_reads),
            n(&vm.device_writes)
        );
    }
    let retried = super::svm::hw::UNREADABLE.load(Ordering::Relaxed);
    if retried > 0 {
        kprintln!(
            "stats: svm: {retried} #UD exits run again because another node took the instruction's bytes before they were decoded"
        );
    }
    print_time(vm);
}

/// The `stats` line on guest time: how far this node's clock is from the primary's.
fn print_time(vm: &Vm) {
    let hz = u128::from(time::tsc_hz().max(1));
    let us = |t: u64| (u128::from(t) * 1_000_000 / hz) as u64;
    let steps = vm.time_steps.load(Ordering::Relaxed);
    let stepped = alloc::format!(
        "{steps} forward steps to message stamps ahead of this clock (largest {} µs)",
        us(vm.time_step_max.load(Ordering::Relaxed))
    );
    match vm.sync.lock().as_ref() {
        None => kprintln!("stats: guest time: this node's clock is the reference; {stepped}"),
        Some(s) => {
            let (probes, lost) = s.probes();
            match s.last() {
                Some(k) => kprintln!(
                    "stats: guest time: skew to node 0 {}{} µs ±{} µs at the last probe, largest since the first setting {} µs; {probes} probes ({lost} unanswered); {stepped}",
                    if k.behind > 0 { "-" } else { "+" },
                    us(k.behind.unsigned_abs()),
                    us(k.uncertainty),
                    us(s.worst())
                ),
                None => kprintln!(
                    "stats: guest time: no probe of node 0's clock answered yet ({probes} sent); {stepped}"
                ),
            }
        }
    }
}

/// Guest time dilation (`dilation=`): one second of the guest's clock lasts this many of the
/// node's. The guest's TSC ticks at the node's rate but is declared this many times faster
/// (CPUID 15H/16H and 4000_0001H), and every clock device counts from it, so the guest's
/// clocks agree with each other and run this many times slower than the node's. Its network
/// then looks this many times faster: time dilation, for emulated nodes whose network is
/// ~1000 times slower next to their CPUs than a real one (docs/design.md §6).
static DILATION: AtomicU64 = AtomicU64::new(1);

/// Sets the guest time dilation before the guest starts; a factor whose declared TSC rate
/// would not fit CPUID 15H's 32 bits (where the guest sees that leaf) is lowered to the
/// largest that does, and said.
pub fn set_dilation(factor: u64) {
    let max_basic = crate::arch::cpu::cpuid(0, 0).eax;
    let d = super::cpuid::fitting_dilation(factor, time::tsc_hz(), max_basic);
    if d != factor {
        error!("hv: dilation={factor} would declare a TSC above 4.29 GHz: dilation={d} instead");
    }
    if d > 1 {
        info!("hv: guest time dilated {d}x: one second of the guest's clock lasts {d} s here");
    }
    DILATION.store(d, Ordering::SeqCst);
}

/// The guest time dilation ([`set_dilation`]).
pub fn dilation() -> u64 {
    DILATION.load(Ordering::Relaxed)
}

/// The TSC rate the guest is told and its clock devices count by: the node's, times the
/// dilation.
pub fn guest_tsc_hz() -> u64 {
    time::tsc_hz().saturating_mul(dilation())
}

/// Sets the residency hold of pages that just arrived (`hold=`).
pub fn set_hold_us(us: u64) {
    if let Some(vm) = VM.get() {
        vm.coherent.lock().set_hold(us);
    }
}

/// Time for the coherence engine (holds, stall reports) and the clock probes, from the node
/// loop.
pub fn tick(now_us: u64) {
    if let Some(vm) = VM.get() {
        let mut here = vm.here();
        vm.coherent.lock().timer(&mut here, now_us);
        if !vm.stopped() {
            vm.probe_time();
        }
    }
}

/// Test hook (`tscskew=`): the primary's guest clock jumps `ticks` ahead.
pub fn skew_for_test(ticks: u64) {
    if let Some(vm) = VM.get().filter(|vm| vm.primary()) {
        let off = vm.tsc_offset.load(Ordering::SeqCst);
        vm.advance_offset(off.wrapping_add(ticks));
        info!("hv: test: the guest clock starts {ticks} ticks ahead of the host's");
    }
}
