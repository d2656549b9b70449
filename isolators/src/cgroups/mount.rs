//! Parsing `/proc/self/mountinfo` (proc(5)) for cgroup mounts and `/proc/self/cgroup`
//! (cgroups(7)) for the agent's own cgroups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The v1 controllers (cgroups(7)); other super options (`rw`, `xattr`, `name=`) are not.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The cgroup the mount shows as its root (`/` unless mounted from a cgroup namespace
    /// or bind-mounted from a subtree).
    pub root: String,
    /// cgroup2 (unified) rather than a v1 hierarchy.
    pub v2: bool,
    /// v1: the controllers bound to the hierarchy (`cpu`, `cpuacct`, ...); empty for v2.
    pub controllers: Vec<String>,
}

impl CgroupMount {
    /// The directory of the cgroup at hierarchy path `cgroup` (e.g. `/a/b`) in this mount.
    pub fn dir_of(&self, cgroup: &str) -> PathBuf {
        let rel = cgroup
            .strip_prefix(self.root.trim_end_matches('/'))
            .unwrap_or(cgroup);
        join_cgroup(&self.mount_point, rel)
    }
}

/// `base` joined with a cgroup path, ignoring leading and empty components.
pub fn join_cgroup(base: &Path, cgroup: &str) -> PathBuf {
    let mut out = base.to_path_buf();
    for part in cgroup.split('/').filter(|p| !p.is_empty()) {
        out.push(part);
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in a mountinfo text; other lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point) = (unescape(left[3]), PathBuf::from(unescape(left[4])));
        match right[0] {
            "cgroup2" => mounts.push(CgroupMount {
                mount_point,
                root,
                v2: true,
                controllers: vec![],
            }),
            "cgroup" => {
                let controllers = right[2]
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect();
                mounts.push(CgroupMount {
                    mount_point,
                    root,
                    v2: false,
                    controllers,
                });
            }
            _ => {}
        }
    }
    mounts
}

/// The agent's own cgroups: the v2 path (`0::/x`) and the v1 path per controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCgroups {
    pub v2: Option<String>,
    pub v1: BTreeMap<String, String>,
}

/// Parses `/proc/self/cgroup` (`hierarchy-id:controllers:path` per line).
pub fn parse_proc_cgroup(text: &str) -> OwnCgroups {
    let mut own = OwnCgroups::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            own.v2 = Some(path.to_string());
        } else {
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                own.v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
29 25 0:26 / /sys/fs/cgroup/cpu rw,nosuid shared:13 - cgroup cgroup rw,cpu
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/sys\\040temp rw - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hybrid_mountinfo_lists_v1_hierarchies_and_the_unified_mount() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert!(mounts[0].v2);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(mounts[3].controllers, ["memory"]);
        assert_eq!(mounts[4].mount_point, Path::new("/sys/fs/cgroup/sys temp"));
        assert!(mounts[4].controllers.is_empty());
    }

    #[test]
    fn own_cgroups_split_by_controller() {
        let own = parse_proc_cgroup("9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/u\n");
        assert_eq!(own.v2.as_deref(), Some("/u"));
        assert_eq!(own.v1["memory"], "/a/b");
        assert_eq!(own.v1["cpuacct"], "/");
        assert_eq!(own.v1["name=systemd"], "/");
    }

    #[test]
    fn dirs_strip_the_mount_root() {
        let m = CgroupMount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/ns".into(),
            v2: true,
            controllers: vec![],
        };
        assert_eq!(m.dir_of("/ns/x/y"), Path::new("/sys/fs/cgroup/x/y"));
        assert_eq!(m.dir_of("/"), Path::new("/sys/fs/cgroup"));
    }
}
