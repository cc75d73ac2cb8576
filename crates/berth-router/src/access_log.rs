//! The access log: one JSON line per request, kept off the request path. A worker writes its
//! line into a buffer of its own (a shard, locked only by it and, ten times a second, by the
//! writer); one writer thread takes the full buffers and writes each with one `write(2)`. So a
//! request costs a few hundred bytes of formatting and no system call, and a `kill -9` loses at
//! most the last [`FLUSH_EVERY`] of lines. A shard that the disk cannot keep up with stops
//! taking lines at [`SHARD_CAP`] and counts what it drops.

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_core::{lock, now_ms};
use berth_logfile::{Naming, RotatingFile};

/// Lines wait at most this long in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A shard this full wakes the writer before its tick.
const WAKE_AT: usize = 256 * 1024;
/// A shard this full drops lines (and counts them) until the writer has taken it.
pub const SHARD_CAP: usize = 4 * 1024 * 1024;

/// Size limit of the log file and how many files are kept (the current one included): the log
/// never takes more than `bytes` x `files` on disk.
pub use berth_logfile::Limit as LogLimit;

/// The open access log, shared by every worker.
pub struct AccessLog {
    shards: Box<[Mutex<Vec<u8>>]>,
    dropped: AtomicU64,
    stop: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// How a request ended, for the rest of its line.
pub struct Ending<'a> {
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    pub started: Instant,
    /// `cls:...`, the cluster that served it, when one did.
    pub cluster: Option<&'a str>,
    /// The app (`GROUP/NAME`) or static upstream it went to.
    pub app: Option<&'a str>,
    /// The server that answered, when one did.
    pub upstream: Option<&'a str>,
    pub tries: usize,
}

thread_local! {
    /// Which shard this thread writes to, chosen on its first line.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl AccessLog {
    /// Opens (or creates) `path` and starts the writer thread. `shards` is at least the number of
    /// threads that serve requests, so that each writes to its own.
    pub fn open(path: &Path, limit: LogLimit, shards: usize) -> std::io::Result<Arc<AccessLog>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = RotatingFile::open(Naming::Suffixed(path.to_path_buf()), limit)?;
        let log = Arc::new(AccessLog::unwritten(shards));
        let writer = Writer { log: log.clone(), path: path.to_path_buf(), file };
        let handle = std::thread::Builder::new().name("berth-access-log".into()).spawn(move || writer.run())?;
        *lock(&log.writer) = Some(handle);
        Ok(log)
    }

    /// The shards, with no writer yet.
    fn unwritten(shards: usize) -> AccessLog {
        AccessLog {
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::with_capacity(64 * 1024))).collect(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            writer: Mutex::new(None),
        }
    }

    /// Lines dropped because the disk did not keep up, or because they came after `close`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Starts a request's line in `buf` with what is known when it arrives (a buffer the
    /// connection keeps from one request to the next).
    pub fn begin(buf: &mut Vec<u8>, remote: SocketAddr, method: &str, host: &str, path: &str) {
        buf.clear();
        buf.extend_from_slice(b"{\"ts\":");
        let _ = write!(buf, "{}", now_ms());
        buf.extend_from_slice(b",\"remote\":\"");
        let _ = write!(buf, "{remote}");
        buf.extend_from_slice(b"\",\"method\":");
        json_str(buf, method);
        buf.extend_from_slice(b",\"host\":");
        json_str(buf, host);
        buf.extend_from_slice(b",\"path\":");
        json_str(buf, path);
    }

    /// Ends the line and hands it to this thread's shard.
    pub fn finish(&self, buf: &mut Vec<u8>, end: &Ending<'_>) {
        let _ = write!(buf, ",\"status\":{},\"bytes\":{},\"ms\":", end.status, end.bytes);
        let _ = write!(buf, "{:.3}", end.started.elapsed().as_secs_f64() * 1000.0);
        for (key, value) in [("cluster", end.cluster), ("app", end.app), ("upstream", end.upstream)] {
            let _ = write!(buf, ",\"{key}\":");
            match value {
                Some(v) => json_str(buf, v),
                None => buf.extend_from_slice(b"null"),
            }
        }
        let _ = writeln!(buf, ",\"tries\":{}}}", end.tries);
        let index = SHARD.with(|s| {
            s.get().unwrap_or_else(|| {
                let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                s.set(Some(i));
                i
            })
        }) % self.shards.len();
        let mut shard = lock(&self.shards[index]);
        if shard.len() + buf.len() > SHARD_CAP || self.stop.load(Ordering::Relaxed) {
            drop(shard);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shard.extend_from_slice(buf);
        let wake = shard.len() >= WAKE_AT;
        drop(shard);
        if wake && let Some(w) = lock(&self.writer).as_ref() {
            w.thread().unpark();
        }
    }

    /// Writes every line taken so far and stops the writer. Lines finished after this are
    /// dropped and counted.
    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = lock(&self.writer).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    log: Arc<AccessLog>,
    path: PathBuf,
    file: RotatingFile,
}

