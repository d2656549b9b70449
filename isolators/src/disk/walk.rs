//! A directory walk that stays on one filesystem: the `du -k -s -x` that Mesos's `disk/du`
//! runs, in Rust, and the tree walk `disk/quota` uses to tag existing files with a project.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries that vanish while we walk (the container keeps running) are skipped, as du does.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Visits `root` and everything below it on `root`'s filesystem, without following symlinks
/// and without descending into other filesystems mounted below it (`du -x`). Returns
/// `Ok(false)` when `root` does not exist.
pub(crate) fn visit(
    root: &Path,
    mut f: impl FnMut(&Path, &Metadata) -> io::Result<()>,
) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if vanished(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    f(root, &meta)?;
    if !meta.is_dir() {
        return Ok(true);
    }
    let dev = meta.dev();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.dev() != dev {
                // A mount point: its contents belong to another filesystem.
                continue;
            }
            match f(&path, &meta) {
                Ok(()) => {}
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(true)
}

/// Bytes allocated to `root` and everything below it on its filesystem (`st_blocks` * 512,
/// as `du` counts), hard links counted once; 0 when `root` does not exist.
pub(crate) fn disk_usage(root: &Path) -> io::Result<u64> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total: u64 = 0;
    visit(root, |_, meta| {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_hard_links_once_and_ignores_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        let mut f = fs::File::create(dir.path().join("a")).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("sub/b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("sub/usr")).unwrap();
        let used = disk_usage(dir.path()).unwrap();
        let file = fs::metadata(dir.path().join("a")).unwrap().blocks() * 512;
        assert!(file >= 1 << 20);
        // The file once, plus the small directory and symlink inodes.
        assert!(
            used >= empty + file && used < empty + file + (64 << 10),
            "{used}"
        );
        assert_eq!(disk_usage(&dir.path().join("missing")).unwrap(), 0);
    }
}
