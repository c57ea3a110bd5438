//! Per-vCPU state and exit counters, readable from any CPU (the `vcpu` shell command) while
//! the vCPU's own core updates them.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Exit buckets shown by `vcpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    /// Nested page faults (EPT violations).
    NestedPageFault,
    /// Port I/O.
    Io,
    /// RDMSR/WRMSR.
    Msr,
    /// CPUID.
    Cpuid,
    /// HLT.
    Hlt,
    /// Hypercalls.
    Hypercall,
    /// Host interrupts.
    Interrupt,
    /// Interrupt windows.
    InterruptWindow,
    /// Time-slice ends.
    Preempted,
    /// INIT/SIPI.
    InitSipi,
    /// Control-register accesses.
    CrAccess,
    /// Intercepted exceptions.
    Exception,
    /// Triple fault, invalid state, failed entry, unknown.
    Fatal,
}

/// Number of [`Kind`]s.
pub const KINDS: usize = 13;

/// Names in [`Kind`] order.
pub const NAMES: [&str; KINDS] = [
    "npf",
    "io",
    "msr",
    "cpuid",
    "hlt",
    "hypercall",
    "irq",
    "irq-window",
    "preempt",
    "init-sipi",
    "cr",
    "exception",
    "fatal",
];

/// What a vCPU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Not created.
    Absent = 0,
    /// Waiting for a start-up IPI.
    WaitForSipi = 1,
    /// Running guest code (or handling its exits).
    Running = 2,
    /// In HLT, waiting for an interrupt.
    Halted = 3,
    /// Stopped for good (guest exit or a fatal exit).
    Stopped = 4,
    /// Parked on a nested page fault until the page (or the right) arrives.
    WaitPage = 5,
    /// Parked on a port read that the primary's devices answer.
    WaitDevice = 6,
}

impl State {
    /// Its name for people.
    pub fn name(self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::WaitForSipi => "wait-for-sipi",
            State::Running => "running",
            State::Halted => "halted",
            State::Stopped => "stopped",
            State::WaitPage => "wait-page",
            State::WaitDevice => "wait-device",
        }
    }

    fn from_u32(v: u32) -> State {
        match v {
            1 => State::WaitForSipi,
            2 => State::Running,
            3 => State::Halted,
            4 => State::Stopped,
            5 => State::WaitPage,
            6 => State::WaitDevice,
            _ => State::Absent,
        }
    }
}

/// One vCPU's public counters.
pub struct VcpuStats {
    state: AtomicU32,
    /// Physical CPU index running it.
    pub cpu: AtomicU32,
    /// Exits by [`Kind`].
    pub exits: [AtomicU64; KINDS],
    /// Last RIP seen at an exit.
    pub rip: AtomicU64,
    /// RDMSR/WRMSR answered with #GP (an MSR not modelled, or a refused value).
    pub msr_gp: AtomicU64,
    /// The last MSR that got #GP.
    pub last_msr_gp: AtomicU32,
}

impl VcpuStats {
    /// All zero, absent.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const NEW: VcpuStats = VcpuStats {
        state: AtomicU32::new(0),
        cpu: AtomicU32::new(0),
        exits: [const { AtomicU64::new(0) }; KINDS],
        rip: AtomicU64::new(0),
        msr_gp: AtomicU64::new(0),
        last_msr_gp: AtomicU32::new(0),
    };

    /// Current state.
    pub fn state(&self) -> State {
        State::from_u32(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state.
    pub fn set_state(&self, s: State) {
        self.state.store(s as u32, Ordering::Relaxed);
    }

    /// Counts one exit.
    pub fn count(&self, k: Kind) {
        self.exits[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.exits.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_by_kind_and_state_round_trips() {
        let s = VcpuStats::NEW;
        s.count(Kind::Hlt);
        s.count(Kind::Hlt);
        s.count(Kind::Fatal);
        assert_eq!(s.exits[Kind::Hlt as usize].load(Ordering::Relaxed), 2);
        assert_eq!(s.total(), 3);
        assert_eq!(NAMES[Kind::Fatal as usize], "fatal");
        s.set_state(State::Halted);
        assert_eq!(s.state(), State::Halted);
        assert_eq!(s.state().name(), "halted");
    }
}
