//! Log collection: one collector per instance (the engine's log stream for Docker, the output files
//! for exec) feeds a buffer per instance; one shipper sends batches to the control plane.
//!
//! Each instance's buffer is bounded and drained in turn, so a flooding app loses its own excess
//! lines (counted, and reported with the next batch) and never delays another app's lines.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{lock, now_ms};
use berth_api::{Client, LogBatch, LogLine, LogStream};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};

/// Lines kept per instance while the control plane is slow or away.
const PER_INSTANCE: usize = 50_000;
/// Lines taken from one instance per batch, so every instance gets its turn.
const PER_TURN: usize = 20_000;
/// About this much line text per batch, shared among instances (the server takes up to 16 MiB).
const BATCH_BYTES: usize = 2 << 20;
/// A line longer than this is cut (the rest is dropped).
const MAX_LINE: usize = 16 * 1024;
/// How often exec output files are read.
const FILE_POLL: Duration = Duration::from_millis(100);
/// An exec output file is emptied once it is read to the end and this big.
const TRUNCATE_AT: u64 = 8 << 20;

#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

/// Where collectors put lines; cheap to clone.
#[derive(Clone, Default)]
pub struct LogSink {
    buffers: Arc<Mutex<HashMap<String, Buffer>>>,
    ready: Arc<Notify>,
}

/// Who wrote a line: the labels every line carries.
#[derive(Debug, Clone)]
pub struct Origin {
    pub app: String,
    pub instance: String,
    pub node: String,
}

impl LogSink {
    pub fn push(&self, origin: &Origin, stream: LogStream, t: i64, text: String) {
        self.push_many(origin, stream, t, std::iter::once(text));
    }

    /// Queues lines of one instance under one lock; what does not fit is dropped and counted.
    pub fn push_many(&self, origin: &Origin, stream: LogStream, t: i64, texts: impl IntoIterator<Item = String>) {
        {
            let mut buffers = lock(&self.buffers);
            let buf = buffers.entry(origin.instance.clone()).or_default();
            for mut text in texts {
                if buf.lines.len() >= PER_INSTANCE {
                    buf.dropped += 1;
                    continue;
                }
                if text.len() > MAX_LINE {
                    text.truncate(text.floor_char_boundary(MAX_LINE));
                }
                buf.lines.push_back(LogLine {
                    t,
                    app: origin.app.clone(),
                    instance: origin.instance.clone(),
                    node: origin.node.clone(),
                    stream,
                    line: text,
                });
            }
        }
        self.ready.notify_one();
    }

    /// Up to `PER_TURN` lines (and an equal share of `BATCH_BYTES`) of every instance, and the
    /// drop counts; empty buffers are forgotten.
    fn take_batch(&self) -> LogBatch {
        let mut batch = LogBatch::default();
        let mut buffers = lock(&self.buffers);
        let share = (BATCH_BYTES / buffers.len().max(1)).max(64 * 1024);
        for (instance, buf) in buffers.iter_mut() {
            let mut bytes = 0;
            let n = buf
                .lines
                .iter()
                .take(PER_TURN)
                .take_while(|l| {
                    bytes += l.line.len() + 64;
                    bytes <= share
                })
                .count()
                .max(1)
                .min(buf.lines.len());
            batch.lines.extend(buf.lines.drain(..n));
            if buf.dropped > 0 {
                batch.dropped.insert(instance.clone(), std::mem::take(&mut buf.dropped));
            }
        }
        buffers.retain(|_, b| !b.lines.is_empty());
        batch
    }

    fn has_lines(&self) -> bool {
        lock(&self.buffers).values().any(|b| !b.lines.is_empty())
    }
}

