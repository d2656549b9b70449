//! A cgroup parent for tests that create containers: below this process's own cgroup in every
//! hierarchy (v1 and v2), and removed with everything beneath it when dropped.
//!
//! On a hybrid host this process sits at different paths in different v1 hierarchies (here
//! `memory` is `/process_api/...`, the rest `/`); the parent goes below the deepest of them,
//! and the ancestors that therefore do not exist yet in the other hierarchies are recorded and
//! removed too (libcontainer creates them when it places a container).

use std::fs;
use std::path::{Path, PathBuf};

/// A test's cgroup parent; see the module docs.
#[derive(Debug)]
pub struct CgroupParent {
    /// The parent's path relative to each hierarchy's root (absolute form, `/a/b`), as the
    /// agent's `cgroup_parent` or a runtime's cgroup parent takes it.
    pub path: PathBuf,
    created: Vec<PathBuf>,
}

fn mount_points(fstype: &str) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = PathBuf::from(pre.split_whitespace().nth(4)?);
            (post.split_whitespace().next()? == fstype).then_some(mount_point)
        })
        .collect()
}

/// Every cgroup hierarchy's mount point: the v1 ones, then the unified one.
fn hierarchies() -> Vec<PathBuf> {
    let mut all = mount_points("cgroup");
    all.extend(mount_points("cgroup2"));
    all
}

impl CgroupParent {
    /// A parent named `cairn-test-<pid>-<name>` below this process's deepest cgroup.
    pub fn new(name: &str) -> Self {
        let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let has_v1 = text.lines().any(|l| !l.starts_with("0::"));
        let deepest = text
            .lines()
            .filter(|l| !(has_v1 && l.starts_with("0::")))
            .filter_map(|l| l.splitn(3, ':').nth(2).map(PathBuf::from))
            .max_by_key(|p| p.components().count())
            .unwrap_or_else(|| PathBuf::from("/"));
        let path = deepest.join(format!("cairn-test-{}-{name}", std::process::id()));
        let mut created = Vec::new();
        for mount in hierarchies() {
            let mut dir = mount.join(path.strip_prefix("/").expect("cgroup paths are absolute"));
            while !dir.exists() && dir != mount {
                created.push(dir.clone());
                dir = dir.parent().expect("below the mount point").to_path_buf();
            }
        }
        Self { path, created }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parent's directory in each hierarchy (existing or not).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let rel = self
            .path
            .strip_prefix("/")
            .expect("cgroup paths are absolute");
        hierarchies().into_iter().map(|m| m.join(rel)).collect()
    }

    /// Cgroups left below the parent, in any hierarchy (a test asserts there are none).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.filter_map(Result::ok).map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect()
    }
}

/// Removes `dir`'s subdirectories, deepest first (a cgroup directory is removed with rmdir).
fn remove_children(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for child in entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
    {
        remove_children(&child);
        let _ = fs::remove_dir(&child);
    }
}

/// The processes in `dir` and the cgroups below it.
fn pids_below(dir: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .flat_map(|child| pids_below(&child))
        .collect();
    pids.extend(
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    pids
}

impl Drop for CgroupParent {
    /// Removes the parent and everything below it. Containers a failed test left running are
    /// killed first: a panicking test must not leak processes into the next one.
    fn drop(&mut self) {
        let left: Vec<i32> = self.dirs().iter().flat_map(|d| pids_below(d)).collect();
        if !left.is_empty() {
            eprintln!(
                "killing {} process(es) left in test cgroup {}",
                left.len(),
                self.path.display()
            );
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // The kernel takes a killed process out of its cgroup once it has exited.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline
                && self.dirs().iter().any(|d| !pids_below(d).is_empty())
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        for dir in self.dirs() {
            remove_children(&dir);
        }
        // Recorded leaf first, so each directory is empty when its turn comes.
        for dir in &self.created {
            if dir.exists() {
                if let Err(e) = fs::remove_dir(dir) {
                    eprintln!("failed to remove test cgroup {}: {e}", dir.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_what_a_test_left_running_and_removes_the_cgroups() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to make cgroups");
            return;
        }
        let parent = CgroupParent::new("drop-kills");
        // A "container" cgroup in the first v1 hierarchy, or the unified one on a v2 host
        // (a hybrid host's `unified` mount holds no processes of ours).
        let hierarchy = parent
            .dirs()
            .into_iter()
            .find(|d| !d.starts_with("/sys/fs/cgroup/unified"))
            .unwrap();
        let leaf = hierarchy.join("left-behind");
        fs::create_dir_all(&leaf).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        drop(parent);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
        assert!(!leaf.exists() && !hierarchy.exists());
    }
}
