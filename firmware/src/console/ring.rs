//! The bounded log buffer between the logging macros and COM1: lines from the network loop go
//! in whole or not at all (and are counted), and the main loop drains it only as fast as the
//! UART takes bytes, so no log line ever makes the loop wait for the serial line.

/// A byte ring of `N` bytes holding whole log lines.
pub struct LogRing<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
    dropped: u64,
    unreported: u64,
}

impl<const N: usize> LogRing<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        LogRing { buf: [0; N], head: 0, len: 0, dropped: 0, unreported: 0 }
    }

    /// Queues `line` (with its line end) whole; when it does not fit, drops it and counts it.
    pub fn push_line(&mut self, line: &[u8]) -> bool {
        if line.len() > N - self.len {
            self.dropped += 1;
            self.unreported += 1;
            return false;
        }
        for &b in line {
            self.buf[(self.head + self.len) % N] = b;
            self.len += 1;
        }
        true
    }

    /// The oldest queued bytes that sit contiguously in the ring (empty when nothing waits).
    pub fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(N);
        &self.buf[self.head..end]
    }

    /// Forgets the first `n` queued bytes (written out).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % N;
        self.len -= n;
    }

    /// Writes queued bytes through `send`, which writes a prefix of what it is given and
    /// returns how many bytes it took (0: the UART is full, try later).
    pub fn drain(&mut self, mut send: impl FnMut(&[u8]) -> usize) {
        while self.len > 0 {
            let n = send(self.front());
            if n == 0 {
                return;
            }
            self.consume(n);
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lines dropped since boot.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Lines dropped since the last call (for a "lines dropped" note once there is room).
    pub fn take_unreported(&mut self) -> u64 {
        core::mem::take(&mut self.unreported)
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A line being formatted on the stack: text beyond its capacity is cut off (a log line is
/// better short than absent).
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> LineBuf<N> {
    /// An empty line.
    pub const fn new() -> Self {
        LineBuf { buf: [0; N], len: 0 }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // The console wants CR LF; keep room for the final one.
        for &b in s.as_bytes() {
            let need = if b == b'\n' { 2 } else { 1 };
            if self.len + need > N.saturating_sub(2) {
                return Ok(());
            }
            if b == b'\n' {
                self.buf[self.len] = b'\r';
                self.len += 1;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl<const N: usize> LineBuf<N> {
    /// Ends the line with CR LF (room for it is always kept).
    pub fn end_line(&mut self) {
        if self.len + 2 <= N {
            self.buf[self.len] = b'\r';
            self.buf[self.len + 1] = b'\n';
            self.len += 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn lines_pushed_faster_than_the_uart_drains_are_dropped_whole_and_counted() {
        let mut r = LogRing::<64>::new();
        let line = b"[    1.000000] ERROR net: refused 10.0.0.1: x\r\n"; // 46 bytes
        assert!(r.push_line(line));
        assert!(!r.push_line(line), "a second line does not fit in 64 bytes");
        assert_eq!((r.dropped(), r.len()), (1, line.len()));
        // A UART that takes 16 bytes per call (its FIFO), then is full.
        let mut out = Vec::new();
        let mut calls = 0;
        r.drain(|b| {
            calls += 1;
            if calls > 2 {
                return 0;
            }
            let n = b.len().min(16);
            out.extend_from_slice(&b[..n]);
            n
        });
        assert_eq!(out, line[..32].to_vec(), "drain stops when the UART is full");
        r.drain(|b| {
            out.extend_from_slice(b);
            b.len()
        });
        assert_eq!(out, line.to_vec());
        assert_eq!(r.take_unreported(), 1);
        assert_eq!(r.take_unreported(), 0);
        assert_eq!(r.dropped(), 1);
    }

    #[test]
    fn lines_that_wrap_around_the_end_of_the_ring_come_out_in_order() {
        let mut r = LogRing::<10>::new();
        let mut out = Vec::new();
        for line in [&b"abcdef\r\n"[..], b"ghij\r\n", b"k\r\n"] {
            assert!(r.push_line(line));
            r.drain(|b| {
                out.extend_from_slice(b);
                b.len()
            });
        }
        assert_eq!(out, b"abcdef\r\nghij\r\nk\r\n".to_vec());
        assert!(r.is_empty());
    }

    #[test]
    fn a_long_line_is_cut_and_still_ends_the_line() {
        let mut l = LineBuf::<16>::new();
        write!(l, "0123456789abcdefghij").unwrap();
        l.end_line();
        assert_eq!(l.as_bytes(), b"0123456789abcd\r\n");
        let mut l = LineBuf::<32>::new();
        write!(l, "a\nb").unwrap();
        l.end_line();
        assert_eq!(l.as_bytes(), b"a\r\nb\r\n");
    }
}