/// Sends batches until shutdown; a failed send is retried with backoff (lines wait in buffers).
pub async fn ship(client: Client, node: String, sink: LogSink, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    let mut pending: Option<LogBatch> = None;
    loop {
        if pending.is_none() && !sink.has_lines() {
            tokio::select! {
                _ = sink.ready.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            // Let a burst gather into one batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let batch = match pending.take() {
            Some(b) => b,
            None => sink.take_batch(),
        };
        if batch.lines.is_empty() && batch.dropped.is_empty() {
            continue;
        }
        match client.ship_logs(&node, &batch).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::debug!(error = %e, lines = batch.lines.len(), "shipping logs failed; retrying");
                pending = Some(batch);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Follows an exec instance's output files until `ended` turns true, then reads what is left.
/// Offsets are kept beside the files, so a restarted agent goes on where it stopped.
pub async fn follow_files(dir: PathBuf, origin: Origin, sink: LogSink, mut ended: watch::Receiver<bool>) {
    let offsets_path = dir.join("log-offsets.json");
    let mut offsets: BTreeMap<String, u64> =
        std::fs::read(&offsets_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut partial: HashMap<&'static str, String> = HashMap::new();
    loop {
        let last_round = *ended.borrow();
        let mut moved = false;
        for (name, stream) in [("stdout", LogStream::Stdout), ("stderr", LogStream::Stderr)] {
            let path = dir.join(format!("{name}.log"));
            let offset = offsets.entry(name.to_string()).or_insert(0);
            let Some((text, end)) = read_from(&path, *offset) else { continue };
            if end == *offset {
                continue;
            }
            moved = true;
            *offset = end;
            let buf = partial.entry(name).or_default();
            let data = if buf.is_empty() { text } else { std::mem::take(buf) + &text };
            let t = now_ms();
            // Whole lines go now; a trailing partial line waits for its end (or the last round).
            let (whole, rest) = match data.rfind('\n') {
                Some(nl) => data.split_at(nl + 1),
                None => ("", data.as_str()),
            };
            sink.push_many(&origin, stream, t, whole.lines().map(|l| l.trim_end_matches('\r').to_string()));
            if rest.len() > MAX_LINE || (last_round && !rest.is_empty()) {
                sink.push(&origin, stream, t, rest.to_string());
            } else {
                *buf = rest.to_string();
            }
            // Read to the end and big: empty it (the process appends, so it goes on at 0).
            if end >= TRUNCATE_AT
                && std::fs::metadata(&path).is_ok_and(|m| m.len() == end)
                && std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(0)).is_ok()
            {
                *offset = 0;
            }
        }
        if moved && let Ok(bytes) = serde_json::to_vec(&offsets) {
            let _ = std::fs::write(&offsets_path, bytes);
        }
        if last_round {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL) => {}
            _ = ended.changed() => {}
        }
    }
}

/// What was appended to `path` after `offset` (as text), and the new offset.
fn read_from(path: &std::path::Path, offset: u64) -> Option<(String, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    // A file shorter than our offset was emptied: start over.
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.take(4 << 20).read_to_end(&mut bytes).ok()?;
    let end = start + bytes.len() as u64;
    Some((String::from_utf8_lossy(&bytes).into_owned(), end))
}

/// Follows a container's log stream (stdout and stderr, with the engine's timestamps) until the
/// container ends. The time of the last line read is kept in `cursor`, so that a restarted agent
/// neither repeats nor skips lines.
pub async fn follow_container(
    docker: bollard::Docker,
    container: String,
    origin: Origin,
    sink: LogSink,
    cursor: PathBuf,
) {
    let since_ms: i64 =
        std::fs::read_to_string(&cursor).ok().and_then(|t| t.trim().parse::<i64>().ok()).map_or(0, |t| t + 1);
    // The first batch is saved at once: an agent restarted soon after must not repeat it.
    let mut last_saved: Option<std::time::Instant> = None;
    let mut last_t = since_ms;
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since((since_ms / 1000) as i32)
        .build();
    let mut stream = docker.logs(&container, Some(options));
    while let Some(item) = stream.next().await {
        let Ok(output) = item else { break };
        let stream_kind = match &output {
            bollard::container::LogOutput::StdErr { .. } => LogStream::Stderr,
            _ => LogStream::Stdout,
        };
        let bytes = output.into_bytes();
        let text = String::from_utf8_lossy(&bytes);
        for raw in text.lines() {
            let (t, line) = split_timestamp(raw);
            let t = t.unwrap_or_else(now_ms);
            if t < since_ms {
                continue;
            }
            last_t = last_t.max(t);
            sink.push(&origin, stream_kind, t, line.to_string());
        }
        if last_t > since_ms && last_saved.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            let _ = std::fs::write(&cursor, last_t.to_string());
            last_saved = Some(std::time::Instant::now());
        }
    }
    let _ = std::fs::write(&cursor, last_t.to_string());
}

/// `2026-11-23T15:04:05.123456789Z text` -> (ms, text).
fn split_timestamp(raw: &str) -> (Option<i64>, &str) {
    let Some((ts, rest)) = raw.split_once(' ') else { return (None, raw) };
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => (Some(t.timestamp_millis()), rest),
        Err(_) => (None, raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(instance: &str) -> Origin {
        Origin { app: "g/a".into(), instance: instance.into(), node: "n".into() }
    }

    #[test]
    fn a_flooding_instance_loses_its_own_lines_not_others() {
        let sink = LogSink::default();
        for i in 0..(PER_INSTANCE + 10) {
            sink.push(&origin("loud"), LogStream::Stdout, 0, format!("{i}"));
        }
        sink.push(&origin("quiet"), LogStream::Stdout, 0, "hello".into());
        let batch = sink.take_batch();
        assert_eq!(batch.dropped.get("loud"), Some(&10));
        assert!(batch.lines.iter().any(|l| l.instance == "quiet"), "the quiet one gets its turn at once");
        let loud = batch.lines.iter().filter(|l| l.instance == "loud").count();
        assert!(loud > 0 && loud <= PER_TURN, "the loud one gets a bounded turn: {loud}");
        assert!(sink.has_lines(), "and the rest of its lines wait for the next batch");
    }

    #[test]
    fn engine_timestamps_are_read() {
        let (t, line) = split_timestamp("2026-11-23T15:04:05.123456789Z hello world");
        assert_eq!(line, "hello world");
        assert_eq!(t.unwrap() % 1000, 123);
        assert_eq!(split_timestamp("no stamp here"), (None, "no stamp here"));
    }

    #[tokio::test]
    async fn files_are_followed_from_the_saved_offset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stdout.log"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("log-offsets.json"), r#"{"stdout": 4}"#).unwrap();
        let sink = LogSink::default();
        let (_tx, rx) = watch::channel(true);
        follow_files(dir.path().to_path_buf(), origin("x"), sink.clone(), rx).await;
        let lines: Vec<String> = sink.take_batch().lines.into_iter().map(|l| l.line).collect();
        assert_eq!(lines, ["two"], "`one` was shipped before the restart");
    }
}
