//! The guest machine on this node and the per-vCPU exit loop: guest RAM from the guest pool
//! behind EPT, the Multiboot load, one vCPU pinned per core (the BSP interleaves vCPU 0 with the
//! shell; APs get theirs through a mailbox), and the dispatch on the neutral [`Exit`] —
//! CPUID, MSRs and the virtual x2APIC, port I/O (UART, debug exit), HLT, hypercalls, nested
//! page faults through a [`FaultHandler`], INIT/SIPI, and fatal exits with a register dump.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use spin::{Mutex, Once};

use super::cpuid::{self, Topology};
use super::ept::{self, Ept, EptError, NestedPaging};
use super::hypercall;
use super::loader;
use super::stats::{self, State, VcpuStats};
use super::uart::Uart;
use super::vlapic::{self, Dest, Effect, IpiKind};
use super::vmx::hw::{self as vmx, VmxVcpu};
use super::{Breakage, Exit, IoDir, Vcpu};
use crate::arch::{apic, cpu::rdtsc, idt::WAKE_VECTOR, power, time};
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::{alloc_zeroed, IdentityTables};
use crate::paging::{MapError, MapStats};
use crate::{error, info, kprintln, warn};

/// Most vCPUs (and CPUs) one node runs.
pub const MAX_VCPUS: usize = 64;
/// Guest RAM when the pool allows.
const GUEST_RAM: u64 = 64 << 20;
/// The top of guest RAM that starts unmapped and is mapped page by page on first touch
/// (the path the coherence engine's fetches will take).
const LAZY: u64 = 4 << 20;
/// Guest time between returns to the node loop.
const SLICE_US: u64 = 2000;
const MIB2: u64 = 2 << 20;

/// Guest debug-exit port: a write ends the guest with that exit code (0 = success).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
const COM1: u16 = 0x3f8;

/// How a nested page fault is answered (the hook the coherence engine will implement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Map the page at `hpa` with `rights`.
    Map {
        /// Host-physical frame.
        hpa: u64,
        /// EPT rights.
        rights: u64,
    },
    /// The page is here; widen its rights.
    Grant {
        /// EPT rights.
        rights: u64,
    },
    /// The page is elsewhere and being fetched: the vCPU retries later.
    Fetch,
    /// No such memory: the guest is stopped.
    Deny,
}

/// Decides nested page faults.
pub trait FaultHandler {
    /// Fault at `gpa`; `current` = the mapping (host frame, rights) if any.
    fn resolve(&self, gpa: u64, write: bool, exec: bool, current: Option<(u64, u64)>)
        -> Resolution;
}

/// A single node's policy: all of guest RAM is local; unmapped pages are mapped on demand,
/// rights are granted in full; anything outside RAM is denied.
struct LocalMemory<'a>(&'a Vm);

impl FaultHandler for LocalMemory<'_> {
    fn resolve(&self, gpa: u64, _w: bool, _x: bool, current: Option<(u64, u64)>) -> Resolution {
        if gpa >= self.0.ram {
            return Resolution::Deny;
        }
        match current {
            Some(_) => Resolution::Grant { rights: ept::RWX },
            None => Resolution::Map { hpa: self.0.hpa(gpa & !0xfff), rights: ept::RWX },
        }
    }
}

/// The guest's EPT behind the [`NestedPaging`] seam: the fault handler's answers and the
/// hypercalls change it only through this.
struct GuestEpt<'a>(&'a Vm);

impl NestedPaging for GuestEpt<'_> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, rights: u64) -> Result<MapStats, MapError> {
        let mut g = self.0.ept.lock();
        let (ept, tm) = &mut *g;
        ept.map(tm, gpa, hpa, len, rights)
    }

    fn set_rights(&mut self, gpa: u64, rights: u64) -> Result<(), EptError> {
        let mut g = self.0.ept.lock();
        let (ept, tm) = &mut *g;
        ept.set_rights(tm, gpa, rights)
    }

    fn invalidate(&mut self) {
        // Each vCPU compares generations before entering and runs INVEPT when behind; the
        // kick makes running ones exit now.
        self.0.ept_gen.fetch_add(1, Ordering::SeqCst);
        self.0.kick_others(usize::MAX);
    }
}

