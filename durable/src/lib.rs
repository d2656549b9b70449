//! Crash-safe file replacement, shared by every Cairn daemon that keeps state on disk (the
//! master's standalone registry, the agent's checkpoints, `oci` bundles).
//!
//! Write a temp file in the same directory, fsync it, rename it over the target, fsync the
//! directory. A crash at any point leaves either the old or the new content, never a mix
//! (`rename(2)` atomicity; the directory fsync makes the rename itself durable).
//!
//! It is its own small crate because `api`, where agent and master otherwise meet, does no I/O.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Suffix of in-flight temp files; [`remove_stale_temps`] deletes leftovers after a crash.
pub const TEMP_SUFFIX: &str = ".cairn-tmp";

/// Atomically replaces `path` with `bytes`.
///
/// # Errors
/// Any I/O failure; `path` then still holds its previous content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{}{TEMP_SUFFIX}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes temp files a crash left in `dir`.
///
/// # Errors
/// The directory cannot be listed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("state.json.1{TEMP_SUFFIX}")),
            b"partial",
        )
        .unwrap();
        fs::write(dir.path().join("state.json"), b"whole").unwrap();
        remove_stale_temps(dir.path()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}
