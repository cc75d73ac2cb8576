//! An exec instance's output: the files its process writes, followed from saved offsets.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use berth_api::LogStream;
use tokio::sync::watch;

use crate::logs::{LogBuffers, MAX_LINE, Origin};
use crate::now_ms;

/// How often the output files are read.
const FILE_POLL: Duration = Duration::from_millis(100);
/// A file read to its end and this big is emptied: the process appends, so it goes on at 0.
const TRUNCATE_AT: u64 = 8 << 20;

/// Follows an exec instance's output files until `ended` turns true, then reads what is left.
/// Offsets are kept beside the files, so a restarted agent goes on where it stopped.
pub async fn follow_files(dir: PathBuf, origin: Origin, sink: LogBuffers, mut ended: watch::Receiver<bool>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(instance: &str) -> Origin {
        Origin { app: "g/a".into(), instance: instance.into(), node: "n".into() }
    }

    #[tokio::test]
    async fn files_are_followed_from_the_saved_offset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stdout.log"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("log-offsets.json"), r#"{"stdout": 4}"#).unwrap();
        let sink = LogBuffers::default();
        let (_tx, rx) = watch::channel(true);
        follow_files(dir.path().to_path_buf(), origin("x"), sink.clone(), rx).await;
        let lines: Vec<String> = sink.take_batch().lines.into_iter().map(|l| l.line).collect();
        assert_eq!(lines, ["two"], "`one` was shipped before the restart");
    }
}
