//! Starting this node's share of the guest and running its vCPUs: one vCPU pinned per core.
//! Alone, the boot CPU interleaves vCPU 0 with the shell; in a cluster it is the service core
//! (network, console, coherence engine) and every vCPU runs on an AP, taking its job from a
//! mailbox, unless the node has a single core. The backend (VMX or SVM) is chosen once, by
//! what the boot CPU has.

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use spin::{Mutex, Once};

use gestalt_coherence::{Config, NodeId};

use super::cluster::Shape;
use super::coherent::Coherent;
use super::dispatch::{Machine, Runner, Start, Step, Verdict};
use super::memory::GuestMemory;
use super::stats::State;
use super::svm::hw::{self as svm, SvmVcpu};
use super::vm::{deliver_early, Vm, VM};
use super::vmx::hw::{self as vmx, VmxVcpu};
use super::vmx::root;
use super::{acpi, linux, loader};
use super::{Breakage, Exit, Regs, Snapshot, Vcpu};
use crate::arch::{apic, cpu::rdtsc, idt::WAKE_VECTOR, smp, time};
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::alloc_zeroed;
use crate::{error, info, kprintln};

/// Most vCPUs (and CPUs) one node runs: the CPUs the MADT parse keeps.
pub const MAX_VCPUS: usize = crate::acpi::MAX_CPUS;
/// Guest time between returns to the node loop.
const SLICE_US: u64 = 2000;
/// A request for a page waiting this long is counted as a stall (`vcpu`).
const STALL_US: u64 = 2_000_000;
/// How long `start` waits for every online AP to report for work.
const AP_REGISTER_US: u64 = 2_000_000;
/// Guest output without a newline (a shell's prompt) this old is shown while the console
/// input goes to the guest.
const PROMPT_QUIET_US: u64 = 100_000;

static STATUS: Once<&'static str> = Once::new();
/// How the guest's first vCPU starts (Multiboot or Linux entry), set by the primary.
static BOOT: Once<Start> = Once::new();
static FOCUS: AtomicBool = AtomicBool::new(false);
static BSP_RUNNER: Mutex<Option<Runner<AnyVcpu>>> = Mutex::new(None);
/// APs ready for a vCPU: (CPU index, APIC id).
static AP_CPUS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());
/// Per AP (by CPU index): the global vCPU id + 1 it is to run, 0 for none.
static MAILBOX: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

/// What the primary wrote into guest RAM before the first entry, written again at a reset:
/// (gpa, bytes) pieces and (gpa, bytes) ranges to zero (a Multiboot kernel's bss).
struct Load {
    writes: Vec<(u64, Cow<'static, [u8]>)>,
    zero: Vec<(u64, u64)>,
}

static LOAD: Once<Load> = Once::new();
/// Guest resets: the number asked for and the number carried out. A vCPU whose runner was
/// built before the last one asked parks until it is carried out (see [`reset`]).
static RESET_ASKED: AtomicU32 = AtomicU32::new(0);
static RESET_DONE: AtomicU32 = AtomicU32::new(0);
/// APs running a vCPU, and how many of them are parked for the reset asked.
static SEATED: AtomicU32 = AtomicU32::new(0);
static PARKED: AtomicU32 = AtomicU32::new(0);
/// The reset the boot CPU's runner was built after.
static BSP_EPOCH: AtomicU32 = AtomicU32::new(0);
/// The UART's sent count when last looked at, and since when (µs) it has not moved.
static PROMPT: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// Why no guest runs.
pub fn status() -> &'static str {
    STATUS.get().copied().unwrap_or("no guest started")
}

