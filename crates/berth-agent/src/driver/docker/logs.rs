//! A container's output: the engine's log stream, with its timestamps and a saved cursor.

use std::path::PathBuf;
use std::time::Duration;

use berth_api::LogStream;
use futures_util::StreamExt;

use crate::logs::{LogBuffers, Origin};
use crate::now_ms;

/// Follows a container's log stream (stdout and stderr, with the engine's timestamps) until the
/// container ends. The time of the last line read is kept in `cursor`, so that a restarted agent
/// neither repeats nor skips lines.
pub async fn follow_container(
    docker: bollard::Docker,
    container: String,
    origin: Origin,
    sink: LogBuffers,
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

    #[test]
    fn engine_timestamps_are_read() {
        let (t, line) = split_timestamp("2026-11-23T15:04:05.123456789Z hello world");
        assert_eq!(line, "hello world");
        assert_eq!(t.unwrap() % 1000, 123);
        assert_eq!(split_timestamp("no stamp here"), (None, "no stamp here"));
    }
}
