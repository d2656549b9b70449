//! A log file with size-based rotation, in the spirit of Mesos's `LogrotateContainerLogger`:
//! when writing would take `stdout` past its limit, `stdout.N` becomes `stdout.N+1` (the
//! oldest is dropped), `stdout` becomes `stdout.1`, and a fresh `stdout` is started.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A rotating log file.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingLog {
    /// Opens (appending to) `path`, rotating beyond `max_bytes` and keeping `max_files`
    /// rotated files (`0` truncates in place). `max_bytes == 0` never rotates.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            max_files,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files > 0 {
            for n in (1..self.max_files).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Appends `buf`, rotating first when it would go past the limit.
    ///
    /// # Errors
    /// Writing or rotating failed.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.max_bytes > 0 && self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut log = RotatingLog::open(&path, 10, 2).unwrap();
        for chunk in ["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"] {
            log.write(chunk.as_bytes()).unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "dddddddd");
        assert_eq!(fs::read_to_string(rotated(&path, 1)).unwrap(), "cccccccc");
        assert_eq!(fs::read_to_string(rotated(&path, 2)).unwrap(), "bbbbbbbb");
        assert!(!rotated(&path, 3).exists());
    }
}
