//! cgroupfs file access: reads into caller buffers (no allocation per sample), writes that
//! name the file on failure, and the kill-then-remove loop shared by both backends.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::CgroupError;

/// How long [`kill_tree`] keeps killing before giving up; fork bombs need a few rounds.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole (small) file as a `String`; for setup, not for sampling.
pub(crate) fn read_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| io_err("read", path, e))
}

/// Reads `path` into `buf` and returns the text; cgroupfs files used for statistics fit in
/// a few KiB. Text beyond `buf` is cut (the caller sizes `buf` for the file).
pub(crate) fn read_into<'a>(path: &Path, buf: &'a mut [u8]) -> Result<&'a str, CgroupError> {
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read", path, e)),
        }
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what: "utf-8 text",
        text: String::from_utf8_lossy(&buf[..len.min(64)]).into_owned(),
    })
}

/// Reads a single-value file: a number, or `max` (returned as `None`).
pub(crate) fn read_limit(path: &Path) -> Result<Option<u64>, CgroupError> {
    let mut buf = [0u8; 64];
    let text = read_into(path, &mut buf)?.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what: "a number or max",
        text: text.to_string(),
    })
}

/// Reads a single number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    read_limit(path)?.ok_or_else(|| CgroupError::Parse {
        path: path.to_path_buf(),
        what: "a number",
        text: "max".to_string(),
    })
}

/// Writes `value` to a cgroup control file (one `write(2)`, as the kernel expects).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| io_err("write", path, e))
}

/// Creates `dir` and its missing parents.
pub(crate) fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, e))
}

/// The cgroup directories below `dir` (children before their parent, `dir` last).
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subtree(&entry.path(), out)?;
        }
    }
    out.push(dir.to_path_buf());
    Ok(())
}

/// The pids in a `cgroup.procs` file; a vanished cgroup has none.
pub(crate) fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", &path, e)),
    }
}

/// SIGKILLs every process in `dir` and its descendants until none is left. A fork bomb can
/// fork between reading `cgroup.procs` and the kill, so this loops; callers stop forks first
/// where they can (v1: `pids.max` 0, v2: `cgroup.kill`).
pub(crate) fn kill_tree(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut dirs = Vec::new();
    loop {
        dirs.clear();
        subtree(dir, &mut dirs)?;
        let mut remaining = 0;
        for d in &dirs {
            for pid in procs(d)? {
                remaining += 1;
                // ESRCH: it exited meanwhile; anything else shows up in the next round.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if remaining == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Unkillable {
                path: dir.to_path_buf(),
                remaining,
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Removes `dir` and the cgroups below it, children first. Killed tasks leave their cgroup
/// a moment after the kill, so `EBUSY` is retried until the kill timeout.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut dirs = Vec::new();
    subtree(dir, &mut dirs)?;
    for d in &dirs {
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    // Tasks that were killed may still be exiting; kill again, then retry.
                    kill_tree(d)?;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io_err("rmdir", d, e)),
            }
        }
    }
    Ok(())
}

/// The names of the child directories of `dir` (container cgroups below the parent).
pub(crate) fn child_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}
