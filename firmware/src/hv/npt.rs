//! AMD nested page tables (AMD APM Vol. 2 §15.25) as a [`Format`] of the neutral nested
//! tables (`nested`): the long-mode page-table format, 4 levels, walked as user accesses
//! (so every level carries U/S), write-back through PAT entry 0, nCR3 the top table.

use super::nested::Format;

/// Present.
const P: u64 = 1 << 0;
/// Writes allowed.
const RW: u64 = 1 << 1;
/// User: nested walks are user-level accesses, so every entry needs it (APM Vol. 2
/// §15.25.5).
const US: u64 = 1 << 2;

/// The AMD long-mode entry format. No NX bit is used: read-exec is the least right a
/// mapped page has, so host EFER.NXE does not matter.
pub static NPT: Format = Format {
    present: P,
    table: P | RW | US,
    read_exec: P | US,
    all: P | RW | US,
    write: RW,
    leaf: 0,
    pointer: 0,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::nested::{Access, Tables};
    use crate::paging::testing::Fake;

    #[test]
    fn leaves_and_tables_are_user_pages_and_ncr3_is_the_bare_root() {
        let mut m = Fake::default();
        let t = Tables::new(&mut m, &NPT).unwrap();
        t.map(&mut m, 0x20_0000, 0x40_0000, 0x20_0000, Access::All).unwrap();
        t.map(&mut m, 0x1000, 0x9000, 0x1000, Access::ReadExec).unwrap();
        assert_eq!(t.pointer() & 0xfff, 0);
        assert_eq!(t.leaf(&m, 0x20_0000), Some(0x40_0000 | P | RW | US | (1 << 7)));
        assert_eq!(t.leaf(&m, 0x1000), Some(0x9000 | P | US));
        assert_eq!(t.top(&m, 0) & 0xfff, P | RW | US);
    }

    #[test]
    fn taking_every_right_clears_present_and_keeps_the_frame_for_later() {
        let mut m = Fake::default();
        let t = Tables::new(&mut m, &NPT).unwrap();
        t.map(&mut m, 0x5000, 0x7000, 0x1000, Access::All).unwrap();
        t.set_rights(&mut m, 0x5000, Access::None).unwrap();
        assert_eq!(t.leaf(&m, 0x5000), Some(0x7000));
        t.set_rights(&mut m, 0x5000, Access::ReadExec).unwrap();
        assert_eq!(t.leaf(&m, 0x5000), Some(0x7000 | P | US));
    }
}
