//! Host plumbing shared by tests that run real containers: a cgroup parent below the test
//! process's own cgroup (the one all container tests share), and the mounts left under a
//! directory.

use std::fs;
use std::path::{Path, PathBuf};

pub use cairn_testsupport::cgroups::CgroupParent;

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
