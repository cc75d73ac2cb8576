//! A file of lines that rotates by size: what the server keeps of each app's logs and what a
//! router writes as its access log. Appends are whole lines; when the current file reaches its
//! limit it becomes the newest rotated file and the oldest goes, so the disk holds at most
//! `files` files of about `bytes` each (a file passes the limit by at most the line that crosses
//! it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How big a file may grow and how many are kept, the current one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub files: usize,
}

/// How the files are named: the current one, then the rotated ones, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// `PATH`, then `PATH.1`, `PATH.2`, ... (an access log).
    Suffixed(PathBuf),
    /// `DIR/current.EXT`, then `DIR/1.EXT`, `DIR/2.EXT`, ... (an app's logs).
    Numbered { dir: PathBuf, ext: String },
}

impl Naming {
    /// The file `n` rotations old (0: the current one).
    pub fn path(&self, n: usize) -> PathBuf {
        match self {
            Naming::Suffixed(path) if n == 0 => path.clone(),
            Naming::Suffixed(path) => {
                let mut name = path.as_os_str().to_os_string();
                name.push(format!(".{n}"));
                PathBuf::from(name)
            }
            Naming::Numbered { dir, ext } if n == 0 => dir.join(format!("current.{ext}")),
            Naming::Numbered { dir, ext } => dir.join(format!("{n}.{ext}")),
        }
    }
}

/// The current file, open for appending, and what it holds.
pub struct RotatingFile {
    naming: Naming,
    limit: Limit,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (or creates) the current file and goes on where it ends.
    pub fn open(naming: Naming, limit: Limit) -> std::io::Result<RotatingFile> {
        let file = open_append(&naming.path(0))?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { naming, limit, file, size })
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Bytes in the current file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends whole lines (`bytes` ends with a newline), rotating when the current file reaches
    /// its limit: the line that crosses the limit ends the file.
    pub fn write_lines(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = self.limit.bytes.saturating_sub(self.size) as usize;
            if bytes.len() <= room {
                self.file.write_all(bytes)?;
                self.size += bytes.len() as u64;
                bytes = &[];
            } else {
                // Up to the end of the line that crosses the limit.
                let from = room.saturating_sub(1).min(bytes.len() - 1);
                let cut = memchr::memchr(b'\n', &bytes[from..]).map_or(bytes.len(), |i| from + i + 1);
                self.file.write_all(&bytes[..cut])?;
                bytes = &bytes[cut..];
                self.size += cut as u64;
            }
            if self.size >= self.limit.bytes {
                self.rotate()?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// Shifts the rotated files up by one, dropping the oldest, and starts a new current file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limit.files.max(1);
        let _ = std::fs::remove_file(self.naming.path(keep - 1));
        for n in (1..keep.saturating_sub(1)).rev() {
            let _ = std::fs::rename(self.naming.path(n), self.naming.path(n + 1));
        }
        if keep > 1 {
            std::fs::rename(self.naming.path(0), self.naming.path(1))?;
        } else {
            std::fs::remove_file(self.naming.path(0))?;
        }
        self.file = open_append(&self.naming.path(0))?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_as_each_log_has_them() {
        let access = Naming::Suffixed("/var/log/access.log".into());
        assert_eq!((access.path(0), access.path(2)), ("/var/log/access.log".into(), "/var/log/access.log.2".into()));
        let app = Naming::Numbered { dir: "/d/g/web".into(), ext: "jsonl".into() };
        assert_eq!((app.path(0), app.path(1)), ("/d/g/web/current.jsonl".into(), "/d/g/web/1.jsonl".into()));
    }

    #[test]
    fn rotation_keeps_whole_lines_and_bounds_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::Suffixed(dir.path().join("x.log"));
        let mut f = RotatingFile::open(naming.clone(), Limit { bytes: 100, files: 3 }).unwrap();
        let mut all = Vec::new();
        for i in 0..100 {
            let line = format!("line {i:04} ..........\n");
            all.push(line.clone());
            f.write_lines(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert!(!naming.path(3).exists(), "at most 3 files");
        let mut kept = String::new();
        for n in (0..3).rev() {
            let text = std::fs::read_to_string(naming.path(n)).unwrap_or_default();
            assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
            if n > 0 {
                assert!(text.len() < 100 + 24, "a file passes the limit by one line at most: {}", text.len());
            }
            kept.push_str(&text);
        }
        assert!(all.concat().ends_with(&kept), "the newest lines, in order");
        // Reopened, it goes on where the current file ends.
        let size = std::fs::metadata(naming.path(0)).unwrap().len();
        assert_eq!(RotatingFile::open(naming, Limit { bytes: 100, files: 3 }).unwrap().size(), size);
    }
}