/// EPT tables in frames from the reserve.
type Reserve = IdentityTables<&'static Mutex<FrameAllocator>>;

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It asked to exit (debug port or hypercall) with this code.
    Exit(u32),
    /// The hypervisor stopped it: what happened.
    Fatal(&'static str),
}

/// The guest machine of this node.
pub struct Vm {
    /// vCPUs.
    pub vcpus: u32,
    /// Bytes of guest RAM at guest-physical 0.
    pub ram: u64,
    chunks: Vec<u64>,
    ept: Mutex<(Ept, Reserve)>,
    eptp: u64,
    ept_gen: AtomicU64,
    faults: AtomicU64,
    shared: [vlapic::Shared; MAX_VCPUS],
    /// Per-vCPU counters.
    pub stats: [VcpuStats; MAX_VCPUS],
    host_apic: [AtomicU32; MAX_VCPUS],
    uart: Mutex<Uart>,
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
static BSP_RUNNER: Mutex<Option<Runner>> = Mutex::new(None);
static AP_CPUS: Mutex<heapless::Vec<(usize, u32), MAX_VCPUS>> = Mutex::new(heapless::Vec::new());
static MAILBOX: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// Cores in VMX root operation, by APIC id (low 8 bits).
static VMXON_DONE: [AtomicBool; 256] = [const { AtomicBool::new(false) }; 256];
static VMX_CORES: AtomicU32 = AtomicU32::new(0);

/// Why no guest runs.
pub fn status() -> &'static str {
    STATUS.get().copied().unwrap_or("no guest started")
}

impl Vm {
    fn hpa(&self, gpa: u64) -> u64 {
        self.chunks[(gpa / MIB2) as usize] + gpa % MIB2
    }

    fn write_guest(&self, gpa: u64, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            let g = gpa + done as u64;
            let n = ((MIB2 - g % MIB2) as usize).min(bytes.len() - done);
            // SAFETY: guest RAM chunks are pool frames owned by this VM, identity-mapped; the
            // range stays inside one chunk.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), self.hpa(g) as *mut u8, n);
            }
            done += n;
        }
    }

    fn kick(&self, vcpu: usize) {
        if vcpu < self.vcpus as usize {
            apic::send_ipi(self.host_apic[vcpu].load(Ordering::SeqCst), WAKE_VECTOR);
        }
    }

    fn kick_others(&self, me: usize) {
        for i in (0..self.vcpus as usize).filter(|i| *i != me) {
            self.kick(i);
        }
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
        self.stats[me].set_state(State::Stopped);
        self.kick_others(me);
        if let Some(line) = self.uart.lock().take_partial() {
            info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
        }
        match v {
            Verdict::Exit(code) => info!("hv: guest exited with code {code:#x}"),
            Verdict::Fatal(what) => error!("hv: guest stopped: {what}"),
        }
        let ticks = rdtsc().wrapping_sub(self.start_tsc.load(Ordering::Relaxed));
        let exits: u64 = (0..self.vcpus as usize).map(|i| self.stats[i].total()).sum();
        let hz = time::tsc_hz().max(1);
        let us = (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64;
        info!(
            "hv: {exits} VM exits in {}.{:03} s of guest time: {} exits/s, {} nested page faults",
            us / 1_000_000,
            us / 1000 % 1000,
            u128::from(exits) * 1_000_000 / u128::from(us.max(1)),
            self.faults.load(Ordering::Relaxed)
        );
        if let Some(t) = self.test {
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
    /// EPT tables could not be built.
    Ept(EptError),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmError::Vmx(e) => write!(f, "{e}"),
            VmError::Load(e) => write!(f, "guest module: {e}"),
            VmError::Memory(w) => write!(f, "{w}"),
            VmError::Ept(e) => write!(f, "EPT: {e}"),
        }
    }
}

/// Boot-time check: prints one line saying whether this node can run guests.
pub fn probe() -> bool {
    match vmx::detect() {
        Ok(p) => {
            let c = p.ctl;
            info!(
                "hv: VMX ready: EPT, unrestricted guest{}{}, VMCS revision {:#x}",
                if c.vpid { ", VPID" } else { "" },
                if c.preemption_timer { ", preemption timer" } else { "" },
                p.revision
            );
            if let Err(e) = vmxon_here() {
                error!("hv: boot CPU: {e}");
            }
            crate::debug!(
                "hv: caps basic {:#x} pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x} misc {:#x} ept {:#x}",
                p.caps.basic, p.caps.pin, p.caps.proc, p.caps.proc2, p.caps.exit, p.caps.entry,
                p.caps.misc, p.caps.ept_vpid
            );
            true
        }
        Err(e) => {
            warn!("hv: {e}; the console still works, guests are disabled");
            STATUS.call_once(|| "VMX unavailable on this CPU");
            false
        }
    }
}

