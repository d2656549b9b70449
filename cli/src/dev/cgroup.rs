//! The local cluster's cgroup parent: `cairn-dev-<pid>` below this process's deepest cgroup, in
//! every hierarchy (v1 and v2), removed with everything beneath it when the cluster stops.
//!
//! On a hybrid host a process sits at different paths in different v1 hierarchies; the parent
//! goes below the deepest, so in the other hierarchies libcontainer creates missing ancestors
//! when it places a container. Those ancestors are recorded here and removed too.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct DevCgroup {
    /// Relative to each hierarchy's root, in absolute form (`/a/b/cairn-dev-42`): the agent's
    /// `cgroup_parent`.
    pub path: PathBuf,
    /// Directories that did not exist when the cluster started, deepest first.
    created: Vec<PathBuf>,
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mount_point = PathBuf::from(pre.split_whitespace().nth(4)?);
            matches!(fstype, "cgroup" | "cgroup2").then_some(mount_point)
        })
        .collect()
}

impl DevCgroup {
    /// Picks the parent and records which of its directories are new.
    pub fn new() -> Self {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let has_v1 = text.lines().any(|l| !l.starts_with("0::"));
        let deepest = text
            .lines()
            .filter(|l| !(has_v1 && l.starts_with("0::")))
            .filter_map(|l| l.splitn(3, ':').nth(2).map(PathBuf::from))
            .max_by_key(|p| p.components().count())
            .unwrap_or_else(|| PathBuf::from("/"));
        let path = deepest.join(format!("cairn-dev-{}", std::process::id()));
        let mut created = Vec::new();
        for mount in cgroup_mounts() {
            let Ok(rel) = path.strip_prefix("/") else {
                continue;
            };
            let mut dir = mount.join(rel);
            while !dir.exists() && dir != mount {
                created.push(dir.clone());
                match dir.parent() {
                    Some(up) => dir = up.to_path_buf(),
                    None => break,
                }
            }
        }
        // Deepest first, so each directory is empty when its turn comes.
        created.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        Self { path, created }
    }

    /// Removes every cgroup below the parent, then the parent and the ancestors made for it.
    /// A cgroup whose last process is still exiting is busy for a moment: retried for a few
    /// seconds. Returns the directories that could not be removed.
    pub fn remove(&self) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = Vec::new();
            for dir in &self.created {
                remove_tree(dir, &mut left);
            }
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removes a cgroup directory after its child cgroups (cgroup files cannot be unlinked; a
/// cgroup is removed with rmdir once it has no children and no processes).
fn remove_tree(dir: &Path, left: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), left);
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => left.push(dir.to_path_buf()),
    }
}
