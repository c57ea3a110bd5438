//! The virtual local APIC in x2APIC mode (SDM Vol. 3A §11.12): ID, version, TPR/PPR, EOI, ISR/
//! IRR, ICR (fixed IPIs, INIT, SIPI) and the timer (one-shot, periodic, TSC-deadline). Other
//! vCPUs raise interrupts through [`Shared`] (atomics, any CPU); the rest is [`Local`] to the
//! vCPU's own core. The timer counts TSC ticks divided by the divide configuration.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// x2APIC MSR range.
pub const MSR_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const MSR_LAST: u32 = 0x8FF;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;

/// The part of a vCPU's APIC other vCPUs write.
pub struct Shared {
    irr: [AtomicU64; 4],
    /// Pending INIT ([`INIT_PENDING`]) and start-up IPI ([`SIPI_PENDING`] | vector), taken
    /// by the owner with [`Shared::take_startup`].
    startup: AtomicU32,
    /// A non-maskable interrupt is pending.
    nmi: AtomicBool,
}

/// [`Shared`]'s startup word: an INIT is pending (above the vector byte, so both fit).
const INIT_PENDING: u32 = 1 << 16;
/// [`Shared`]'s startup word: a start-up IPI is pending; its vector is the low byte.
const SIPI_PENDING: u32 = 1 << 8;

impl Shared {
    /// Nothing pending.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const NEW: Shared = Shared {
        irr: [const { AtomicU64::new(0) }; 4],
        startup: AtomicU32::new(0),
        nmi: AtomicBool::new(false),
    };

    /// Posts an NMI (they do not queue: one pending at most, SDM Vol. 3A §10.5.1).
    pub fn post_nmi(&self) {
        self.nmi.store(true, Ordering::SeqCst);
    }

    /// Takes the pending NMI, if any.
    pub fn take_nmi(&self) -> bool {
        self.nmi.swap(false, Ordering::SeqCst)
    }

    /// An NMI is pending.
    pub fn nmi_pending(&self) -> bool {
        self.nmi.load(Ordering::SeqCst)
    }

    /// Requests interrupt `vector`.
    pub fn raise(&self, vector: u8) {
        self.irr[usize::from(vector / 64)].fetch_or(1 << (vector % 64), Ordering::SeqCst);
    }

    /// Highest requested vector.
    pub fn highest(&self) -> Option<u8> {
        (0..4).rev().find_map(|i| {
            let w = self.irr[i].load(Ordering::SeqCst);
            (w != 0).then(|| (i * 64 + 63 - w.leading_zeros() as usize) as u8)
        })
    }

    fn clear(&self, vector: u8) {
        self.irr[usize::from(vector / 64)].fetch_and(!(1 << (vector % 64)), Ordering::SeqCst);
    }

    fn word(&self, i: usize) -> u32 {
        (self.irr[i / 2].load(Ordering::SeqCst) >> (32 * (i % 2))) as u32
    }

    /// Posts an INIT.
    pub fn post_init(&self) {
        self.startup.fetch_or(INIT_PENDING, Ordering::SeqCst);
    }

    /// Posts a start-up IPI; while one is pending, later ones are dropped (the first vector
    /// is the one the AP starts at, SDM Vol. 3A §9.4.4).
    pub fn post_sipi(&self, vector: u8) {
        let mut w = self.startup.load(Ordering::SeqCst);
        while w & SIPI_PENDING == 0 {
            let want = w | SIPI_PENDING | u32::from(vector);
            match self.startup.compare_exchange(w, want, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// Takes what is pending: (an INIT, a start-up vector).
    pub fn take_startup(&self) -> (bool, Option<u8>) {
        let w = self.startup.swap(0, Ordering::SeqCst);
        (w & INIT_PENDING != 0, (w & SIPI_PENDING != 0).then_some(w as u8))
    }

    /// An INIT or start-up IPI is waiting.
    pub fn startup_pending(&self) -> bool {
        self.startup.load(Ordering::SeqCst) != 0
    }

    /// Forgets everything (INIT).
    pub fn reset(&self) {
        for w in &self.irr {
            w.store(0, Ordering::SeqCst);
        }
    }
}

/// The access raises #GP in the guest (read-only or reserved register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// Delivery of an IPI the guest asked for through the ICR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiKind {
    /// A fixed interrupt with this vector.
    Fixed(u8),
    /// A non-maskable interrupt (vector 2).
    Nmi,
    /// INIT.
    Init,
    /// Start-up with this vector.
    Startup(u8),
}

/// Who receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One x2APIC id (physical mode).
    One(u32),
    /// x2APIC logical mode: cluster in bits 31:16, a bitmap of its 16 members in 15:0
    /// (SDM Vol. 3A §11.12.10.2).
    Logical(u32),
    /// Ourselves.
    Me,
    /// Everyone including us.
    All,
    /// Everyone else.
    Others,
}

