//! Which pages of this node's home range have been zeroed: a guest page is zeroed the first
//! time anything uses its frame (a map, a copy out, the loader), not all at once when the
//! guest starts — zeroing hundreds of MiB at start held the service core off the network for
//! seconds, longer than a peer waits for heartbeats. Pure logic: the caller zeroes.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

const UNTOUCHED: u8 = 0;
const ZEROING: u8 = 1;
const READY: u8 = 2;

/// One state per page.
pub struct ZeroMap {
    pages: Vec<AtomicU8>,
}

impl ZeroMap {
    /// `pages` pages, none zeroed yet.
    pub fn new(pages: usize) -> ZeroMap {
        ZeroMap { pages: (0..pages).map(|_| AtomicU8::new(UNTOUCHED)).collect() }
    }

    /// Makes page `i` ready for use: the first caller runs `zero`, and every caller returns
    /// only once it has run (a racing caller waits). False when `i` is out of range.
    pub fn ensure(&self, i: usize, zero: impl FnOnce()) -> bool {
        let Some(s) = self.pages.get(i) else { return false };
        if s.load(Ordering::Acquire) == READY {
            return true;
        }
        if s.compare_exchange(UNTOUCHED, ZEROING, Ordering::Acquire, Ordering::Acquire).is_ok() {
            zero();
            s.store(READY, Ordering::Release);
            return true;
        }
        while s.load(Ordering::Acquire) != READY {
            core::hint::spin_loop();
        }
        true
    }

    /// Pages zeroed so far.
    pub fn ready(&self) -> usize {
        self.pages.iter().filter(|s| s.load(Ordering::Relaxed) == READY).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_page_is_zeroed_once_on_first_use_and_never_again() {
        let m = ZeroMap::new(4);
        let runs = Cell::new(0);
        assert!(m.ensure(2, || runs.set(runs.get() + 1)));
        assert!(m.ensure(2, || runs.set(runs.get() + 1)));
        assert_eq!((runs.get(), m.ready()), (1, 1));
        assert!(m.ensure(0, || runs.set(runs.get() + 1)));
        assert_eq!((runs.get(), m.ready()), (2, 2));
    }

    #[test]
    fn a_page_out_of_range_is_refused_without_zeroing() {
        let m = ZeroMap::new(1);
        assert!(!m.ensure(1, || panic!("must not zero")));
    }

    #[test]
    fn racing_users_of_one_page_see_it_zeroed_exactly_once() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let m = Arc::new(ZeroMap::new(64));
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (m, runs) = (m.clone(), runs.clone());
                std::thread::spawn(move || {
                    for i in 0..64 {
                        m.ensure(i, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((runs.load(Ordering::SeqCst), m.ready()), (64, 64));
    }
}
