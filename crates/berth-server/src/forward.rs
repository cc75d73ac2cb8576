//! Log forwarding: every sink has its own task and its own bounded queue, split per app and
//! drained in turn, so a slow sink only delays itself and a flooding app only loses its own lines.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{LogLine, LogStream};
use berth_core::Output;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use crate::lock;

/// Lines a sink holds per app while it cannot keep up.
const PER_APP: usize = 20_000;
/// Lines sent to a sink at once.
const BATCH: usize = 1_000;

#[derive(Default)]
struct Queues {
    per_app: HashMap<String, VecDeque<Arc<LogLine>>>,
}

/// One sink: its queue, its counters and the task that drains it.
pub(crate) struct Forwarder {
    pub sink: Output,
    queues: Mutex<Queues>,
    ready: Notify,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SinkStatus {
    pub sink: String,
    pub sent: u64,
    pub dropped: u64,
    pub queued: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Forwarder {
    fn new(sink: Output) -> Self {
        Forwarder {
            sink,
            queues: Mutex::default(),
            ready: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn push(&self, app: &str, lines: &[Arc<LogLine>]) {
        let mut queues = lock(&self.queues);
        let queue = queues.per_app.entry(app.to_string()).or_default();
        let room = PER_APP.saturating_sub(queue.len());
        queue.extend(lines.iter().take(room).cloned());
        if lines.len() > room {
            self.dropped.fetch_add((lines.len() - room) as u64, Ordering::Relaxed);
        }
        drop(queues);
        self.ready.notify_one();
    }

    /// Up to `BATCH` lines, taken from every app in turn.
    fn take(&self) -> Vec<Arc<LogLine>> {
        let mut queues = lock(&self.queues);
        let apps = queues.per_app.len().max(1);
        let share = (BATCH / apps).max(1);
        let mut out = Vec::new();
        for queue in queues.per_app.values_mut() {
            let n = queue.len().min(share);
            out.extend(queue.drain(..n));
        }
        queues.per_app.retain(|_, q| !q.is_empty());
        out
    }

    pub fn status(&self) -> SinkStatus {
        SinkStatus {
            sink: self.sink.to_string(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: lock(&self.queues).per_app.values().map(VecDeque::len).sum(),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// Every sink in use, created on first use.
pub(crate) struct Forwarders {
    by_sink: Mutex<HashMap<Output, Arc<Forwarder>>>,
    /// Sinks every app's lines go to (`--log-sink`).
    pub global: Vec<Output>,
    http: reqwest::Client,
}

impl Forwarders {
    pub fn new(global: Vec<Output>) -> Self {
        Forwarders { by_sink: Mutex::default(), global, http: berth_tls::http() }
    }

    fn forwarder(&self, sink: &Output, shutdown: &watch::Receiver<bool>) -> Arc<Forwarder> {
        let mut by_sink = lock(&self.by_sink);
        if let Some(f) = by_sink.get(sink) {
            return f.clone();
        }
        let f = Arc::new(Forwarder::new(sink.clone()));
        tokio::spawn(drain(f.clone(), self.http.clone(), shutdown.clone()));
        by_sink.insert(sink.clone(), f.clone());
        f
    }

    /// Hands an app's new lines to the server-wide sinks and the app's own.
    pub fn forward(&self, app: &str, app_sinks: &[String], lines: &[LogLine], shutdown: &watch::Receiver<bool>) {
        let own = app_sinks.iter().filter_map(|s| Output::parse_logs(s).ok());
        let mut sinks: Vec<Output> = self.global.iter().cloned().chain(own).collect();
        sinks.dedup();
        if sinks.is_empty() {
            return;
        }
        let shared: Vec<Arc<LogLine>> = lines.iter().cloned().map(Arc::new).collect();
        for sink in sinks {
            self.forwarder(&sink, shutdown).push(app, &shared);
        }
    }

    pub fn status(&self) -> Vec<SinkStatus> {
        let mut out: Vec<SinkStatus> = lock(&self.by_sink).values().map(|f| f.status()).collect();
        for sink in &self.global {
            if !out.iter().any(|s| s.sink == sink.to_string()) {
                out.push(SinkStatus { sink: sink.to_string(), sent: 0, dropped: 0, queued: 0, last_error: None });
            }
        }
        out.sort_by(|a, b| a.sink.cmp(&b.sink));
        out
    }
}

/// Sends until shutdown. A batch that fails is retried with backoff; meanwhile new lines queue up
/// to the per-app bound and the rest are counted as dropped.
async fn drain(f: Arc<Forwarder>, http: reqwest::Client, mut shutdown: watch::Receiver<bool>) {
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut udp: Option<tokio::net::UdpSocket> = None;
    let mut batch: Vec<Arc<LogLine>> = Vec::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if batch.is_empty() {
            batch = f.take();
        }
        if batch.is_empty() {
            tokio::select! {
                _ = f.ready.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let sent = match &f.sink {
            Output::Syslog { addr, udp: false } => send_syslog_tcp(&mut conn, addr, &batch).await,
            Output::Syslog { addr, udp: true } => send_syslog_udp(&mut udp, addr, &batch).await,
            Output::Http { url } => send_http(&http, url, &batch).await,
            // Log outputs are parsed as such: an alert output never gets here.
            Output::Webhook { .. } | Output::Alertmanager { .. } => Err("not a log output".into()),
        };
        match sent {
            Ok(()) => {
                f.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                backoff = Duration::from_millis(200);
            }
            Err(why) => {
                tracing::debug!(sink = %f.sink, %why, "forwarding logs failed; retrying");
                *lock(&f.last_error) = Some(why);
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// RFC 5424: facility user; severity info for stdout, error for stderr; the instance as PROCID.
pub(crate) fn rfc5424(line: &LogLine) -> String {
    let pri = 8 + if line.stream == LogStream::Stderr { 3 } else { 6 };
    let time = chrono::DateTime::from_timestamp_millis(line.t)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into());
    let field = |s: &str| {
        let clean: String = s.chars().filter(|c| c.is_ascii_graphic()).take(48).collect();
        if clean.is_empty() { "-".to_string() } else { clean }
    };
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
    let stream = if line.stream == LogStream::Stderr { "stderr" } else { "stdout" };
    format!(
        "<{pri}>1 {time} {} {} {} {stream} [berth@32473 app=\"{}\" instance=\"{}\" node=\"{}\"] {}",
        field(&line.node),
        field(&line.app),
        field(&line.instance),
        escape(&line.app),
        escape(&line.instance),
        escape(&line.node),
        line.line
    )
}

async fn send_syslog_tcp(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: &str,
    batch: &[Arc<LogLine>],
) -> Result<(), String> {
    if conn.is_none() {
        let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        *conn = Some(stream);
    }
    let Some(stream) = conn.as_mut() else { return Err("no connection".into()) };
    // RFC 6587 octet counting: every message says its length, so lines may hold anything.
    let mut buf = Vec::with_capacity(batch.len() * 160);
    for line in batch {
        let msg = rfc5424(line);
        buf.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    tokio::time::timeout(Duration::from_secs(10), stream.write_all(&buf))
        .await
        .map_err(|_| format!("writing to {addr} timed out"))?
        .map_err(|e| format!("writing to {addr}: {e}"))
}

async fn send_syslog_udp(
    sock: &mut Option<tokio::net::UdpSocket>,
    addr: &str,
    batch: &[Arc<LogLine>],
) -> Result<(), String> {
    if sock.is_none() {
        let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.map_err(|e| format!("udp socket: {e}"))?;
        s.connect(addr).await.map_err(|e| format!("udp to {addr}: {e}"))?;
        *sock = Some(s);
    }
    let Some(s) = sock.as_ref() else { return Err("no socket".into()) };
    for line in batch {
        let mut msg = rfc5424(line);
        // One message per datagram, kept under the common 8 KiB limit.
        msg.truncate(msg.floor_char_boundary(8000));
        s.send(msg.as_bytes()).await.map_err(|e| format!("sending to {addr}: {e}"))?;
    }
    Ok(())
}

async fn send_http(http: &reqwest::Client, url: &str, batch: &[Arc<LogLine>]) -> Result<(), String> {
    let mut body = Vec::with_capacity(batch.len() * 200);
    for line in batch {
        serde_json::to_writer(&mut body, line.as_ref()).map_err(|e| e.to_string())?;
        body.push(b'\n');
    }
    let resp = http
        .post(url)
        .header("content-type", "application/x-ndjson")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("{url} answered {}", resp.status())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(app: &str, text: &str) -> LogLine {
        LogLine {
            t: 1_795_000_000_123,
            app: app.into(),
            instance: "web-1".into(),
            node: "n1".into(),
            stream: LogStream::Stderr,
            line: text.into(),
        }
    }

    #[test]
    fn syslog_lines_follow_rfc5424() {
        let msg = rfc5424(&line("shop/web", "boom \"quoted\""));
        assert!(msg.starts_with("<11>1 2026-"), "{msg}");
        assert!(msg.contains(" n1 shop/web web-1 stderr [berth@32473 app=\"shop/web\""), "{msg}");
        assert!(msg.ends_with("] boom \"quoted\""), "{msg}");
    }

    #[test]
    fn a_flooding_app_loses_its_own_lines_and_others_keep_their_turn() {
        let f = Forwarder::new(Output::Http { url: "http://x/y".into() });
        let flood: Vec<Arc<LogLine>> = (0..PER_APP + 5).map(|i| Arc::new(line("loud", &i.to_string()))).collect();
        f.push("loud", &flood);
        f.push("quiet", &[Arc::new(line("quiet", "hi"))]);
        assert_eq!(f.dropped.load(Ordering::Relaxed), 5);
        let batch = f.take();
        assert!(batch.iter().any(|l| l.app == "quiet"), "the quiet app's line goes in the first batch");
        assert!(batch.len() <= BATCH);
    }
}