impl Writer {
    fn run(mut self) {
        // Swapped in for each shard taken, so that buffers keep their capacity.
        let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            std::thread::park_timeout(FLUSH_EVERY);
            let stopping = self.log.stop.load(Ordering::SeqCst);
            let log = self.log.clone();
            for shard in &log.shards {
                std::mem::swap(&mut *lock(shard), &mut spare);
                if !spare.is_empty() {
                    if let Err(e) = self.file.write_lines(&spare) {
                        tracing::error!(path = %self.path.display(), error = %e, "cannot write the access log");
                    }
                    spare.clear();
                }
                // A shard that once took a burst gives its memory back.
                if spare.capacity() > 2 * WAKE_AT {
                    spare = Vec::with_capacity(64 * 1024);
                }
            }
            if stopping {
                let _ = self.file.flush();
                return;
            }
        }
    }
}

/// `access.log`, then `access.log.1` (newest rotated) up to `access.log.N-1`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    Naming::Suffixed(path.to_path_buf()).path(n)
}

/// `text` as a JSON string: quotes, backslashes and control characters escaped.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(log: &AccessLog, buf: &mut Vec<u8>, n: usize) {
        let remote: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        AccessLog::begin(buf, remote, "GET", "a.test", &format!("/{n:06}/{}", "x".repeat(80)));
        let end = Ending {
            status: 200,
            bytes: 6,
            started: Instant::now(),
            cluster: Some("cls:a"),
            app: Some("g/a"),
            upstream: Some("127.0.0.1:1"),
            tries: 1,
        };
        log.finish(buf, &end);
    }

    fn read_all(path: &Path, files: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for n in (0..files).rev() {
            if let Ok(text) = std::fs::read_to_string(rotated(path, n)) {
                out.extend(text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")));
            }
        }
        out
    }

    #[test]
    fn every_line_of_a_burst_is_written_by_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, LogLimit { bytes: 64 << 20, files: 2 }, 4).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    let mut buf = Vec::new();
                    for n in 0..5000 {
                        line(log, &mut buf, t * 10_000 + n);
                    }
                });
            }
        });
        log.close();
        let lines = read_all(&path, 2);
        assert_eq!(lines.len(), 20_000, "{} dropped", log.dropped());
        assert_eq!(log.dropped(), 0);
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["app"], "g/a");
        assert_eq!(lines[0]["bytes"], 6);
    }

    #[test]
    fn lines_reach_the_file_within_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, LogLimit { bytes: 64 << 20, files: 2 }, 1).unwrap();
        let mut buf = Vec::new();
        line(&log, &mut buf, 1);
        let written = Instant::now();
        while std::fs::read_to_string(&path).unwrap_or_default().is_empty() {
            assert!(written.elapsed() < Duration::from_secs(2), "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The writer's tick, plus scheduling; far below a second either way.
        assert!(written.elapsed() < Duration::from_millis(600), "{:?}", written.elapsed());
    }

    #[test]
    fn rotation_bounds_the_disk_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let limit = LogLimit { bytes: 10 * 1024, files: 3 };
        let log = AccessLog::open(&path, limit, 1).unwrap();
        let mut buf = Vec::new();
        for n in 0..1000 {
            line(&log, &mut buf, n);
        }
        log.close();
        assert!(!rotated(&path, 3).exists(), "only 3 files are kept");
        for n in 0..3 {
            let len = std::fs::metadata(rotated(&path, n)).unwrap().len();
            assert!(len <= limit.bytes + 300, "file {n} is {len} bytes");
        }
        let kept = read_all(&path, 3);
        let last = kept.last().unwrap()["path"].as_str().unwrap().to_string();
        assert!(last.starts_with("/000999/"), "the newest line is kept: {last}");
        let numbers: Vec<u64> = kept.iter().map(|v| v["path"].as_str().unwrap()[1..7].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order, none missing in between");
    }

    #[test]
    fn a_full_shard_drops_and_counts() {
        // A writer that does not keep up, as a stalled disk makes it: none at all.
        let log = AccessLog::unwritten(1);
        let mut buf = Vec::new();
        let mut n = 0;
        while log.dropped() == 0 {
            line(&log, &mut buf, n);
            n += 1;
            assert!(n < 100_000, "never full");
        }
        let held = lock(&log.shards[0]).len();
        assert!(held <= SHARD_CAP && held + buf.len() > SHARD_CAP, "full at the cap: {held}");
        line(&log, &mut buf, n);
        assert_eq!(log.dropped(), 2, "every line past the cap is counted");
        // After close, nothing is held: a line is counted at once.
        log.close();
        lock(&log.shards[0]).clear();
        line(&log, &mut buf, n);
        assert_eq!(log.dropped(), 3);
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\n\u{1b}[31m");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), r#""a\"b\\c\n\u001b[31m""#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, "a\"b\\c\n\u{1b}[31m");
    }
}