/// Why a guest could not be set up.
#[derive(Debug)]
pub enum VmError {
    /// VMX missing or unusable.
    Vmx(vmx::VmxError),
    /// SVM missing or unusable.
    Svm(svm::SvmError),
    /// Neither backend is usable on this CPU.
    NoBackend,
    /// The guest module is not a loadable Multiboot kernel.
    Load(loader::LoadError),
    /// The guest module is a Linux bzImage that cannot be booted here.
    Linux(linux::BootError),
    /// Not enough guest pool or reserve.
    Memory(&'static str),
    /// This node is not in the guest's shape.
    NotMember(u16),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmError::Vmx(e) => write!(f, "{e}"),
            VmError::Svm(e) => write!(f, "{e}"),
            VmError::NoBackend => write!(f, "no hardware virtualization on this CPU"),
            VmError::Load(e) => write!(f, "guest module: {e}"),
            VmError::Linux(e) => write!(f, "guest module: {e}"),
            VmError::Memory(w) => write!(f, "{w}"),
            VmError::NotMember(n) => write!(f, "node {n} has no share of the guest"),
        }
    }
}

/// The hardware virtualization this node runs its guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Intel VMX with EPT.
    Vmx,
    /// AMD SVM with nested paging.
    Svm,
}

static BACKEND: Once<Backend> = Once::new();

/// The backend the boot-time probe chose, if any.
pub fn backend() -> Option<Backend> {
    BACKEND.get().copied()
}

/// Boot-time check: prints one line saying whether this node can run guests and with which
/// backend (VMX where the CPU has it, else SVM).
pub fn probe() -> bool {
    let chosen = if crate::arch::cpu::has_vmx() {
        root::probe().is_ok().then_some(Backend::Vmx)
    } else if svm::has_svm() {
        probe_svm().then_some(Backend::Svm)
    } else {
        crate::warn!(
            "hv: this CPU has neither VMX (Intel VT-x) nor SVM (AMD-V); the console still works, guests are disabled"
        );
        None
    };
    match chosen {
        Some(b) => {
            BACKEND.call_once(|| b);
            true
        }
        None => {
            STATUS.call_once(|| "no usable VMX or SVM on this CPU");
            false
        }
    }
}

fn probe_svm() -> bool {
    let p = match svm::detect() {
        Ok(p) => p,
        Err(e) => {
            crate::warn!("hv: {e}; the console still works, guests are disabled");
            return false;
        }
    };
    info!(
        "hv: SVM ready: nested paging, {} ASIDs, revision {}, {}{}",
        p.asids,
        p.revision,
        if p.nrips { "next RIP from the CPU (NRIPS)" } else { "next RIP decoded (no NRIPS)" },
        if p.flush_by_asid { ", flush by ASID" } else { "" }
    );
    if let Err(e) = svm::enable_here() {
        error!("hv: boot CPU: {e}");
    }
    true
}

/// One line for `vcpu`: the backend and the cores it is enabled on.
pub fn backend_line() -> alloc::string::String {
    match backend() {
        Some(Backend::Vmx) => alloc::format!("VMX root operation on {} cores", root::cores()),
        Some(Backend::Svm) => alloc::format!("SVM enabled on {} cores", svm::cores()),
        None => alloc::string::String::from("no hardware virtualization"),
    }
}

/// The backend's vCPU: one type for the scheduler, whichever backend the node runs.
pub enum AnyVcpu {
    /// On VMX.
    Vmx(VmxVcpu),
    /// On SVM.
    Svm(SvmVcpu),
}

macro_rules! each {
    ($self:ident, $v:ident => $e:expr) => {
        match $self {
            AnyVcpu::Vmx($v) => $e,
            AnyVcpu::Svm($v) => $e,
        }
    };
}

