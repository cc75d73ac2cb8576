//! App logs: lines shipped by agents, kept per app on disk as JSON lines with size-based rotation,
//! read back merged in time order and followed live.
//!
//! Layout: `logs/GROUP/NAME/current.jsonl`, then `1.jsonl` (newest rotated) up to `N-1.jsonl`.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_api::LogLine;
use berth_logfile::{Limit, Naming, RotatingFile};
use tokio::sync::broadcast;

use crate::lock;

/// How much log an app may keep on disk: `files` files of up to `file_bytes` each.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub file_bytes: u64,
    pub files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { file_bytes: 8 << 20, files: 4 }
    }
}

struct AppLog {
    file: RotatingFile,
    live: broadcast::Sender<Arc<LogLine>>,
}

/// Which lines a reader wants.
pub(crate) struct Filter {
    pub since: Option<i64>,
    /// Lines of any of these instances (an id or its prefix); every line when unset.
    pub instances: Option<Vec<String>>,
    pub grep: Option<regex::Regex>,
}

impl Filter {
    pub fn keeps(&self, line: &LogLine) -> bool {
        self.since.is_none_or(|s| line.t >= s)
            && self.instances.as_ref().is_none_or(|ids| ids.iter().any(|i| line.instance.starts_with(i.as_str())))
            && self.grep.as_ref().is_none_or(|re| re.is_match(&line.line))
    }
}

/// A reader's view: the files as they stood (open handles survive rotation), and live lines after.
pub(crate) struct Snapshot {
    files: Vec<(File, u64)>,
    pub live: broadcast::Receiver<Arc<LogLine>>,
}

pub(crate) struct LogStore {
    root: PathBuf,
    limits: LogLimits,
    apps: Mutex<HashMap<String, Arc<Mutex<AppLog>>>>,
    /// Lines agents had to drop, per instance, since the server started.
    pub dropped: Mutex<HashMap<String, u64>>,
}

impl LogStore {
    pub fn new(root: PathBuf, limits: LogLimits) -> Self {
        LogStore { root, limits, apps: Mutex::default(), dropped: Mutex::default() }
    }

    fn app(&self, app: &str) -> std::io::Result<Arc<Mutex<AppLog>>> {
        let mut apps = lock(&self.apps);
        if let Some(log) = apps.get(app) {
            return Ok(log.clone());
        }
        let dir = self.root.join(app);
        std::fs::create_dir_all(&dir)?;
        let limit = Limit { bytes: self.limits.file_bytes, files: self.limits.files };
        let file = RotatingFile::open(Naming::Numbered { dir, ext: "jsonl".into() }, limit)?;
        let (live, _) = broadcast::channel(4096);
        let log = Arc::new(Mutex::new(AppLog { file, live }));
        apps.insert(app.to_string(), log.clone());
        Ok(log)
    }

    /// Appends lines (all of one app), rotating as soon as the current file is full: no file grows
    /// past the limit by more than one line.
    pub fn append(&self, app: &str, lines: &[LogLine]) -> std::io::Result<()> {
        let log = self.app(app)?;
        let mut log = lock(&log);
        let mut buf = Vec::with_capacity(64 * 1024);
        for line in lines {
            serde_json::to_writer(&mut buf, line).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        log.file.write_lines(&buf)?;
        for line in lines {
            // No reader is fine: the send only fails when nobody follows.
            let _ = log.live.send(Arc::new(line.clone()));
        }
        Ok(())
    }

    /// Opens the app's files, oldest first, and subscribes to new lines, at one instant: no line is
    /// missed or seen twice between the two.
    pub fn snapshot(&self, app: &str) -> std::io::Result<Snapshot> {
        let log = self.app(app)?;
        let log = lock(&log);
        let mut files = Vec::new();
        for n in (0..self.limits.files.max(1)).rev() {
            if let Ok(f) = File::open(log.file.naming().path(n)) {
                let len = if n == 0 { log.file.size() } else { f.metadata()?.len() };
                files.push((f, len));
            }
        }
        Ok(Snapshot { files, live: log.live.subscribe() })
    }

    pub fn count_dropped(&self, dropped: &std::collections::BTreeMap<String, u64>) {
        let mut counts = lock(&self.dropped);
        for (instance, n) in dropped {
            *counts.entry(instance.clone()).or_default() += n;
        }
    }
}

impl Snapshot {
    /// The last `tail` stored lines that pass `filter`, in time order.
    pub fn read(&mut self, filter: &Filter, tail: usize) -> Vec<LogLine> {
        // `logs -n 0`: nothing of the past (as docker and kubectl do), only what follows.
        if tail == 0 {
            return Vec::new();
        }
        let mut kept: VecDeque<LogLine> = VecDeque::new();
        for (file, len) in &mut self.files {
            if file.seek(SeekFrom::Start(0)).is_err() {
                continue;
            }
            let reader = BufReader::new(file.take(*len));
            for line in reader.lines().map_while(Result::ok) {
                let Ok(parsed) = serde_json::from_str::<LogLine>(&line) else { continue };
                if filter.keeps(&parsed) {
                    if kept.len() == tail {
                        kept.pop_front();
                    }
                    kept.push_back(parsed);
                }
            }
        }
        let mut out: Vec<LogLine> = kept.into();
        // Nodes ship in batches: put lines of several instances in time order.
        out.sort_by_key(|l| l.t);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::LogStream;

    fn line(t: i64, instance: &str, text: &str) -> LogLine {
        LogLine {
            t,
            app: "g/a".into(),
            instance: instance.into(),
            node: "n".into(),
            stream: LogStream::Stdout,
            line: text.into(),
        }
    }

    #[test]
    fn rotation_bounds_disk_and_reads_merge_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_path_buf(), LogLimits { file_bytes: 4096, files: 3 });
        for batch in 0..200 {
            let lines: Vec<LogLine> =
                (0..10).map(|i| line(batch * 10 + (9 - i), &format!("i{i}"), &format!("line {batch}/{i}"))).collect();
            store.append("g/a", &lines).unwrap();
        }
        let total: u64 =
            std::fs::read_dir(dir.path().join("g/a")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3 * 4096 + 4096, "three files of about 4 KiB at most: {total} bytes");
        let mut snap = store.snapshot("g/a").unwrap();
        let all = Filter { since: None, instances: None, grep: None };
        let tail = snap.read(&all, 25);
        assert_eq!(tail.len(), 25);
        assert!(tail.windows(2).all(|w| w[0].t <= w[1].t), "time order");
        assert_eq!(tail.last().unwrap().t, 1999);
        let only = Filter {
            since: Some(1900),
            instances: Some(vec!["i3".into()]),
            grep: Some(regex::Regex::new("19[0-9]/").unwrap()),
        };
        let picked = snap.read(&only, 1000);
        assert!(!picked.is_empty() && picked.iter().all(|l| l.instance == "i3" && l.t >= 1900), "{picked:?}");
    }

    #[tokio::test]
    async fn followers_get_new_lines_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_path_buf(), LogLimits::default());
        store.append("g/a", &[line(1, "x", "before")]).unwrap();
        let mut snap = store.snapshot("g/a").unwrap();
        store.append("g/a", &[line(2, "x", "after")]).unwrap();
        let stored = snap.read(&Filter { since: None, instances: None, grep: None }, 10);
        assert_eq!(stored.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["before"]);
        assert_eq!(snap.live.recv().await.unwrap().line, "after");
    }
}