/// What an MSR write asks the VM to do beyond the APIC itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Send an IPI.
    Ipi(Dest, IpiKind),
    /// The guest wrote something we do not model (logged once by the caller).
    Ignored,
}

/// The vCPU-local APIC state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local {
    id: u32,
    tpr: u8,
    svr: u32,
    isr: [u64; 4],
    lvt_timer: u32,
    initial: u32,
    divide: u32,
    icr: u64,
    /// TSC value at which the timer fires, when armed.
    deadline: Option<u64>,
    /// TSC at which a one-shot/periodic count started (for the current count).
    started: u64,
}

fn divisor(dcr: u32) -> u64 {
    // Bits 0, 1, 3 (SDM Vol. 3A Figure 11-10): 0b111 means divide by 1.
    let v = (dcr & 3) | ((dcr >> 1) & 4);
    if v == 7 {
        1
    } else {
        2 << v
    }
}

const TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_DEADLINE: u32 = 1 << 18;
const MASKED: u32 = 1 << 16;

impl Local {
    /// The APIC of vCPU `id` after reset: software-disabled, timer masked.
    pub fn new(id: u32) -> Local {
        Local { id, svr: 0xff, lvt_timer: MASKED, ..Local::default() }
    }

    fn highest_isr(&self) -> Option<u8> {
        (0..4).rev().find_map(|i| {
            let w = self.isr[i];
            (w != 0).then(|| (i * 64 + 63 - w.leading_zeros() as usize) as u8)
        })
    }

    fn ppr(&self) -> u8 {
        let isr = self.highest_isr().unwrap_or(0) & 0xf0;
        if self.tpr & 0xf0 >= isr {
            self.tpr
        } else {
            isr
        }
    }

