//! Which mount a path lives on, from `/proc/self/mountinfo` (proc(5)), to tell the operator
//! why a work directory cannot do project quotas.

use std::io;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the parts `disk/quota` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-mount options, then the superblock's (`prjquota` is a superblock option).
    pub options: Vec<String>,
}

impl MountInfo {
    /// Whether the filesystem enforces project quotas (`prjquota`, or XFS's alias `pquota`;
    /// XFS's accounting-only `pqnoenforce` does not count).
    pub fn enforces_project_quota(&self) -> bool {
        self.options
            .iter()
            .any(|o| o == "prjquota" || o == "pquota")
    }

    /// Comma-joined options without repeats, for messages.
    pub fn options_string(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for o in &self.options {
            if !seen.contains(&o.as_str()) {
                seen.push(o);
            }
        }
        seen.join(",")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(field.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let source = unescape(right.next()?);
    let mut options: Vec<String> = left.get(5)?.split(',').map(str::to_string).collect();
    if let Some(super_options) = right.next() {
        options.extend(super_options.split(',').map(str::to_string));
    }
    Some(MountInfo {
        mount_point: PathBuf::from(unescape(left.get(4)?)),
        fs_type,
        source,
        options,
    })
}

/// The mount holding `path` (which must be canonical): the longest mount point that is a
/// prefix of it, the last one listed when several mounts stack on the same point.
pub(crate) fn mount_of_in(mountinfo: &str, path: &Path) -> Option<MountInfo> {
    let mut best: Option<MountInfo> = None;
    for mount in mountinfo.lines().filter_map(parse_line) {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| mount.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(mount);
        }
    }
    best
}

/// [`mount_of_in`] on this process's `/proc/self/mountinfo`.
pub(crate) fn mount_of(path: &Path) -> io::Result<Option<MountInfo>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_of_in(&mountinfo, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 22 0:35 / /tmp rw,nosuid,nodev shared:20 - tmpfs tmpfs rw,size=1024k
51 40 7:0 / /tmp/with\\040space rw,relatime shared:30 - xfs /dev/loop0 rw,attr2,inode64,prjquota
52 22 7:1 / /srv/x rw,relatime - ext4 /dev/loop1 rw,prjquota
";

    #[test]
    fn finds_the_longest_mount_point_and_superblock_options() {
        let m = mount_of_in(SAMPLE, Path::new("/tmp/with space/ctr")).unwrap();
        assert_eq!(m.fs_type, "xfs");
        assert_eq!(m.source, "/dev/loop0");
        assert_eq!(m.mount_point, Path::new("/tmp/with space"));
        assert!(m.enforces_project_quota());
        let m = mount_of_in(SAMPLE, Path::new("/tmp/other")).unwrap();
        assert_eq!(m.fs_type, "tmpfs");
        assert!(!m.enforces_project_quota());
        assert_eq!(m.options_string(), "rw,nosuid,nodev,size=1024k");
        let m = mount_of_in(SAMPLE, Path::new("/srv/xy")).unwrap();
        assert_eq!(
            m.mount_point,
            Path::new("/"),
            "/srv/x is not a prefix of /srv/xy"
        );
        assert!(mount_of_in(SAMPLE, Path::new("/srv/x/a"))
            .unwrap()
            .enforces_project_quota());
    }
}