fn alloc_frame(frames: &Mutex<FrameAllocator>) -> Result<u64, VmError> {
    alloc_zeroed(&mut frames.lock(), 1, 4096).ok_or(VmError::Memory("reserve exhausted"))
}

/// Enters VMX root operation on this core once, with a VMXON region from the heap (which is
/// identity-mapped RAM of the reserve, so its address is physical).
fn vmxon_here() -> Result<(), VmError> {
    let slot = &VMXON_DONE[(apic::id() & 0xff) as usize];
    if slot.load(Ordering::SeqCst) {
        return Ok(());
    }
    let p = vmx::detect().map_err(VmError::Vmx)?;
    let layout =
        core::alloc::Layout::from_size_align(4096, 4096).map_err(|_| VmError::Memory("layout"))?;
    // SAFETY: a non-zero-sized layout; the region is leaked: VMX owns it for the core's life.
    let region = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
    if region == 0 {
        return Err(VmError::Memory("no heap for a VMXON region"));
    }
    vmx::vmxon(p, region).map_err(VmError::Vmx)?;
    slot.store(true, Ordering::SeqCst);
    VMX_CORES.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// The MSR bitmap: everything intercepted except the syscall/segment-base MSRs that only the
/// guest uses (one vCPU per core, the host never touches them) (SDM Vol. 3C §25.6.9).
fn msr_bitmap(frames: &Mutex<FrameAllocator>) -> Result<u64, VmError> {
    let page = alloc_frame(frames)?;
    // SAFETY: the page is ours and identity-mapped.
    let bm = unsafe { core::slice::from_raw_parts_mut(page as *mut u8, 4096) };
    bm.fill(0xff);
    let mut pass = |msr: u32| {
        let (base, bit) = if msr >= 0xC000_0000 { (1024, msr - 0xC000_0000) } else { (0, msr) };
        for half in [0, 2048] {
            bm[base + half + (bit / 8) as usize] &= !(1 << (bit % 8));
        }
    };
    for msr in [
        0x174,
        0x175,
        0x176,
        0xC000_0081,
        0xC000_0082,
        0xC000_0083,
        0xC000_0084,
        0xC000_0100,
        0xC000_0101,
        0xC000_0102,
        0xC000_0103,
    ] {
        pass(msr);
    }
    Ok(page)
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
    let aps: heapless::Vec<(usize, u32), MAX_VCPUS> = AP_CPUS.lock().clone();
    let vcpus = (aps.len() + 1).min(MAX_VCPUS) as u32;

    // Guest RAM: 2 MiB chunks of the pool.
    let mut chunks = Vec::new();
    for r in pool {
        let mut a = r.start.next_multiple_of(MIB2);
        while a + MIB2 <= r.end && (chunks.len() as u64) * MIB2 < GUEST_RAM {
            chunks.push(a);
            a += MIB2;
        }
    }
    let ram = chunks.len() as u64 * MIB2;
    if ram < 8 << 20 || kernel.end() > ram - LAZY {
        return Err(VmError::Memory("the guest pool is too small for the guest"));
    }
    let mut tm = IdentityTables(frames);
    let ept = Ept::new(&mut tm).map_err(|e| VmError::Ept(e.into()))?;
    for (i, c) in chunks.iter().enumerate() {
        let gpa = i as u64 * MIB2;
        if gpa + MIB2 <= ram - LAZY {
            ept.map(&mut tm, gpa, *c, MIB2, ept::RWX).map_err(|e| VmError::Ept(e.into()))?;
        }
    }
    let bitmap = msr_bitmap(frames)?;
    let vm = VM.call_once(|| Vm {
        vcpus,
        ram,
        chunks,
        eptp: ept.eptp(),
        ept: Mutex::new((ept, tm)),
        ept_gen: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        shared: [const { vlapic::Shared::NEW }; MAX_VCPUS],
        stats: [const { VcpuStats::NEW }; MAX_VCPUS],
        host_apic: [const { AtomicU32::new(0) }; MAX_VCPUS],
        uart: Mutex::new(Uart::default()),
        stopped: AtomicBool::new(false),
        verdict: Mutex::new(None),
        start_tsc: AtomicU64::new(rdtsc()),
        entry: kernel.entry,
        msr_bitmap: bitmap,
        frames,
        test,
    });

    for c in &vm.chunks {
        // SAFETY: guest RAM chunks are pool frames owned by the VM, identity-mapped.
        unsafe { core::ptr::write_bytes(*c as *mut u8, 0, MIB2 as usize) };
    }
    for s in &kernel.segments {
        vm.write_guest(s.gpa, &image[s.offset..s.offset + s.filesz]);
    }
    vm.write_guest(loader::MBI_GPA, &loader::boot_info(ram, cmdline));
    info!(
        "hv: guest '{}' loaded: entry {:#x}, {} MiB RAM ({} MiB mapped on demand), {} vCPUs",
        cmdline,
        kernel.entry,
        ram >> 20,
        LAZY >> 20,
        vcpus
    );

    quiet_legacy_pic();
    vm.host_apic[0].store(apic::id(), Ordering::SeqCst);
    for (k, (_, apic_id)) in aps.iter().enumerate() {
        vm.host_apic[k + 1].store(*apic_id, Ordering::SeqCst);
        vm.stats[k + 1].set_state(State::WaitForSipi);
    }
    let bsp = Runner::new(vm, 0, 0)?;
    *BSP_RUNNER.lock() = Some(bsp);
    for (k, (index, apic_id)) in aps.iter().enumerate() {
        MAILBOX[*index].store(k as u32 + 1, Ordering::SeqCst);
        apic::send_ipi(*apic_id, WAKE_VECTOR);
    }
    STATUS.call_once(|| "guest running");
    Ok(vm)
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

/// One vCPU with its local APIC, on the core that runs it.
struct Runner {
    v: VmxVcpu,
    id: usize,
    apic: vlapic::Local,
    state: State,
    pat: u64,
    mtrr_def: u64,
    efer: u64,
    apic_base: u64,
}

enum Step {
    Continue,
    Yield,
    Idle,
    Stopped,
}

impl Runner {
    fn new(vm: &'static Vm, id: usize, cpu: usize) -> Result<Runner, VmError> {
        vmxon_here()?;
        let p = vmx::detect().map_err(VmError::Vmx)?;
        let vmcs = alloc_frame(vm.frames)?;
        let mut v =
            VmxVcpu::new(p, id as u32, vmcs, vm.eptp, vm.msr_bitmap).map_err(VmError::Vmx)?;
        let state = if id == 0 {
            v.enter_protected_mode(vm.entry);
            let r = v.regs();
            r.rax = u64::from(loader::BOOT_MAGIC);
            r.rbx = loader::MBI_GPA;
            State::Running
        } else {
            State::WaitForSipi
        };
        vm.stats[id].cpu.store(cpu as u32, Ordering::Relaxed);
        vm.stats[id].set_state(state);
        let apic_base = 0xFEE0_0000 | (1 << 11) | (1 << 10) | if id == 0 { 1 << 8 } else { 0 };
        Ok(Runner {
            v,
            id,
            apic: vlapic::Local::new(id as u32),
            state,
            pat: 0x0007_0406_0007_0406,
            mtrr_def: 0,
            efer: 0,
            apic_base,
        })
    }

    fn set_state(&mut self, vm: &Vm, s: State) {
        self.state = s;
        vm.stats[self.id].set_state(s);
    }

    /// Runs until the next exit (handled), entering the guest at most until TSC `slice_end`.
    fn step(&mut self, vm: &Vm, slice_end: u64) -> Step {
        if vm.stopped.load(Ordering::SeqCst) {
            self.set_state(vm, State::Stopped);
            return Step::Stopped;
        }
        let shared = &vm.shared[self.id];
        let s = shared.startup.swap(0, Ordering::SeqCst);
        if s & 1 != 0 {
            shared.reset();
            self.apic = vlapic::Local::new(self.id as u32);
            self.set_state(vm, State::WaitForSipi);
        }
        if s & 0x100 != 0 && self.state == State::WaitForSipi {
            self.v.enter_sipi(s as u8);
            self.efer = 0;
            self.set_state(vm, State::Running);
        }
        if self.state == State::WaitForSipi {
            return Step::Idle;
        }
        let now = rdtsc();
        self.apic.poll_timer(shared, now);
        let pending = self.apic.deliverable(shared);
        if self.state == State::Halted {
            if pending.is_none() {
                return Step::Idle;
            }
            self.set_state(vm, State::Running);
        }
        if let Some(vec) = pending {
            if self.v.interruptible() {
                self.v.inject_interrupt(vec);
                self.apic.accept(shared, vec);
                self.v.set_interrupt_window(false);
            } else {
                self.v.set_interrupt_window(true);
            }
        }
        let gen = vm.ept_gen.load(Ordering::SeqCst);
        if self.v.ept_gen != gen {
            self.v.flush_nested();
            self.v.ept_gen = gen;
        }
        let until_timer = self.apic.deadline().map_or(u64::MAX, |d| d.saturating_sub(now));
        self.v.set_time_slice(slice_end.saturating_sub(now).min(until_timer).max(1));
        let exit = self.v.run();
        let st = &vm.stats[self.id];
        st.count(exit.kind());
        crate::console::serial::log(
            crate::console::log::Level::Trace,
            format_args!("hv: vcpu {} exit {exit:?}", self.id),
        );
        self.handle(vm, exit)
    }

    fn fatal(&mut self, vm: &Vm, what: &'static str, exit: &Exit) -> Step {
        let s = self.v.snapshot();
        let r = *self.v.regs();
        error!("hv: vcpu {} {what}: {exit:?}", self.id);
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
        self.set_state(vm, State::Stopped);
        vm.stop(self.id, Verdict::Fatal(what));
        Step::Stopped
    }

    fn handle(&mut self, vm: &Vm, exit: Exit) -> Step {
        match exit {
            Exit::Preempted => {
                // Where the guest is, for `vcpu` (sampled once a slice, not on every exit).
                vm.stats[self.id].rip.store(self.v.snapshot().rip, Ordering::Relaxed);
                Step::Yield
            }
            Exit::Interrupt => {
                // The host interrupt is still pending at the local APIC: let it in.
                x86_64::instructions::interrupts::enable();
                core::hint::spin_loop();
                x86_64::instructions::interrupts::disable();
                Step::Yield
            }
            Exit::InterruptWindow => {
                self.v.set_interrupt_window(false);
                Step::Continue
            }
            Exit::Hlt => {
                vm.stats[self.id].rip.store(self.v.snapshot().rip, Ordering::Relaxed);
                self.v.skip_instruction();
                if self.apic.deliverable(&vm.shared[self.id]).is_none() {
                    self.set_state(vm, State::Halted);
                    return Step::Idle;
                }
                Step::Continue
            }
            Exit::Cpuid { leaf, sub } => {
                let t = Topology { vcpus: vm.vcpus, tsc_hz: time::tsc_hz() };
                let a = cpuid::answer(leaf, sub, vmx::host_cpuid(leaf, sub), self.id as u32, &t);
                let r = self.v.regs();
                (r.rax, r.rbx, r.rcx, r.rdx) =
                    (a.eax.into(), a.ebx.into(), a.ecx.into(), a.edx.into());
                self.v.skip_instruction();
                Step::Continue
            }
            Exit::Hypercall { nr } => self.hypercall(vm, nr),
            Exit::Io { port, size, dir, string } => {
                if string {
                    return self.fatal(vm, "string port I/O is not emulated", &exit);
                }
                self.io(vm, port, size, dir);
                self.v.skip_instruction();
                if vm.stopped.load(Ordering::SeqCst) {
                    return Step::Stopped;
                }
                Step::Continue
            }
            Exit::Msr { msr, write } => self.msr(vm, msr, write),
            Exit::CrAccess { cr, write } => {
                if let Some(v) = write {
                    self.v.set_cr(cr, v);
                }
                self.v.skip_instruction();
                Step::Continue
            }
            Exit::NestedPageFault { gpa, write, exec, .. } => {
                self.nested_fault(vm, gpa, write, exec, &exit)
            }
            Exit::Exception { .. } | Exit::Init | Exit::Sipi { .. } => Step::Continue,
            Exit::TripleFault => self.fatal(vm, "triple fault", &exit),
            Exit::InvalidGuestState { what, .. } => self.fatal(vm, what, &exit),
            Exit::EntryFailed { what, .. } => self.fatal(vm, what, &exit),
            Exit::Other { what, .. } => self.fatal(vm, what, &exit),
        }
    }

    fn nested_fault(&mut self, vm: &Vm, gpa: u64, write: bool, exec: bool, exit: &Exit) -> Step {
        let page = gpa & !0xfff;
        let current = {
            let g = vm.ept.lock();
            g.0.translate(&g.1, page)
        };
        let res = LocalMemory(vm).resolve(gpa, write, exec, current);
        // Mapping or widening rights needs no invalidation: the violation itself dropped the
        // stale translation (SDM Vol. 3C §29.4.3.1).
        let mut n = GuestEpt(vm);
        let done = match res {
            Resolution::Map { hpa, rights } => {
                n.map(page, hpa, 0x1000, rights).map(|_| ()).map_err(EptError::from)
            }
            Resolution::Grant { rights } => n.set_rights(page, rights),
            Resolution::Fetch => return Step::Yield,
            Resolution::Deny => {
                return self.fatal(vm, "EPT violation outside guest memory (denied)", exit);
            }
        };
        if let Err(e) = done {
            error!("hv: vcpu {}: cannot map gpa {gpa:#x}: {e}", self.id);
            return self.fatal(vm, "EPT update failed", exit);
        }
        vm.faults.fetch_add(1, Ordering::Relaxed);
        crate::debug!("hv: vcpu {} npf gpa {gpa:#x} write {write} exec {exec}: {res:?}", self.id);
        Step::Continue
    }

    fn hypercall(&mut self, vm: &Vm, nr: u64) -> Step {
        let (rbx, rcx) = (self.v.regs().rbx, self.v.regs().rcx);
        let ret = match nr {
            hypercall::VERSION => u64::from(cpuid::ABI_VERSION),
            hypercall::EXIT => {
                self.v.skip_instruction();
                vm.stop(self.id, Verdict::Exit(rbx as u32));
                self.set_state(vm, State::Stopped);
                return Step::Stopped;
            }
            hypercall::TSC_HZ => time::tsc_hz(),
            hypercall::NOP => 0,
            hypercall::PROTECT => {
                let mut n = GuestEpt(vm);
                match n.set_rights(rbx & !0xfff, rcx & ept::RWX) {
                    Ok(()) => {
                        // Rights went down: every vCPU flushes before its next entry.
                        n.invalidate();
                        0
                    }
                    Err(_) => u64::MAX,
                }
            }
            hypercall::FAULTS => vm.faults.load(Ordering::Relaxed),
            hypercall::BREAK => {
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

    fn io(&mut self, vm: &Vm, port: u16, size: u8, dir: IoDir) {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        let val = self.v.regs().rax & mask;
        let result: u64 = match (port, dir) {
            (COM1..=0x3ff, IoDir::In) => u64::from(vm.uart.lock().read(port - COM1)),
            (COM1..=0x3ff, IoDir::Out) => {
                if let Some(line) = vm.uart.lock().write(port - COM1, val as u8) {
                    info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
                }
                return;
            }
            (DEBUG_EXIT_PORT, IoDir::Out) => {
                vm.stop(self.id, Verdict::Exit(val as u32));
                return;
            }
            (_, IoDir::In) => mask,
            (_, IoDir::Out) => return,
        };
        let r = self.v.regs();
        r.rax = (r.rax & !mask) | (result & mask);
    }

    fn msr(&mut self, vm: &Vm, msr: u32, write: Option<u64>) -> Step {
        let now = rdtsc();
        let shared = &vm.shared[self.id];
        let ok = match write {
            None => {
                let v = match msr {
                    0x10 => Some(now),
                    0x1B => Some(self.apic_base),
                    0x3A => Some(1),
                    0x1A0 => Some(1),
                    0xFE => Some(0),
                    0x277 => Some(self.pat),
                    0x2FF => Some(self.mtrr_def),
                    0xC000_0080 => Some(self.efer),
                    vlapic::MSR_FIRST..=vlapic::MSR_LAST | vlapic::MSR_TSC_DEADLINE => {
                        self.apic.read(shared, msr, now)
                    }
                    _ => None,
                };
                if let Some(v) = v {
                    let r = self.v.regs();
                    r.rax = v & 0xffff_ffff;
                    r.rdx = v >> 32;
                }
                v.is_some()
            }
            Some(v) => match msr {
                0x1B => {
                    self.apic_base = (self.apic_base & !0xc00) | (v & 0xc00);
                    true
                }
                0x277 => {
                    self.pat = v;
                    true
                }
                0x2FF => {
                    self.mtrr_def = v;
                    true
                }
                0xC000_0080 => {
                    self.efer = v;
                    self.v.set_efer(v);
                    true
                }
                vlapic::MSR_FIRST..=vlapic::MSR_LAST | vlapic::MSR_TSC_DEADLINE => {
                    match self.apic.write(shared, msr, v, now) {
                        Ok(Effect::Ipi(dest, kind)) => {
                            self.ipi(vm, dest, kind);
                            true
                        }
                        Ok(_) => true,
                        Err(vlapic::Gp) => false,
                    }
                }
                _ => true,
            },
        };
        if !ok {
            self.v.inject_exception(13, Some(0));
            return Step::Continue;
        }
        self.v.skip_instruction();
        Step::Continue
    }

    fn ipi(&mut self, vm: &Vm, dest: Dest, kind: IpiKind) {
        let n = vm.vcpus as usize;
        let me = self.id;
        let targets = (0..n).filter(|&i| match dest {
            Dest::One(id) => i == id as usize,
            Dest::Me => i == me,
            Dest::All => true,
            Dest::Others => i != me,
        });
        for t in targets {
            let sh = &vm.shared[t];
            match kind {
                IpiKind::Fixed(v) => sh.raise(v),
                IpiKind::Init => {
                    sh.startup.fetch_or(1, Ordering::SeqCst);
                }
                IpiKind::Startup(v) => {
                    sh.startup.fetch_or(0x100 | u32::from(v), Ordering::SeqCst);
                }
            }
            if t != me {
                vm.kick(t);
            }
        }
    }
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
            Step::Continue => return,
            Step::Yield | Step::Idle => return,
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
        if let Err(e) = vmxon_here() {
            error!("hv: cpu {index}: {e}");
        }
    }
    if index < MAX_VCPUS {
        let _ = AP_CPUS.lock().push((index, apic::id()));
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
    let mut r = match Runner::new(vm, id, index) {
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
                } else if vm.shared[id].highest().is_none()
                    && vm.shared[id].startup.load(Ordering::SeqCst) == 0
                    && !vm.stopped.load(Ordering::SeqCst)
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
    if VM.get().is_none() {
        return false;
    }
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
    if let Some(vm) = VM.get() {
        let _ = vm.uart.lock().push_input(b);
    }
    true
}

/// The `vcpu` shell command: each vCPU's state, host CPU and exit counts by reason.
pub fn print_vcpus() {
    let Some(vm) = VM.get() else {
        kprintln!("no vCPUs: {}", status());
        return;
    };
    kprintln!("VMX root operation on {} cores", VMX_CORES.load(Ordering::SeqCst));
    let verdict = *vm.verdict.lock();
    kprintln!(
        "guest: {} vCPUs, {} MiB RAM, {} nested page faults served, {}",
        vm.vcpus,
        vm.ram >> 20,
        vm.faults.load(Ordering::Relaxed),
        match verdict {
            None => "running".into(),
            Some(Verdict::Exit(c)) => alloc::format!("exited with code {c:#x}"),
            Some(Verdict::Fatal(w)) => alloc::format!("stopped: {w}"),
        }
    );
    for i in 0..vm.vcpus as usize {
        let s = &vm.stats[i];
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
}

/// The identity-mapped bytes of a boot module.
///
/// # Safety
/// `r` must be a module range the loader reported, below the identity-mapped limit.
pub unsafe fn module_bytes(r: Region) -> &'static [u8] {
    // SAFETY: guaranteed by the caller; modules are excluded from every allocator.
    unsafe { core::slice::from_raw_parts(r.start as *const u8, r.len() as usize) }
}
