//! The local cluster's state directory: a fresh one under the temporary directory (removed
//! when the cluster stops) or one the user gives (kept, so a later `cairn dev --dir` finds the
//! master's registry, the agent's id and its images again).
//!
//! Before anything is deleted, mounts left below the directory (a container's root
//! filesystem whose teardown failed) are detached: deleting through a live overlay or bind
//! mount would delete the files of the image layers, or of the host, it shows.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// See the module docs.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    temporary: bool,
}

impl WorkDir {
    /// `dir` if given (created if missing), otherwise a new `cairn-dev-XXXXXX` directory in
    /// the temporary directory.
    ///
    /// # Errors
    /// The directory cannot be created, or `dir` is not absolute-able.
    pub fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            Some(dir) => {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                // The agent requires an absolute work directory.
                let path = fs::canonicalize(dir)
                    .with_context(|| format!("resolving {}", dir.display()))?;
                Ok(Self {
                    path,
                    temporary: false,
                })
            }
            None => {
                let path = tempfile::Builder::new()
                    .prefix("cairn-dev-")
                    .tempdir()
                    .context("creating a temporary directory")?
                    .keep();
                Ok(Self {
                    path,
                    temporary: true,
                })
            }
        }
    }

    /// Whether [`WorkDir::clean_up`] deletes it.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Detaches mounts left below the directory, then deletes it if it is temporary.
    ///
    /// # Errors
    /// A mount could not be detached (nothing is deleted then), or deleting failed.
    pub fn clean_up(&self) -> anyhow::Result<()> {
        let mut mounts = mounts_below(&self.path);
        // Innermost first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in &mounts {
            rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH)
                .with_context(|| format!("unmounting {} (left by a container)", m.display()))?;
        }
        let still = mounts_below(&self.path);
        if !still.is_empty() {
            anyhow::bail!(
                "not deleting {}: still mounted below it: {}",
                self.path.display(),
                still
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if self.temporary {
            fs::remove_dir_all(&self.path)
                .with_context(|| format!("deleting {}", self.path.display()))?;
        }
        Ok(())
    }
}

/// Mount points at or below `dir` (mountinfo escapes spaces and the like as `\040` octal).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/odd\"), r"/odd\");
    }
}
