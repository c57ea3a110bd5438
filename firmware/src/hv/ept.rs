//! Intel extended page tables (SDM Vol. 3C §29.3) as a [`Format`] of the neutral nested
//! tables (`nested`): 4-level, write-back leaves, read/write/execute bits per entry.

use super::nested::Format;

/// Read allowed.
const R: u64 = 1 << 0;
/// Write allowed.
const W: u64 = 1 << 1;
/// Instruction fetch allowed.
const X: u64 = 1 << 2;
/// Memory type write-back in a leaf (bits 5:3 = 6, SDM Vol. 3C §29.3.7).
const MT_WB: u64 = 6 << 3;

/// The EPT entry format: an entry is present when any right is set; the EPT pointer says
/// write-back structures and a 4-level walk (SDM Vol. 3C §25.6.11).
pub static EPT: Format = Format {
    present: R | W | X,
    table: R | W | X,
    read_exec: R | X,
    all: R | W | X,
    write: W,
    leaf: MT_WB,
    pointer: (3 << 3) | 6,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::nested::{Access, Tables};
    use crate::paging::testing::Fake;

    #[test]
    fn leaves_are_write_back_and_eptp_says_4_level_wb() {
        let mut m = Fake::default();
        let t = Tables::new(&mut m, &EPT).unwrap();
        t.map(&mut m, 0x20_0000, 0x20_0000, 0x20_0000, Access::All).unwrap();
        assert_eq!(t.pointer() & 0xfff, 0x1e);
        assert_eq!(t.leaf(&m, 0x20_0000), Some(0x20_0000 | R | W | X | MT_WB | (1 << 7)));
        assert_eq!(t.top(&m, 0) & 0xfff, R | W | X);
    }
}
