//! Health probes, shared by agents (an instance's health) and routers (active checks): an HTTP
//! GET (2xx or 3xx is healthy) or a TCP connect, each under a timeout. A failed probe says why
//! as data (`Failure`), with the words people read as its `Display`.

use std::fmt;
use std::time::Duration;

use berth_core::Dur;
use berth_core::spec::HealthSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Nothing answered within the check's timeout.
    NoAnswer { timeout: Dur },
    /// The check ended, unhealthy, after `after_ms`.
    Failed { why: Why, after_ms: u128 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    Connect { addr: String, error: String },
    Send { error: String },
    Read { error: String },
    NotHttp { line: String },
    Status { path: String, status: u16 },
}

/// A failure's kind, its figures aside: the same kind failing again is no news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NoAnswer,
    Connect,
    Send,
    Read,
    NotHttp,
    Status(u16),
}

impl Failure {
    pub fn kind(&self) -> Kind {
        match self {
            Failure::NoAnswer { .. } => Kind::NoAnswer,
            Failure::Failed { why, .. } => match why {
                Why::Connect { .. } => Kind::Connect,
                Why::Send { .. } => Kind::Send,
                Why::Read { .. } => Kind::Read,
                Why::NotHttp { .. } => Kind::NotHttp,
                Why::Status { status, .. } => Kind::Status(*status),
            },
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Connect { addr, error } => write!(f, "connect {addr}: {error}"),
            Why::Send { error } => write!(f, "send: {error}"),
            Why::Read { error } => write!(f, "read: {error}"),
            Why::NotHttp { line } => write!(f, "not an HTTP answer: {line:?}"),
            Why::Status { path, status } => write!(f, "GET {path} answered {status}"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAnswer { timeout } => write!(f, "no answer within {timeout}"),
            Failure::Failed { why, after_ms } => write!(f, "{why} after {after_ms} ms"),
        }
    }
}

/// Probes `host:port` once; `Err` says why it is unhealthy.
pub async fn probe(spec: &HealthSpec, host: &str, port: u16) -> Result<(), Failure> {
    let timeout = spec.timeout.as_duration();
    let began = std::time::Instant::now();
    match tokio::time::timeout(timeout, probe_inner(spec, host, port)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(Failure::Failed { why, after_ms: began.elapsed().as_millis() }),
        Err(_) => Err(Failure::NoAnswer { timeout: spec.timeout }),
    }
}

/// Most of an answer a check reads before it closes: the rest is not waited for.
const READ_AT_MOST: usize = 64 * 1024;

async fn probe_inner(spec: &HealthSpec, host: &str, port: u16) -> Result<(), Why> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| Why::Connect { addr: format!("{host}:{port}"), error: e.to_string() })?;
    let Some(path) = &spec.http else {
        return Ok(());
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| Why::Send { error: e.to_string() })?;
    // The status line decides; the rest of the answer is read too (up to the server's close, as
    // `Connection: close` asks), because closing a socket with unread data sends a reset, which
    // many servers log as an error on every check.
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while !complete(&answer) && answer.len() < READ_AT_MOST {
        let n = stream.read(&mut chunk).await.map_err(|e| Why::Read { error: e.to_string() })?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&answer[..answer.len().min(32)]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Why::NotHttp { line: line.trim().to_string() })?;
    if (200..400).contains(&status) { Ok(()) } else { Err(Why::Status { path: path.clone(), status }) }
}

/// Whether `answer` holds a whole HTTP response: its head, and the body its framing announces
/// (a length, or chunks up to the last); a body framed by the close is complete at EOF only.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let body = &answer[end + 4..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim() == name).map(|(_, v)| v.trim().to_string()))
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => body.len() >= len,
        // 204, 304 and 1xx have no body.
        None => head.split_whitespace().nth(1).is_some_and(|c| c == "204" || c == "304" || c.starts_with('1')),
    }
}

/// The wait before the next probe. Until an instance first passes, it is probed at least every
/// second, so a deploy notices a started instance at once rather than an interval later.
pub fn interval(spec: &HealthSpec, passed_once: bool) -> Duration {
    let every = spec.interval.as_duration().max(Duration::from_millis(50));
    if passed_once { every } else { every.min(Duration::from_secs(1)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_reads_as_before_and_compares_by_kind() {
        let refused = |ms| Failure::Failed {
            why: Why::Connect { addr: "127.0.0.1:9".into(), error: "Connection refused (os error 111)".into() },
            after_ms: ms,
        };
        assert_eq!(refused(0).to_string(), "connect 127.0.0.1:9: Connection refused (os error 111) after 0 ms");
        assert_eq!(refused(0).kind(), refused(12).kind(), "the time it took is no news");
        let status = |status| Failure::Failed { why: Why::Status { path: "/".into(), status }, after_ms: 12 };
        assert_eq!(status(503).to_string(), "GET / answered 503 after 12 ms");
        assert_ne!(status(503).kind(), status(500).kind(), "another status is");
        let timeout = Dur::parse("1s").unwrap();
        assert_eq!(Failure::NoAnswer { timeout }.to_string(), "no answer within 1s");
    }

    #[test]
    fn an_answer_is_complete_by_its_framing() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!complete(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close"), "framed by the close");
    }
}