impl Vcpu for AnyVcpu {
    fn run(&mut self) -> Exit {
        each!(self, v => v.run())
    }
    fn regs(&mut self) -> &mut Regs {
        each!(self, v => v.regs())
    }
    fn skip_instruction(&mut self) {
        each!(self, v => v.skip_instruction());
    }
    fn advance_rip(&mut self, len: u64) {
        each!(self, v => v.advance_rip(len));
    }
    fn snapshot(&self) -> Snapshot {
        each!(self, v => v.snapshot())
    }
    fn interruptible(&self) -> bool {
        each!(self, v => v.interruptible())
    }
    fn inject_interrupt(&mut self, vector: u8) {
        each!(self, v => v.inject_interrupt(vector));
    }
    fn nmi_allowed(&self) -> bool {
        each!(self, v => v.nmi_allowed())
    }
    fn inject_nmi(&mut self) {
        each!(self, v => v.inject_nmi());
    }
    fn set_interrupt_window(&mut self, on: bool) {
        each!(self, v => v.set_interrupt_window(on));
    }
    fn set_time_slice(&mut self, tsc_ticks: u64) {
        each!(self, v => v.set_time_slice(tsc_ticks));
    }
    fn set_efer(&mut self, efer: u64) {
        each!(self, v => v.set_efer(efer));
    }
    fn set_pat(&mut self, pat: u64) {
        each!(self, v => v.set_pat(pat));
    }
    fn set_cr(&mut self, cr: u8, val: u64) {
        each!(self, v => v.set_cr(cr, val));
    }
    fn enter_protected_mode(&mut self, eip: u32) {
        each!(self, v => v.enter_protected_mode(eip));
    }
    fn enter_sipi(&mut self, vector: u8) {
        each!(self, v => v.enter_sipi(vector));
    }
    fn flush_nested(&mut self) {
        each!(self, v => v.flush_nested());
    }
    fn set_xcr0(&mut self, value: u64) {
        each!(self, v => v.set_xcr0(value));
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        each!(self, v => v.set_tsc_offset(offset));
    }
    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        each!(self, v => v.inject_exception(vector, error));
    }
    fn break_for_test(&mut self, what: Breakage) {
        each!(self, v => v.break_for_test(what));
    }
}

