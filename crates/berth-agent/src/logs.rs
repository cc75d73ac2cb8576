//! Log collection: one collector per instance (each driver's own, under `driver/`) feeds a buffer
//! per instance; one shipper sends batches to the control plane.
//!
//! Each instance's buffer is bounded and drained in turn, so a flooding app loses its own excess
//! lines (counted, and reported with the next batch) and never delays another app's lines.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;
use berth_api::{Client, LogBatch, LogLine, LogStream};
use berth_core::retry::Retry;
use tokio::sync::{Notify, watch};

/// Lines kept per instance while the control plane is slow or away.
const PER_INSTANCE: usize = 50_000;
/// Lines taken from one instance per batch, so every instance gets its turn.
const PER_TURN: usize = 20_000;
/// About this much line text per batch, shared among instances (the server takes up to 16 MiB).
const BATCH_BYTES: usize = 2 << 20;
/// A line longer than this is cut (the rest is dropped).
pub(crate) const MAX_LINE: usize = 16 * 1024;

#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

/// Where collectors put lines; cheap to clone.
#[derive(Clone, Default)]
pub struct LogBuffers {
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

impl LogBuffers {
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
    pub(crate) fn take_batch(&self) -> LogBatch {
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
pub async fn ship(client: Client, node: String, sink: LogBuffers, mut shutdown: watch::Receiver<bool>) {
    let mut retry = Retry::new(Duration::from_millis(200), Duration::from_secs(5));
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
            Ok(()) => retry.succeeded(),
            Err(e) => {
                tracing::debug!(error = %e, lines = batch.lines.len(), "shipping logs failed; retrying");
                pending = Some(batch);
                tokio::select! {
                    _ = tokio::time::sleep(retry.next_delay(rand::random())) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
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
        let sink = LogBuffers::default();
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
}
