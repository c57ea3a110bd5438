//! A node's serial console: a thread copies everything the node prints into memory and a log
//! file; tests wait for text with a timeout and write lines back (for the shell).

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::HarnessError;

type Writer = Box<dyn Write + Send>;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    eof: bool,
    writer: Option<Writer>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// Why a wait ended without the text.
pub(crate) enum WaitFail {
    Timeout,
    Exited(String),
}

/// The captured console of one node.
pub struct Console {
    shared: Arc<Shared>,
    cursor: usize,
    log: PathBuf,
    stop: Arc<AtomicBool>,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panicking reader thread must not poison the console for the test that reads it.
    shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pump(shared: &Shared, mut reader: impl Read, mut log: Option<File>) {
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&chunk[..n]);
                    let _ = f.flush();
                }
                lock(shared).buf.extend_from_slice(&chunk[..n]);
                shared.cv.notify_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => break,
        }
    }
    lock(shared).eof = true;
    shared.cv.notify_all();
}

fn open_log(path: &Path) -> Result<File, HarnessError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
    }
    File::create(path).map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))
}

impl Console {
    /// Capture `reader` (e.g. an emulator's stdout); `writer` (its stdin) takes input.
    pub fn from_pipe(
        reader: impl Read + Send + 'static,
        writer: Option<Box<dyn Write + Send>>,
        log: &Path,
    ) -> Result<Console, HarnessError> {
        let file = open_log(log)?;
        let shared = Arc::new(Shared::default());
        lock(&shared).writer = writer;
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || pump(&s, reader, Some(file)))
            .map_err(|e| HarnessError::io("starting a console thread", e))?;
        Ok(Console {
            shared,
            cursor: 0,
            log: log.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Capture the first connection to `listener` (an emulator's serial port in socket-client
    /// mode); input goes to the same connection.
    pub fn from_listener(listener: TcpListener, log: &Path) -> Result<Console, HarnessError> {
        let file = open_log(log)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("configuring the console listener", e))?;
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let stream = loop {
                    if st.load(Ordering::Relaxed) {
                        lock(&s).eof = true;
                        s.cv.notify_all();
                        return;
                    }
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                // Reads time out so a stopped node's thread notices `stop` and ends.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                if let Ok(w) = stream.try_clone() {
                    lock(&s).writer = Some(Box::new(w));
                    s.cv.notify_all();
                }
                let reader = StopReader { inner: stream, stop: st };
                pump(&s, reader, Some(file));
            })
            .map_err(|e| HarnessError::io("starting a console thread", e))?;
        Ok(Console { shared, cursor: 0, log: log.to_path_buf(), stop })
    }

    /// Path of the log file holding everything the node printed.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything captured so far (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared).buf).into_owned()
    }

    /// False once the node's output has closed (the emulator exited).
    pub fn is_open(&self) -> bool {
        !lock(&self.shared).eof
    }

    /// The first captured line containing `needle`, without its line end.
    pub fn line_with(&self, needle: &str) -> Option<String> {
        self.text().lines().find(|l| l.contains(needle)).map(|l| l.trim_end().to_string())
    }

    /// Bytes captured from `from` on, and the new end (for live display).
    pub fn bytes_from(&self, from: usize) -> (Vec<u8>, usize) {
        let st = lock(&self.shared);
        let from = from.min(st.buf.len());
        (st.buf[from..].to_vec(), st.buf.len())
    }

    /// Move the cursor to the end of what was captured so far; returns the new position.
    pub fn skip_to_end(&mut self) -> usize {
        self.cursor = lock(&self.shared).buf.len();
        self.cursor
    }

    /// Console text since the last match, for error messages: at most the last 6000 bytes,
    /// escape characters made visible.
    pub fn tail_since_cursor(&self) -> String {
        let st = lock(&self.shared);
        let from = self.cursor.min(st.buf.len()).max(st.buf.len().saturating_sub(6000));
        String::from_utf8_lossy(&st.buf[from..]).replace('\x1b', "^[")
    }

    /// Wait until `needle` appears after the cursor; return its whole line and move the cursor
    /// past it. With `whole_line`, the line must be complete (ended by a newline) so that a
    /// line still being printed is not returned half; without, any text matches (prompts).
    /// `exited` is polled and ends the wait with its message when the node is gone.
    pub(crate) fn wait_for(
        &mut self,
        needle: &str,
        whole_line: bool,
        timeout: Duration,
        exited: &mut dyn FnMut() -> Option<String>,
    ) -> Result<String, WaitFail> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared);
        loop {
            let from = self.cursor.min(st.buf.len());
            if let Some(pos) = find(&st.buf[from..], needle.as_bytes()).map(|p| p + from) {
                let start = st.buf[..pos].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let nl = st.buf[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i);
                if nl.is_some() || !whole_line || st.eof {
                    let end = nl.unwrap_or(st.buf.len());
                    self.cursor = pos + needle.len();
                    return Ok(String::from_utf8_lossy(&st.buf[start..end]).trim_end().to_string());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFail::Timeout);
            }
            if st.eof {
                drop(st);
                // The output is closed; give the process a moment to be reaped.
                std::thread::sleep(Duration::from_millis(50));
                return Err(WaitFail::Exited(exited().unwrap_or_else(|| "console closed".into())));
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            st = self
                .shared
                .cv
                .wait_timeout(st, step)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            if let Some(status) = exited() {
                // Let the reader thread drain what the process wrote before it died.
                drop(st);
                std::thread::sleep(Duration::from_millis(100));
                st = lock(&self.shared);
                let from = self.cursor.min(st.buf.len());
                if find(&st.buf[from..], needle.as_bytes()).is_none() {
                    return Err(WaitFail::Exited(status));
                }
            }
        }
    }

    /// Type `text` on the console. Waits up to `timeout` for the console to be connected.
    pub fn write(&self, text: &str, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared);
        while st.writer.is_none() {
            if Instant::now() >= deadline || st.eof {
                return Err(HarnessError::io(
                    "writing to the console",
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the console is not connected",
                    ),
                ));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let w = st.writer.as_mut().expect("checked above");
        w.write_all(text.as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| HarnessError::io("writing to the console", e))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A reader that reports end of file once `stop` is set (it relies on a read timeout).
struct StopReader<R> {
    inner: R,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Read for StopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(0);
            }
            match self.inner.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                other => return other,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_returns_the_whole_line_and_moves_past_it() {
        let data: &[u8] = b"boot: one\r\nsmp: 2/2 cores online\r\ngestalt> ";
        let log = std::env::temp_dir().join(crate::util::unique("console-test"));
        let mut c = Console::from_pipe(data, None, &log).unwrap();
        let mut never = || None;
        let line =
            c.wait_for("cores online", true, Duration::from_secs(5), &mut never).ok().unwrap();
        assert_eq!(line, "smp: 2/2 cores online");
        assert!(c.wait_for("gestalt> ", false, Duration::from_secs(5), &mut never).is_ok());
        assert!(matches!(
            c.wait_for("boot:", true, Duration::from_secs(5), &mut never),
            Err(WaitFail::Exited(_))
        ));
        assert_eq!(std::fs::read(&log).unwrap(), data);
        let _ = std::fs::remove_file(log);
    }
}