/// Waits (bounded) until every AP that came online has reported for work, and names the ones
/// that did not: a slow AP must not be left out silently.
pub fn registered_aps() -> Vec<(usize, u32)> {
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

/// Builds this node's share of the guest `shape` (node `me`) and starts its vCPUs. The primary
/// (node 0) loads the boot module as the guest kernel into the RAM it is home of, and its first
/// vCPU enters it; every other vCPU waits for a start-up IPI. `cmdline` is the module's. A
/// Linux bzImage boots through the Linux boot protocol with `initrd` (the next module, empty
/// for none) and ACPI tables of the guest's shape; anything else as a Multiboot kernel.
#[allow(clippy::too_many_arguments)]
pub fn start(
    frames: &'static Mutex<FrameAllocator>,
    pool: &[Region],
    image: &'static [u8],
    initrd: &'static [u8],
    cmdline: &'static str,
    test: Option<&'static str>,
    shape: Shape,
    me: u16,
    aps: &[(usize, u32)],
) -> Result<&'static Vm, VmError> {
    let (format, bitmap) = match backend() {
        Some(Backend::Vmx) => {
            vmx::detect().map_err(VmError::Vmx)?;
            (&super::ept::EPT, root::msr_bitmap(frames).map_err(VmError::Vmx)?)
        }
        Some(Backend::Svm) => {
            svm::detect().map_err(VmError::Svm)?;
            svm::maps(frames).map_err(VmError::Svm)?;
            (&super::npt::NPT, 0)
        }
        None => return Err(VmError::NoBackend),
    };
    let share = *shape.share(me).ok_or(VmError::NotMember(me))?;
    let ram = shape.ram();
    let linux = if me == 0 && linux::is_bzimage(image) {
        let domains: Vec<acpi::Domain> = shape
            .shares
            .iter()
            .map(|s| acpi::Domain {
                first_vcpu: s.vcpu_base,
                vcpus: s.vcpus,
                ram_base: s.ram_base,
                ram_bytes: s.ram_bytes,
            })
            .collect();
        let args = linux::kernel_cmdline(cmdline);
        let boot = linux::prepare(image, initrd, args, ram, share.ram_bytes, &domains);
        Some(boot.map_err(VmError::Linux)?)
    } else {
        None
    };
    let kernel = if me == 0 && linux.is_none() {
        Some(loader::parse(image).map_err(VmError::Load)?)
    } else {
        None
    };
    let cache_frames = shape.cache_frames(me);
    let home = (share.ram_base, share.ram_bytes);
    let mem = GuestMemory::new(frames, pool, ram, home, cache_frames, format)
        .map_err(|_| VmError::Memory("the guest pool cannot hold this node's share and cache"))?;
    if kernel.as_ref().is_some_and(|k| k.end() > share.ram_bytes) {
        return Err(VmError::Memory("the guest kernel does not fit the primary's share of RAM"));
    }
    let table: Vec<(u64, u64, NodeId)> = shape
        .home_table()
        .into_iter()
        .map(|(first, count, node)| (first, count, NodeId(node.min(255) as u8)))
        .collect();
    let cfg = Config::table(shape.nodes(), &table)
        .map_err(|_| VmError::Memory("the guest's home ranges do not form a table"))?;
    let mut coherent =
        Coherent::new(NodeId(me.min(255) as u8), cfg).with_prefix(super::cluster::COHERENCE_PREFIX);
    coherent.set_hold(super::vm::DEFAULT_HOLD_US);
    coherent.set_stall_after(STALL_US);
    if cache_frames > 0 {
        // The engine may exceed its limit by the faults in flight: one per local vCPU.
        coherent.set_cache_limit(cache_frames.saturating_sub(share.vcpus as usize + 1).max(1));
    }
    let entry = kernel.as_ref().map(|k| k.entry).or(linux.as_ref().map(|l| l.entry)).unwrap_or(0);
    let vm = VM.call_once(|| Vm::new(me, shape, mem, coherent, entry, bitmap, frames, test));

    if let Some(k) = &kernel {
        // The loader checked every segment against `kernel.end()`, inside the share.
        let mut writes: Vec<(u64, Cow<'static, [u8]>)> = k
            .segments
            .iter()
            .map(|s| (s.gpa, Cow::Borrowed(&image[s.offset..s.offset + s.filesz])))
            .collect();
        writes.push((loader::MBI_GPA, Cow::Owned(loader::boot_info(ram, cmdline))));
        let zero = k
            .segments
            .iter()
            .map(|s| (s.gpa + s.filesz as u64, s.memsz.saturating_sub(s.filesz as u64)))
            .collect();
        load(vm, LOAD.call_once(|| Load { writes, zero }));
        BOOT.call_once(|| Start::ProtectedMode {
            eip: k.entry,
            rax: u64::from(loader::BOOT_MAGIC),
            rbx: loader::MBI_GPA,
            rsi: 0,
        });
        info!(
            "hv: guest '{}' loaded: entry {:#x}, {} MiB RAM ({} MiB mapped on demand), {} vCPUs",
            cmdline,
            k.entry,
            ram >> 20,
            ram >> 20,
            vm.shape.vcpus()
        );
    }
    if let Some(l) = &linux {
        // `prepare` placed every piece inside the primary's share (checked there).
        load(vm, LOAD.call_once(|| Load { writes: l.writes.clone(), zero: Vec::new() }));
        BOOT.call_once(|| Start::ProtectedMode {
            eip: l.entry,
            rax: 0,
            rbx: 0,
            rsi: l.boot_params,
        });
        info!(
            "hv: Linux guest loaded: kernel at {:#x} ({}), initrd {}, {} MiB RAM, {} vCPUs, cmdline '{}'",
            l.layout.kernel,
            if l.long_mode {
                "64-bit entry: startup_64 in long mode"
            } else {
                "32-bit entry"
            },
            l.layout.initrd.map_or(alloc::string::String::from("none"), |(a, n)| {
                alloc::format!("{n} bytes at {a:#x}")
            }),
            ram >> 20,
            vm.shape.vcpus(),
            linux::kernel_cmdline(cmdline)
        );
    }
    if vm.shape.nodes() > 1 {
        info!(
            "hv: node {me} runs vCPUs {}..{} of {} and is home of guest RAM {:#x}..{:#x}",
            share.vcpu_base,
            share.vcpu_base + share.vcpus,
            vm.shape.vcpus(),
            share.ram_base,
            share.ram_base + share.ram_bytes
        );
    }
    deliver_early(vm);

    crate::arch::pic::mask();
    // Alone, or with one core, the boot CPU runs the first local vCPU between its polls.
    let bsp_runs = vm.shape.nodes() == 1 || aps.is_empty();
    let on_aps = share.vcpus as usize - usize::from(bsp_runs);
    if aps.len() < on_aps {
        error!(
            "hv: node {me} has {} APs for {on_aps} vCPUs: vCPUs {}.. never start",
            aps.len(),
            share.vcpu_base as usize + usize::from(bsp_runs) + aps.len()
        );
    }
    let base = share.vcpu_base as usize;
    for s in &vm.vcpus.stats {
        s.set_state(State::WaitForSipi);
    }
    if bsp_runs {
        vm.vcpus.place(0, apic::id());
        *BSP_RUNNER.lock() = Some(runner(vm, base, 0, start_of(vm, base))?);
    }
    for (k, (index, apic_id)) in aps.iter().take(on_aps).enumerate() {
        let local = k + usize::from(bsp_runs);
        vm.vcpus.place(local, *apic_id);
        MAILBOX[*index].store((base + local) as u32 + 1, Ordering::SeqCst);
        apic::send_ipi(*apic_id, WAKE_VECTOR);
    }
    STATUS.call_once(|| "guest running");
    Ok(vm)
}

/// How vCPU `id` starts: the guest's first vCPU enters the kernel the primary loaded (Multiboot
/// §3.2: magic in EAX, the info block in EBX; Linux: boot_params in ESI); every other waits
/// for a start-up IPI.
fn start_of(vm: &Vm, id: usize) -> Start {
    match BOOT.get() {
        Some(s) if id == 0 => *s,
        _ if id == 0 => Start::ProtectedMode {
            eip: vm.entry,
            rax: u64::from(loader::BOOT_MAGIC),
            rbx: loader::MBI_GPA,
            rsi: 0,
        },
        _ => Start::WaitForSipi,
    }
}

/// A vCPU of the node's backend, global id `id`, on this core (CPU index `cpu`).
fn runner(vm: &Vm, id: usize, cpu: usize, start: Start) -> Result<Runner<AnyVcpu>, VmError> {
    let vmcb =
        alloc_zeroed(&mut vm.frames.lock(), 1, 4096).ok_or(VmError::Memory("reserve exhausted"))?;
    let nested = vm.mem.nested_pointer();
    let v = match backend() {
        Some(Backend::Vmx) => {
            root::vmxon_here().map_err(VmError::Vmx)?;
            let p = vmx::detect().map_err(VmError::Vmx)?;
            let v = VmxVcpu::new(p, id as u32, vmcb, nested, vm.msr_bitmap);
            AnyVcpu::Vmx(v.map_err(VmError::Vmx)?)
        }
        Some(Backend::Svm) => {
            svm::enable_here().map_err(VmError::Svm)?;
            let p = svm::detect().map_err(VmError::Svm)?;
            let maps = svm::maps(vm.frames).map_err(VmError::Svm)?;
            AnyVcpu::Svm(SvmVcpu::new(p, id as u32, vmcb, nested, maps).map_err(VmError::Svm)?)
        }
        None => return Err(VmError::NoBackend),
    };
    Ok(Runner::new(vm, v, id, cpu, start))
}

fn slice_ticks() -> u64 {
    time::tsc_hz().max(1_000_000) / 1_000_000 * SLICE_US
}

/// Runs the boot CPU's vCPU for one time slice (or not at all while it waits); the node loop
/// calls this between its polls. False when that vCPU has nothing to do (none here, stopped,
/// or halted or waiting without a timer armed): then the loop may sleep.
pub fn bsp_slice() -> bool {
    let Some(vm) = VM.get() else { return false };
    show_prompt(vm);
    let mut g = BSP_RUNNER.lock();
    let Some(r) = g.as_mut() else { return false };
    // The slice is absolute: a guest exiting often (polling a port) still hands the CPU back.
    let end = rdtsc() + slice_ticks();
    loop {
        let asked = RESET_ASKED.load(Ordering::SeqCst);
        if asked != BSP_EPOCH.load(Ordering::SeqCst) {
            // The boot CPU carries the reset out once every AP with a vCPU has parked.
            if PARKED.load(Ordering::SeqCst) < SEATED.load(Ordering::SeqCst) {
                vm.vcpus.kick_others(0);
                return true;
            }
            let Some(old) = g.take() else { return false };
            reload(vm);
            *g = Some(restart(vm, old, 0));
            BSP_EPOCH.store(asked, Ordering::SeqCst);
            PARKED.store(0, Ordering::SeqCst);
            RESET_DONE.store(asked, Ordering::SeqCst);
            return true;
        }
        match r.step(vm, end) {
            Step::Continue if rdtsc() < end => {}
            Step::Continue | Step::Yield => return true,
            Step::Idle => return r.apic.deadline().is_some(),
            Step::Stopped => {
                *g = None;
                return false;
            }
        }
    }
}

/// Copies the boot pieces into guest RAM (at the start and at every reset).
fn load(vm: &Vm, l: &Load) {
    for (gpa, bytes) in &l.writes {
        vm.mem.write(*gpa, bytes);
    }
    let zeros = [0u8; 4096];
    for &(gpa, len) in &l.zero {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            vm.mem.write(gpa + done, &zeros[..n as usize]);
            done += n;
        }
    }
}

