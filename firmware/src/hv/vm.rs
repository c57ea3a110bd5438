//! The guest machine on this node and its scheduling: the [`Vm`] (guest memory, devices,
//! virtual APICs, counters) implementing the dispatch's [`Machine`], the Multiboot load, and
//! one vCPU pinned per core — the BSP interleaves vCPU 0 with the shell, APs get theirs through
//! a mailbox. The exit dispatch itself is generic and lives in `dispatch`.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use spin::{Mutex, Once};

use gestalt_coherence::{Config, Gfn, NodeId, VcpuId};

use super::coherent::{Coherent, Served};
use super::cpuid::Regs4;
use super::devices::{Devices, PortEffect};
use super::dispatch::{Fault, Machine, Runner, Start, Step, Verdict};
use super::loader;
use super::memory::{GuestMemory, Here};
use super::stats::{self, State, VcpuStats};
use super::vcpus::VcpuSet;
use super::vlapic;
use super::vmx::hw::{self as vmx, VmxVcpu};
use super::vmx::root;
use super::{Exit, IoDir, Regs, Snapshot};
use crate::arch::{apic, cpu::rdtsc, idt::WAKE_VECTOR, power, smp, time};
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::alloc_zeroed;
use crate::{error, info, kprintln};

/// Most vCPUs (and CPUs) one node runs: the CPUs the MADT parse keeps.
pub const MAX_VCPUS: usize = crate::acpi::MAX_CPUS;
/// Guest RAM when the pool allows.
const GUEST_RAM: u64 = 64 << 20;
/// Guest time between returns to the node loop.
const SLICE_US: u64 = 2000;
/// How long `start` waits for every online AP to report for work.
const AP_REGISTER_US: u64 = 2_000_000;

/// The guest machine of this node.
pub struct Vm {
    mem: GuestMemory,
    vcpus: VcpuSet,
    coherent: Mutex<Coherent>,
    devices: Mutex<Devices>,
    stopped: AtomicBool,
    verdict: Mutex<Option<Verdict>>,
    start_tsc: AtomicU64,
    entry: u32,
    msr_bitmap: u64,
    frames: &'static Mutex<FrameAllocator>,
    test: Option<&'static str>,
}

static VM: Once<Vm> = Once::new();
static STATUS: Once<&'static str> = Once::new();
static FOCUS: AtomicBool = AtomicBool::new(false);
static BSP_RUNNER: Mutex<Option<Runner<VmxVcpu>>> = Mutex::new(None);
/// APs ready for a vCPU: (CPU index, APIC id).
static AP_CPUS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());
static MAILBOX: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

/// Why no guest runs.
pub fn status() -> &'static str {
    STATUS.get().copied().unwrap_or("no guest started")
}

impl Vm {
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
}

impl Machine for Vm {
    fn vcpus(&self) -> u32 {
        self.vcpus.len() as u32
    }

    fn shared(&self, vcpu: usize) -> &vlapic::Shared {
        &self.vcpus.shared[vcpu]
    }