    /// The vector to deliver now, if any beats the processor priority (SDM Vol. 3A §11.8.3.1).
    pub fn deliverable(&self, shared: &Shared) -> Option<u8> {
        let v = shared.highest()?;
        (v & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The vector was injected: IRR → ISR.
    pub fn accept(&mut self, shared: &Shared, v: u8) {
        shared.clear(v);
        self.isr[usize::from(v / 64)] |= 1 << (v % 64);
    }

    /// When the timer next fires (TSC), if armed.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Fires the timer if due at `now`; periodic timers re-arm.
    pub fn poll_timer(&mut self, shared: &Shared, now: u64) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        if self.lvt_timer & MASKED == 0 {
            shared.raise(self.lvt_timer as u8);
        }
        self.deadline = None;
        if self.lvt_timer & TIMER_PERIODIC != 0 && self.initial != 0 {
            let period = u64::from(self.initial) * divisor(self.divide);
            self.started = d;
            self.deadline = Some(d + period.max(1));
        }
    }

    /// RDMSR of an x2APIC register or the TSC deadline; None = #GP.
    pub fn read(&self, shared: &Shared, msr: u32, now: u64) -> Option<u64> {
        Some(match msr {
            0x802 => u64::from(self.id),
            0x803 => 0x0005_0014,
            0x808 => u64::from(self.tpr),
            0x80A => u64::from(self.ppr()),
            0x80D => (u64::from(self.id >> 4) << 16) | (1 << (self.id & 15)),
            0x80F => u64::from(self.svr),
            0x810..=0x817 => {
                (self.isr[(msr as usize - 0x810) / 2] >> (32 * (msr % 2))) & 0xffff_ffff
            }
            0x818..=0x81F | 0x828 => 0,
            0x820..=0x827 => u64::from(shared.word(msr as usize - 0x820)),
            0x830 => self.icr,
            0x832 => u64::from(self.lvt_timer),
            0x833..=0x837 => u64::from(MASKED),
            0x838 => u64::from(self.initial),
            0x839 => match self.deadline {
                Some(d) if self.lvt_timer & TIMER_DEADLINE == 0 => {
                    (d.saturating_sub(now) / divisor(self.divide)).min(u64::from(u32::MAX))
                }
                _ => 0,
            },
            0x83E => u64::from(self.divide),
            MSR_TSC_DEADLINE => match self.deadline {
                Some(d) if self.lvt_timer & TIMER_DEADLINE != 0 => d,
                _ => 0,
            },
            _ => return None,
        })
    }

    /// WRMSR of an x2APIC register or the TSC deadline at TSC `now`.
    pub fn write(&mut self, _shared: &Shared, msr: u32, val: u64, now: u64) -> Result<Effect, Gp> {
        let v32 = val as u32;
        match msr {
            0x808 => self.tpr = v32 as u8,
            0x80B => {
                if let Some(v) = self.highest_isr() {
                    self.isr[usize::from(v / 64)] &= !(1 << (v % 64));
                }
            }
            0x80F => self.svr = v32 & 0x11ff,
            0x828 => {}
            0x830 => {
                self.icr = val & !(1 << 12);
                return Ok(icr_effect(val));
            }
            0x832 => {
                let mode_changed = (self.lvt_timer ^ v32) & (TIMER_PERIODIC | TIMER_DEADLINE) != 0;
                self.lvt_timer = v32 & 0x7_10ff;
                if mode_changed {
                    self.deadline = None;
                }
            }
            0x833..=0x837 => {}
            0x838 => {
                self.initial = v32;
                self.started = now;
                self.deadline = (v32 != 0 && self.lvt_timer & TIMER_DEADLINE == 0)
                    .then(|| now + u64::from(v32) * divisor(self.divide));
            }
            0x83E => self.divide = v32 & 0xb,
            0x83F => return Ok(Effect::Ipi(Dest::Me, IpiKind::Fixed(v32 as u8))),
            MSR_TSC_DEADLINE => {
                if self.lvt_timer & TIMER_DEADLINE != 0 {
                    self.deadline = (val != 0).then_some(val);
                }
            }
            0x802 | 0x803 | 0x80A | 0x80D | 0x810..=0x827 | 0x839 => return Err(Gp),
            _ => return Ok(Effect::Ignored),
        }
        Ok(Effect::None)
    }
}

/// The IPI an ICR value describes (SDM Vol. 3A §11.12.9, Figure 11-12).
pub fn icr_effect(icr: u64) -> Effect {
    let vector = icr as u8;
    let kind = match (icr >> 8) & 7 {
        0 => IpiKind::Fixed(vector),
        4 => IpiKind::Nmi,
        5 => {
            // INIT level de-assert (level 0, trigger level) is a no-op on modern APICs.
            if icr & (1 << 14) == 0 && icr & (1 << 15) != 0 {
                return Effect::None;
            }
            IpiKind::Init
        }
        6 => IpiKind::Startup(vector),
        _ => return Effect::Ignored,
    };
    let dest = match (icr >> 18) & 3 {
        // x2APIC: 0xFFFF_FFFF is the broadcast id in both modes (SDM Vol. 3A §11.12.9).
        0 if icr >> 32 == 0xFFFF_FFFF => Dest::All,
        0 if icr & (1 << 11) != 0 => Dest::Logical((icr >> 32) as u32),
        0 => Dest::One((icr >> 32) as u32),
        1 => Dest::Me,
        2 => Dest::All,
        _ => Dest::Others,
    };
    Effect::Ipi(dest, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_logical_id_follow_the_vcpu_index() {
        let s = Shared::NEW;
        let l = Local::new(17);
        assert_eq!(l.read(&s, 0x802, 0), Some(17));
        assert_eq!(l.read(&s, 0x80D, 0), Some((1 << 16) | 2));
        assert_eq!(l.read(&s, 0x899, 0), None);
    }

    #[test]
    fn nmi_logical_and_broadcast_destinations_decode() {
        assert_eq!(icr_effect((5u64 << 32) | (4 << 8)), Effect::Ipi(Dest::One(5), IpiKind::Nmi));
        assert_eq!(
            icr_effect((0x0001_0006u64 << 32) | (1 << 11) | 0x40),
            Effect::Ipi(Dest::Logical(0x0001_0006), IpiKind::Fixed(0x40))
        );
        assert_eq!(
            icr_effect((0xFFFF_FFFFu64 << 32) | 0x41),
            Effect::Ipi(Dest::All, IpiKind::Fixed(0x41))
        );
    }

    #[test]
    fn an_init_and_a_startup_pending_together_keep_the_vector() {
        let s = Shared::NEW;
        s.post_init();
        s.post_sipi(0x09);
        s.post_sipi(0x42); // a second SIPI while the first is pending is dropped
        assert_eq!(s.take_startup(), (true, Some(0x09)));
        assert_eq!(s.take_startup(), (false, None));
        s.post_sipi(0x08);
        assert_eq!(s.take_startup(), (false, Some(0x08)));
    }

    #[test]
    fn icr_writes_decode_fixed_init_and_startup() {
        assert_eq!(
            icr_effect((3u64 << 32) | 0x4040),
            Effect::Ipi(Dest::One(3), IpiKind::Fixed(0x40))
        );
        assert_eq!(icr_effect((1u64 << 32) | 0x4500), Effect::Ipi(Dest::One(1), IpiKind::Init));
        assert_eq!(icr_effect((1u64 << 32) | 0x8500), Effect::None);
        assert_eq!(icr_effect(0xC4608), Effect::Ipi(Dest::Others, IpiKind::Startup(8)));
        assert_eq!(icr_effect(0x700), Effect::Ignored); // reserved delivery mode
    }

    #[test]
    fn tpr_masks_lower_classes_and_eoi_retires_the_highest_in_service() {
        let s = Shared::NEW;
        let mut l = Local::new(0);
        s.raise(0x41);
        l.write(&s, 0x808, 0x50, 0).unwrap();
        assert_eq!(l.deliverable(&s), None);
        l.write(&s, 0x808, 0x30, 0).unwrap();
        assert_eq!(l.deliverable(&s), Some(0x41));
        l.accept(&s, 0x41);
        s.raise(0x42);
        // Same class as the one in service: waits for its EOI.
        assert_eq!(l.deliverable(&s), None);
        assert_eq!(l.read(&s, 0x812, 0), Some(2));
        l.write(&s, 0x80B, 0, 0).unwrap();
        assert_eq!(l.deliverable(&s), Some(0x42));
    }

    #[test]
    fn one_shot_timer_counts_tsc_ticks_through_the_divider() {
        let s = Shared::NEW;
        let mut l = Local::new(0);
        l.write(&s, 0x83E, 0xb, 0).unwrap(); // divide by 1
        l.write(&s, 0x832, 0x30, 0).unwrap();
        l.write(&s, 0x838, 1000, 500).unwrap();
        assert_eq!(l.deadline(), Some(1500));
        assert_eq!(l.read(&s, 0x839, 1000), Some(500));
        l.poll_timer(&s, 1499);
        assert_eq!(s.highest(), None);
        l.poll_timer(&s, 1500);
        assert_eq!(s.highest(), Some(0x30));
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn periodic_timer_rearms_and_deadline_mode_uses_the_msr() {
        let s = Shared::NEW;
        let mut l = Local::new(0);
        l.write(&s, 0x83E, 0x0, 0).unwrap(); // divide by 2
        l.write(&s, 0x832, u64::from(TIMER_PERIODIC) | 0x31, 0).unwrap();
        l.write(&s, 0x838, 10, 0).unwrap();
        l.poll_timer(&s, 20);
        assert_eq!(l.deadline(), Some(40));
        l.write(&s, 0x832, u64::from(TIMER_DEADLINE) | 0x32, 0).unwrap();
        assert_eq!(l.deadline(), None);
        l.write(&s, MSR_TSC_DEADLINE, 9000, 100).unwrap();
        assert_eq!(l.read(&s, MSR_TSC_DEADLINE, 0), Some(9000));
        l.poll_timer(&s, 9000);
        assert_eq!(s.highest(), Some(0x32));
    }

    #[test]
    fn masked_timer_fires_silently() {
        let s = Shared::NEW;
        let mut l = Local::new(0);
        l.write(&s, 0x832, u64::from(MASKED) | 0x30, 0).unwrap();
        l.write(&s, 0x838, 1, 0).unwrap();
        l.poll_timer(&s, 100);
        assert_eq!(s.highest(), None);
    }
}