/// The guest asked for a reset (port 0xCF9, the keyboard controller, the FADT's reset
/// register), on `vcpu`. Alone, the node restarts the guest: every vCPU parks at its next
/// step, the boot CPU reloads guest memory and the devices and restarts vCPU 0 at the entry;
/// the others wait for a start-up IPI again. Across nodes the guest is stopped instead.
pub(super) fn reset(vm: &Vm, vcpu: usize) {
    if vm.shape.nodes() > 1 {
        Machine::stop(
            vm,
            vcpu,
            Verdict::Fatal("the guest asked for a reset: reboot across nodes is not supported yet"),
        );
        return;
    }
    let done = RESET_DONE.load(Ordering::SeqCst);
    // One reset at a time: a second request before the first is carried out is the same.
    let asked = done.wrapping_add(1);
    let fresh =
        RESET_ASKED.compare_exchange(done, asked, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    if fresh {
        info!("hv: vcpu {vcpu}: the guest asked for a reset");
        vm.vcpus.kick_others(vm.local(vcpu).unwrap_or(usize::MAX));
    }
}

/// Resets carried out so far (for `vcpu`).
pub fn resets() -> u32 {
    RESET_DONE.load(Ordering::SeqCst)
}

/// The reset's work on the boot CPU, every other vCPU parked: guest memory as it was loaded,
/// the devices and every vCPU's APIC inbox as at power-on.
fn reload(vm: &Vm) {
    if let Some(l) = LOAD.get() {
        load(vm, l);
    }
    {
        let mut d = vm.devices.lock();
        if let Some(line) = d.uart.take_partial() {
            info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
        }
        d.uart = super::uart::Uart::default();
        d.ioapic = super::ioapic::IoApic::default();
    }
    for (l, sh) in vm.vcpus.shared.iter().enumerate() {
        sh.reset();
        let _ = sh.take_startup();
        let _ = sh.take_nmi();
        let _ = vm.vcpus.take_resume(l);
    }
    info!(
        "hv: guest reset {}: its boot image reloaded, vcpu {} at the entry, the others wait for SIPI",
        RESET_DONE.load(Ordering::SeqCst).wrapping_add(1),
        vm.base
    );
}

/// `old`'s vCPU as at power-on: the same backend vCPU (its VMCS or VMCB), state set afresh
/// by the runner's start (the boot vCPU at the entry, the others waiting for SIPI), a new
/// local APIC and MSR file.
fn restart(vm: &Vm, old: Runner<AnyVcpu>, cpu: usize) -> Runner<AnyVcpu> {
    let id = old.id;
    let mut v = old.v;
    v.set_interrupt_window(false);
    Runner::new(vm, v, id, cpu, start_of(vm, id))
}

/// An AP reports for work (from its idle loop).
pub fn ap_register(index: usize) {
    // VMXON or EFER.SVME on every core as it comes up, with the backend the boot CPU chose.
    match backend() {
        Some(Backend::Vmx) => {
            if let Err(e) = root::vmxon_here() {
                error!("hv: cpu {index}: {e}");
            }
        }
        Some(Backend::Svm) => {
            if let Err(e) = svm::enable_here() {
                error!("hv: cpu {index}: {e}");
            }
        }
        None => {}
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
    let id = job as usize - 1;
    let Some(local) = vm.local(id) else { return };
    let epoch = RESET_DONE.load(Ordering::SeqCst);
    let r = match runner(vm, id, index, start_of(vm, id)) {
        Ok(r) => r,
        Err(e) => {
            error!("hv: vcpu {id} cannot start on cpu {index}: {e}");
            return;
        }
    };
    SEATED.fetch_add(1, Ordering::SeqCst);
    run_ap(vm, r, index, local, epoch);
    SEATED.fetch_sub(1, Ordering::SeqCst);
}

fn run_ap(vm: &Vm, mut r: Runner<AnyVcpu>, index: usize, local: usize, mut epoch: u32) {
    loop {
        let asked = RESET_ASKED.load(Ordering::SeqCst);
        if asked != epoch {
            // Parked until the boot CPU has reloaded the guest, then back to wait-for-SIPI.
            PARKED.fetch_add(1, Ordering::SeqCst);
            while RESET_DONE.load(Ordering::SeqCst) != asked {
                core::hint::spin_loop();
            }
            r = restart(vm, r, index);
            epoch = asked;
            continue;
        }
        match r.step(vm, rdtsc() + slice_ticks()) {
            Step::Continue | Step::Yield => {}
            Step::Idle => {
                // Sleep until a kick (IPI) unless a timer is due soon: then spin to it.
                let sh = &vm.vcpus.shared[local];
                if r.apic.deadline().is_some() {
                    core::hint::spin_loop();
                } else if sh.highest().is_none()
                    && !sh.startup_pending()
                    && !vm.vcpus.resume_pending(local)
                    && !crate::hv::dispatch::Machine::stopped(vm)
                    && RESET_ASKED.load(Ordering::SeqCst) == epoch
                {
                    x86_64::instructions::interrupts::enable_and_hlt();
                    x86_64::instructions::interrupts::disable();
                }
            }
            Step::Stopped => return,
        }
    }
}

/// While the console input goes to the guest, shows output the guest left without a newline
/// (a prompt) once it has been quiet [`PROMPT_QUIET_US`].
fn show_prompt(vm: &Vm) {
    if !FOCUS.load(Ordering::Relaxed) || !vm.primary() {
        return;
    }
    let now = time::uptime_us();
    let mut d = vm.devices.lock();
    let sent = d.uart.sent();
    let mut p = PROMPT.lock();
    if p.0 != sent {
        *p = (sent, now);
    } else if now.saturating_sub(p.1) >= PROMPT_QUIET_US {
        if let Some(line) = d.uart.take_partial() {
            drop(d);
            info!("guest: {}", core::str::from_utf8(&line).unwrap_or("<binary>"));
        }
    }
}

/// Console byte for the guest when it has the focus (Ctrl-] switches); true when consumed.
/// Once the guest has stopped, input goes back to the shell.
pub fn console_input(b: u8) -> bool {
    let Some(vm) = VM.get() else { return false };
    if Machine::stopped(vm) {
        if FOCUS.swap(false, Ordering::SeqCst) {
            kprintln!("\r\nhv: the guest has stopped: console input goes to the shell");
        }
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
    let irq = {
        let mut d = vm.devices.lock();
        let _ = d.uart.push_input(b);
        d.sync_irq()
    };
    if let Some(irq) = irq {
        vm.raise_irq(usize::MAX, irq);
    }
    true
}

/// The identity-mapped bytes of a boot module.
///
/// # Safety
/// `r` must be a module range the loader reported, below the identity-mapped limit.
pub unsafe fn module_bytes(r: Region) -> &'static [u8] {
    // SAFETY: guaranteed by the caller; modules are excluded from every allocator.
    unsafe { core::slice::from_raw_parts(r.start as *const u8, r.len() as usize) }
}

/// The guest's shape when this node runs alone: every online core a vCPU, RAM from the pool
/// up to `cap` bytes.
pub fn alone(aps: usize, pool_bytes: u64, cap: Option<u64>) -> Shape {
    let ram = cap.map_or(pool_bytes, |c| c.min(pool_bytes)) / (2 << 20) * (2 << 20);
    Shape::alone(aps as u32 + 1, ram)
}