    fn stats(&self, vcpu: usize) -> &VcpuStats {
        &self.vcpus.stats[vcpu]
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn stop(&self, me: usize, v: Verdict) {
        {
            let mut g = self.verdict.lock();
            if g.is_some() {
                return;
            }
            *g = Some(v);
        }
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.vcpus.stats.get(me) {
            s.set_state(State::Stopped);
        }
        self.vcpus.kick_others(me);
        if let Some(line) = self.devices.lock().uart.take_partial() {
            info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
        }
        match v {
            Verdict::Exit(code) => info!("hv: guest exited with code {code:#x}"),
            Verdict::Fatal(what) => error!("hv: guest stopped: {what}"),
        }
        self.print_summary();
        if let Some(t) = self.test {
            self.test_verdict(t, v);
        }
    }

    fn kick(&self, vcpu: usize) {
        self.vcpus.kick(vcpu);
    }

    fn now(&self) -> u64 {
        rdtsc()
    }

    fn tsc_hz(&self) -> u64 {
        time::tsc_hz()
    }

    fn host_cpuid(&self, leaf: u32, sub: u32) -> Regs4 {
        vmx::host_cpuid(leaf, sub)
    }

    fn port(&self, vcpu: usize, port: u16, size: u8, dir: IoDir, value: u32) -> u32 {
        let (v, effect) = self.devices.lock().access(port, size, dir, value);
        match effect {
            PortEffect::None => {}
            PortEffect::Line(line) => {
                info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
            }
            PortEffect::Exit(code) => self.stop(vcpu, Verdict::Exit(code)),
        }
        v
    }

    fn nested_fault(&self, vcpu: usize, gpa: u64, write: bool, exec: bool) -> Fault {
        if gpa >= self.mem.ram {
            return Fault::Deny("EPT violation outside guest memory (denied)");
        }
        let mut here = Here { mem: &self.mem, vcpus: &self.vcpus };
        let served =
            self.coherent.lock().fault(&mut here, Gfn(gpa / 4096), write, VcpuId(vcpu as u16));
        crate::debug!("hv: vcpu {vcpu} npf gpa {gpa:#x} write {write} exec {exec}: {served:?}");
        self.mem.count_fault();
        match served {
            Served::Now => Fault::Mapped,
            Served::Later => Fault::Wait,
            Served::Failed(what) => {
                error!("hv: vcpu {vcpu}: cannot map gpa {gpa:#x}: {what}");
                Fault::Deny("EPT update failed")
            }
        }
    }

    fn entering(&self, vcpu: usize) -> u64 {
        self.vcpus.entering(vcpu)
    }

    fn flushed(&self, vcpu: usize, generation: u64) {
        self.vcpus.flushed(vcpu, generation);
    }

    fn left(&self, vcpu: usize) {
        self.vcpus.left(vcpu);
    }

    fn take_resume(&self, vcpu: usize) -> bool {
        self.vcpus.take_resume(vcpu)
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

/// Why a guest could not be set up.
#[derive(Debug)]
pub enum VmError {
    /// VMX missing or unusable.
    Vmx(vmx::VmxError),
    /// The guest module is not a loadable Multiboot kernel.
    Load(loader::LoadError),
    /// Not enough guest pool or reserve.
    Memory(&'static str),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmError::Vmx(e) => write!(f, "{e}"),
            VmError::Load(e) => write!(f, "guest module: {e}"),
            VmError::Memory(w) => write!(f, "{w}"),
        }
    }
}

/// Boot-time check: prints one line saying whether this node can run guests.
pub fn probe() -> bool {
    let ok = root::probe().is_ok();
    if !ok {
        STATUS.call_once(|| "VMX unavailable on this CPU");
    }
    ok
}

/// Waits (bounded) until every AP that came online has reported for work, and names the ones
/// that did not: a slow AP must not be left out silently.
fn registered_aps() -> Vec<(usize, u32)> {
    let want = (smp::ONLINE.load(Ordering::SeqCst) as usize).saturating_sub(1);
    let deadline = time::uptime_us() + AP_REGISTER_US;
    while AP_CPUS.lock().len() < want && time::uptime_us() < deadline {
        core::hint::spin_loop();
    }
    let mut aps = AP_CPUS.lock().clone();
    if aps.len() < want {
        error!(
            "hv: {} of {want} online APs did not report for work in {} s; the guest runs without them",
            want - aps.len(),
            AP_REGISTER_US / 1_000_000
        );
    }
    aps.sort_unstable();
    aps.truncate(MAX_VCPUS - 1);
    aps
}

/// Builds the guest from the boot module (RAM from the pool, EPT, Multiboot load) and starts
/// its vCPUs: vCPU 0 on this CPU (the BSP), the others on the APs. `cmdline` is the module's.
pub fn start(
    frames: &'static Mutex<FrameAllocator>,
    pool: &[Region],
    image: &[u8],
    cmdline: &str,
    test: Option<&'static str>,
) -> Result<&'static Vm, VmError> {
    vmx::detect().map_err(VmError::Vmx)?;
    let kernel = loader::parse(image).map_err(VmError::Load)?;
    let aps = registered_aps();
    let vcpus = aps.len() + 1;

    let mem = GuestMemory::new(frames, pool, GUEST_RAM, 8 << 20)
        .map_err(|_| VmError::Memory("the guest pool is too small for the guest"))?;
    if kernel.end() > mem.ram {
        return Err(VmError::Memory("the guest pool is too small for the guest"));
    }
    let bitmap = root::msr_bitmap(frames).map_err(VmError::Vmx)?;
    let ram = mem.ram;
    // One node: every page is homed here and every fault a local hit, through the same engine
    // a cluster uses.
    let coherent = Coherent::new(NodeId(0), Config::ranges(1, mem.pages()));
    let vm = VM.call_once(|| Vm {
        mem,
        vcpus: VcpuSet::new(vcpus),
        coherent: Mutex::new(coherent),
        devices: Mutex::new(Devices::default()),
        stopped: AtomicBool::new(false),
        verdict: Mutex::new(None),
        start_tsc: AtomicU64::new(rdtsc()),
        entry: kernel.entry,
        msr_bitmap: bitmap,
        frames,
        test,
    });

    for s in &kernel.segments {
        // The loader checked every segment against `kernel.end()`, which is below RAM.
        vm.mem.write(s.gpa, &image[s.offset..s.offset + s.filesz]);
    }
    vm.mem.write(loader::MBI_GPA, &loader::boot_info(ram, cmdline));
    info!(
        "hv: guest '{}' loaded: entry {:#x}, {} MiB RAM ({} MiB mapped on demand), {} vCPUs",
        cmdline,
        kernel.entry,
        ram >> 20,
        ram >> 20,
        vcpus
    );

    quiet_legacy_pic();
    vm.vcpus.place(0, apic::id());
    for (k, (_, apic_id)) in aps.iter().enumerate() {
        vm.vcpus.place(k + 1, *apic_id);
        vm.vcpus.stats[k + 1].set_state(State::WaitForSipi);
    }
    let start = Start::ProtectedMode {
        eip: vm.entry,
        rax: u64::from(loader::BOOT_MAGIC),
        rbx: loader::MBI_GPA,
    };
    let bsp = runner(vm, 0, 0, start)?;
    *BSP_RUNNER.lock() = Some(bsp);
    for (k, (index, apic_id)) in aps.iter().enumerate() {
        MAILBOX[*index].store(k as u32 + 1, Ordering::SeqCst);
        apic::send_ipi(*apic_id, WAKE_VECTOR);
    }
    STATUS.call_once(|| "guest running");
    Ok(vm)
}

/// A VMX vCPU `id` on this core (CPU index `cpu`).
fn runner(vm: &Vm, id: usize, cpu: usize, start: Start) -> Result<Runner<VmxVcpu>, VmError> {
    root::vmxon_here().map_err(VmError::Vmx)?;
    let p = vmx::detect().map_err(VmError::Vmx)?;
    let vmcs =
        alloc_zeroed(&mut vm.frames.lock(), 1, 4096).ok_or(VmError::Memory("reserve exhausted"))?;
    let v = VmxVcpu::new(p, id as u32, vmcs, vm.mem.eptp(), vm.msr_bitmap).map_err(VmError::Vmx)?;
    Ok(Runner::new(vm, v, id, cpu, start))
}

/// The BSP now takes interrupts (host IPIs exit the guest and are handled with IF set):
/// move the 8259 PICs off the exception vectors (to 0x20-0x2F) and mask them, so a BIOS-left
/// PIT tick is never mistaken for a double fault (8259A datasheet, ICW1-ICW4).
fn quiet_legacy_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: 0x20/0x21 and 0xA0/0xA1 are the PC's two 8259s; the firmware uses the local APIC
    // only, so remapping and masking them takes nothing away.
    unsafe {
        let (mut c1, mut d1) = (Port::<u8>::new(0x20), Port::<u8>::new(0x21));
        let (mut c2, mut d2) = (Port::<u8>::new(0xA0), Port::<u8>::new(0xA1));
        c1.write(0x11);
        c2.write(0x11);
        d1.write(0x20);
        d2.write(0x28);
        d1.write(4);
        d2.write(2);
        d1.write(1);
        d2.write(1);
        d1.write(0xff);
        d2.write(0xff);
    }
}

