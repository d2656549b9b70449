//! Host plumbing shared by tests that run real containers: a cgroup parent below the test
//! process's own cgroup, and the mounts left under a directory.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_oci::runtime::own_cgroup;

/// A cgroup directory below our own, in every v1 hierarchy, for containers' cgroups; removed
/// (with any ancestors it had to create) by [`CgroupParent::remove`] or on drop.
#[derive(Debug)]
pub struct CgroupParent {
    pub path: PathBuf,
    created: Vec<PathBuf>,
}

impl CgroupParent {
    /// A parent named after `name` and this process.
    ///
    /// # Panics
    /// When our own cgroups cannot be read or diverge between hierarchies.
    pub fn new(name: &str) -> Self {
        // On a hybrid host our cgroup differs per hierarchy (`/` everywhere but memory under
        // some supervisors). libcontainer uses one path in all of them, so take the deepest
        // of ours: it is below our own cgroup in each hierarchy.
        let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let own: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.starts_with("0::"))
            .filter_map(|l| l.splitn(3, ':').nth(2).map(PathBuf::from))
            .collect();
        let deepest = own
            .iter()
            .max_by_key(|p| p.components().count())
            .expect("a v1 hierarchy in /proc/self/cgroup")
            .clone();
        assert!(
            own.iter().all(|p| deepest.starts_with(p)),
            "own cgroups diverge: {own:?}"
        );
        assert_eq!(
            own_cgroup("memory").map(|m| deepest.starts_with(m)),
            Some(true)
        );
        let path = deepest.join(format!("cairn-test-{}-{name}", std::process::id()));
        // Record which directories libcontainer will have to create, deepest first.
        let mut created = Vec::new();
        for mount in v1_mounts() {
            let mut dir = mount.join(path.strip_prefix("/").expect("cgroup paths are absolute"));
            while !dir.exists() && dir != mount {
                created.push(dir.clone());
                dir = dir.parent().expect("below the mount").to_path_buf();
            }
        }
        Self { path, created }
    }

    /// Removes the directories made for this parent; returns those that could not be (a
    /// container's cgroup still in them).
    pub fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for dir in self.created.drain(..) {
            if dir.exists() {
                if let Err(e) = fs::remove_dir(&dir) {
                    failed.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        failed
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for failure in self.remove() {
            eprintln!("failed to remove test cgroup {failure}");
        }
    }
}

/// Mount points of the v1 cgroup hierarchies.
fn v1_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup")
        .map(|(point, _)| point)
        .collect()
}

/// Mount points at or below `dir` in our mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .map(|(point, _)| point)
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// `(mount point, filesystem type)` of each line of `/proc/self/mountinfo` (proc(5)).
fn mountinfo() -> Vec<(PathBuf, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let point = unescape(pre.split_whitespace().nth(4)?);
            Some((PathBuf::from(point), post.split_whitespace().next()?.into()))
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
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
