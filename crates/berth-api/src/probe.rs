//! Health probes shared by agents and routers: an HTTP GET (2xx or 3xx is healthy) or a TCP
//! connect, each under a timeout.

use std::time::Duration;

use berth_core::spec::HealthSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probes `host:port` once; `Err` says why it is unhealthy.
pub async fn probe(spec: &HealthSpec, host: &str, port: u16) -> Result<(), String> {
    let timeout = spec.timeout.as_duration();
    match tokio::time::timeout(timeout, probe_inner(spec, host, port)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", spec.timeout)),
    }
}

async fn probe_inner(spec: &HealthSpec, host: &str, port: u16) -> Result<(), String> {
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let Some(path) = &spec.http else {
        return Ok(());
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 32];
    let mut read = 0;
    // The status line's first 12 bytes ("HTTP/1.1 200") are all we need.
    while read < 12 {
        let n = stream.read(&mut head[read..]).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {path} answered {status}")) }
}

/// How long to sleep between probes.
/// The wait before the next probe. Until an instance first passes, it is probed at least every
/// second, so a deploy notices a started instance at once rather than an interval later.
pub fn interval(spec: &HealthSpec, passed_once: bool) -> Duration {
    let every = spec.interval.as_duration().max(Duration::from_millis(50));
    if passed_once { every } else { every.min(Duration::from_secs(1)) }
}