fn slice_ticks() -> u64 {
    time::tsc_hz().max(1_000_000) / 1_000_000 * SLICE_US
}

/// Runs vCPU 0 on the BSP for one time slice (or not at all while it waits); the shell calls
/// this between console polls.
pub fn bsp_slice() {
    let Some(vm) = VM.get() else { return };
    let mut g = BSP_RUNNER.lock();
    let Some(r) = g.as_mut() else { return };
    // The slice is absolute: a guest exiting often (polling a port) still hands the CPU back.
    let end = rdtsc() + slice_ticks();
    loop {
        match r.step(vm, end) {
            Step::Continue if rdtsc() < end => {}
            Step::Continue | Step::Yield | Step::Idle => return,
            Step::Stopped => {
                *g = None;
                return;
            }
        }
    }
}

/// An AP reports for work (from its idle loop).
pub fn ap_register(index: usize) {
    // VMXON on every core as it comes up, when the boot CPU found VMX usable.
    if vmx::platform().is_some() {
        if let Err(e) = root::vmxon_here() {
            error!("hv: cpu {index}: {e}");
        }
    }
    if index < MAX_VCPUS {
        AP_CPUS.lock().push((index, apic::id()));
    } else {
        error!("hv: cpu {index} is beyond the {MAX_VCPUS} vCPUs a node runs; it stays idle");
    }
}

