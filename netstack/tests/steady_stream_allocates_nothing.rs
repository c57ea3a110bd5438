//! The transport's hot path allocates nothing in a steady page stream (issue 13): fragments
//! and messages come from the engine's buffer pool, fed by acknowledged fragments and by the
//! messages the application hands back with `recycle`. A counting allocator (its own test
//! binary, so no other test's allocations count) checks it at both MTUs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use gestalt_netstack::transport::{ClusterKey, Config, Seed, SendError, Transport};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is passed to `System` unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is the same as `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`/`dealloc`; `ptr` and `layout` are the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Streams `count` pages from node 0 to node 1 (no loss), recycling what node 1 reads, and
/// counts allocations once `warm` pages have arrived (the handshake is over and queues and
/// pool have grown to their working size) until the last page is sent.
fn stream(nodes: &mut [Transport; 2], page: &[u8], warm: u32, count: u32) -> usize {
    let mut buf = vec![0u8; nodes[0].config().max_datagram()];
    let (mut sent, mut got, mut now) = (0, 0, 0);
    while got < count {
        COUNTING.with(|c| c.set(got >= warm && sent < count));
        while sent < count {
            match nodes[0].send(1, page) {
                Ok(()) => sent += 1,
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for from in 0..2 {
            while let Some(t) = nodes[from].poll_transmit(now, &mut buf) {
                let _ = nodes[usize::from(t.to)].handle_datagram(now, &buf[..t.len]);
            }
        }
        while let Some((_, m)) = nodes[1].recv() {
            assert_eq!(m.len(), page.len());
            nodes[1].recycle(m);
            got += 1;
        }
        now += 10;
    }
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[test]
fn a_steady_page_stream_allocates_nothing_at_either_mtu() {
    for mtu in [1500, 9000] {
        let mut nodes = [0u16, 1].map(|id| {
            let mut cfg = Config::new(1, id, Seed::new([id as u8 + 1; 32]));
            cfg.mtu = mtu;
            let mut t = Transport::new(cfg, &ClusterKey::from_passphrase(b"alloc"));
            t.add_peer(1 - id, 0);
            t
        });
        let page = vec![0x5Au8; 4096];
        ALLOCATIONS.store(0, Ordering::Relaxed);
        let n = stream(&mut nodes, &page, 1000, 3000);
        assert_eq!(n, 0, "mtu {mtu}: {n} allocations for about 2,000 pages");
        assert_eq!(nodes[1].stats().messages_delivered, 3000);
    }
}
