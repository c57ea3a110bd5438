//! Fresh randomness for the transport's session seeds and formation's boot nonce
//! (netstack README "Freshness"): RDSEED, else RDRAND, always conditioned through BLAKE2b
//! together with TSC jitter, the TSC, the CMOS clock and a per-boot call counter. A CPU with
//! neither instruction gets the jitter and clocks alone: weaker, see [`Source::Jitter`].
//!
//! Facts from the Intel SDM: CPUID.01H:ECX[30] reports RDRAND and CPUID.(EAX=07H,ECX=0):
//! EBX[18] reports RDSEED (Vol. 2A, CPUID, Tables 3-10 and 3-8); both set CF=1 when the
//! destination holds a random value and CF=0 (destination zeroed) when none was ready
//! (Vol. 2B, RDRAND and RDSEED); RDSEED draws from the entropy source itself and may run dry
//! under load, RDRAND from a DRBG reseeded from it (Vol. 1 §7.3.17).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gestalt_netstack::transport::Seed;
use x86_64::instructions::port::Port;

use super::cpu::{cpuid, rdtsc};
use crate::{info, warn};

/// Where a seed's unpredictability came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// RDSEED: the CPU's entropy source directly.
    Rdseed,
    /// RDRAND: the CPU's DRBG (RDSEED absent or dry).
    Rdrand,
    /// Neither: TSC jitter around port reads, the TSC and the CMOS clock. Distinct between
    /// boots as long as the clock or the boot timing differs, but not guaranteed
    /// unpredictable, and a fully deterministic emulator booted twice in the same second
    /// with the same inputs could repeat a seed — and then replay an earlier boot's traffic.
    Jitter,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Rdseed => "RDSEED",
            Source::Rdrand => "RDRAND",
            Source::Jitter => "TSC jitter and the CMOS clock (no RDSEED/RDRAND: weaker)",
        }
    }
}

/// Seeds handed out this boot: mixed into every seed, so two seeds of one boot never match
/// even when every other input does.
static CALLS: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicBool = AtomicBool::new(false);

/// CPUID.01H:ECX.RDRAND[bit 30] (SDM Vol. 2A, Table 3-10).
pub fn has_rdrand() -> bool {
    cpuid(1, 0).ecx & (1 << 30) != 0
}

/// CPUID.(EAX=07H,ECX=0):EBX.RDSEED[bit 18] (SDM Vol. 2A, Table 3-8), leaf 7 present.
pub fn has_rdseed() -> bool {
    cpuid(0, 0).eax >= 7 && cpuid(7, 0).ebx & (1 << 18) != 0
}

/// All-zero and all-one words are refused even with CF=1: some AMD parts returned all ones
/// with CF=1 after a suspend (a documented erratum), and zero is what a failed draw leaves.
fn plausible(v: u64) -> bool {
    v != 0 && v != u64::MAX
}

/// One RDSEED word, retried with PAUSE while the entropy source refills (it may legitimately
/// run dry for a while: SDM Vol. 1 §7.3.17.2).
///
/// # Safety
/// The CPU must have RDSEED ([`has_rdseed`]): it raises #UD otherwise.
#[target_feature(enable = "rdseed")]
unsafe fn rdseed64() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..256 {
        if core::arch::x86_64::_rdseed64_step(&mut v) == 1 && plausible(v) {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// One RDRAND word. Intel's DRNG guide allows 10 tries: the DRBG reseeds fast enough that
/// more failures mean a broken unit, not a busy one.
///
/// # Safety
/// The CPU must have RDRAND ([`has_rdrand`]): it raises #UD otherwise.
#[target_feature(enable = "rdrand")]
unsafe fn rdrand64() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..10 {
        if core::arch::x86_64::_rdrand64_step(&mut v) == 1 && plausible(v) {
            return Some(v);
        }
    }
    None
}

/// Eight hardware words, or why not.
fn hardware() -> Option<([u64; 8], Source)> {
    let mut words = [0u64; 8];
    for (source, has) in [(Source::Rdseed, has_rdseed()), (Source::Rdrand, has_rdrand())] {
        if !has {
            continue;
        }
        let mut all = true;
        for w in words.iter_mut() {
            // SAFETY: CPUID reported the instruction just above.
            let v = unsafe {
                match source {
                    Source::Rdseed => rdseed64(),
                    _ => rdrand64(),
                }
            };
            match v {
                Some(v) => *w = v,
                None => all = false,
            }
        }
        if all {
            return Some((words, source));
        }
    }
    None
}

/// TSC deltas around reads of port 0x61: I/O reads take a variable number of cycles
/// (bus, SMM, the emulator's scheduling), the low bits of which are hard to predict.
fn jitter(out: &mut [u8; 256]) {
    let mut port = Port::<u8>::new(0x61);
    let mut last = rdtsc();
    for b in out.iter_mut() {
        // SAFETY: reading the system control port has no side effect (time.rs writes it).
        let v = unsafe { port.read() };
        let now = rdtsc();
        *b = (now.wrapping_sub(last) as u8) ^ v;
        last = now;
    }
}

/// The CMOS clock's registers (seconds to century): the wall clock differs between boots.
/// Read without waiting out an update: an inconsistent read is as good for mixing.
fn rtc() -> [u8; 7] {
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    let mut out = [0u8; 7];
    for (o, reg) in out.iter_mut().zip([0x00u8, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32]) {
        // SAFETY: 0x70/0x71 are the PC's CMOS index/data ports; selecting a clock register
        // with bit 7 clear leaves NMIs enabled, and reading it changes nothing.
        *o = unsafe {
            index.write(reg);
            data.read()
        };
    }
    out
}

/// A fresh seed for `purpose` (e.g. "transport view"), mixed with `extra` (e.g. the MAC).
/// Says once per boot on the console where its randomness comes from.
pub fn fresh(purpose: &[u8], extra: &[u8]) -> (Seed, Source) {
    let call = CALLS.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let hw = hardware();
    let (words, source) = hw.unwrap_or(([0; 8], Source::Jitter));
    let mut hw_bytes = [0u8; 64];
    for (i, w) in words.iter().enumerate() {
        hw_bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
    }
    let mut jit = [0u8; 256];
    jitter(&mut jit);
    let clock = rtc();
    let tsc = rdtsc().to_be_bytes();
    let seed = Seed::condition(&[purpose, &hw_bytes, &jit, &clock, &tsc, &call, extra]);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        if source == Source::Jitter {
            warn!("rand: session seeds from {}", source.name());
        } else {
            info!("rand: session seeds from {} (conditioned with BLAKE2b)", source.name());
        }
    }
    (seed, source)
}

/// A fresh non-zero 64-bit value for `purpose` (formation's boot nonce).
pub fn fresh_u64(purpose: &[u8], extra: &[u8]) -> u64 {
    fresh(purpose, extra).0.value(purpose)
}