/// An AP runs the vCPU posted to it, if any, until that vCPU stops. Called with interrupts
/// disabled.
pub fn ap_poll(index: usize) {
    let Some(slot) = MAILBOX.get(index) else { return };
    let job = slot.swap(0, Ordering::SeqCst);
    if job == 0 {
        return;
    }
    let Some(vm) = VM.get() else { return };
    let id = job as usize;
    let mut r = match runner(vm, id, index, Start::WaitForSipi) {
        Ok(r) => r,
        Err(e) => {
            error!("hv: vcpu {id} cannot start on cpu {index}: {e}");
            return;
        }
    };
    loop {
        match r.step(vm, rdtsc() + slice_ticks()) {
            Step::Continue | Step::Yield => {}
            Step::Idle => {
                // Sleep until a kick (IPI) unless a timer is due soon: then spin to it.
                if r.apic.deadline().is_some() {
                    core::hint::spin_loop();
                } else if vm.vcpus.shared[id].highest().is_none()
                    && !vm.vcpus.shared[id].startup_pending()
                    && !vm.vcpus.resume_pending(id)
                    && !vm.stopped()
                {
                    x86_64::instructions::interrupts::enable_and_hlt();
                    x86_64::instructions::interrupts::disable();
                }
            }
            Step::Stopped => return,
        }
    }
}

/// Console byte for the guest when it has the focus (Ctrl-] switches); true when consumed.
pub fn console_input(b: u8) -> bool {
    let Some(vm) = VM.get() else { return false };
    if b == 0x1d {
        let now = !FOCUS.fetch_xor(true, Ordering::SeqCst);
        kprintln!(
            "\r\nhv: console input goes to {} (Ctrl-] switches)",
            if now { "the guest's UART" } else { "the shell" }
        );
        return true;
    }
    if !FOCUS.load(Ordering::SeqCst) {
        return false;
    }
    let _ = vm.devices.lock().uart.push_input(b);
    true
}

/// The `vcpu` shell command: each vCPU's state, host CPU and exit counts by reason, and the
/// ports the guest touched that no device answers.
pub fn print_vcpus() {
    let Some(vm) = VM.get() else {
        kprintln!("no vCPUs: {}", status());
        return;
    };
    kprintln!("VMX root operation on {} cores", root::cores());
    let verdict = *vm.verdict.lock();
    kprintln!(
        "guest: {} vCPUs, {} MiB RAM, {} nested page faults served, {}",
        vm.vcpus.len(),
        vm.mem.ram >> 20,
        vm.mem.faults(),
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
            "memory: coherence engine, node 0 of 1: {} read and {} write faults ({} local hits, {} spurious, {} coalesced), {} messages and {} pages sent, {} flush barriers, {} protocol errors",
            c.read_faults,
            c.write_faults,
            c.local_hits,
            c.spurious,
            c.coalesced,
            c.sent,
            c.pages_sent,
            g.barriers,
            g.protocol_errors
        );
    }
    for (i, s) in vm.vcpus.stats.iter().enumerate() {
        let mut line = alloc::format!(
            "vcpu {i} cpu {} {} rip {:#x} exits {}",
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

/// The identity-mapped bytes of a boot module.
///
/// # Safety
/// `r` must be a module range the loader reported, below the identity-mapped limit.
pub unsafe fn module_bytes(r: Region) -> &'static [u8] {
    // SAFETY: guaranteed by the caller; modules are excluded from every allocator.
    unsafe { core::slice::from_raw_parts(r.start as *const u8, r.len() as usize) }
}
