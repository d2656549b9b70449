//! Resolving an image's `User` (`user`, `uid`, `user:group`, `uid:gid`, `uid:group`,
//! `user:gid`) against the root filesystem's `/etc/passwd` and `/etc/group`, as runc's
//! `user.GetExecUser` does: a numeric uid missing from passwd is used as is with gid 0; a
//! name must exist; supplementary groups come from `/etc/group` when no group is given.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// The user a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
    /// Home directory from passwd (`/` when unknown), for `HOME`.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (empty means root) inside `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser, SpecError> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let invalid = |reason: String| SpecError::InvalidField {
        field: "user",
        reason,
    };

    let passwd = read_passwd(rootfs)?;
    let (uid, gid, name, home) = if let Ok(uid) = user_part.parse::<u32>() {
        match passwd.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone()), e.home.clone()),
            None => (uid, 0, None, "/".to_string()),
        }
    } else {
        let e = passwd
            .iter()
            .find(|e| e.name == user_part)
            .ok_or_else(|| invalid(format!("no user {user_part:?} in /etc/passwd")))?;
        (e.uid, e.gid, Some(e.name.clone()), e.home.clone())
    };

    let groups = read_group(rootfs)?;
    let (gid, additional_gids) = match group_part {
        Some("") => return Err(invalid(format!("empty group in {spec:?}"))),
        Some(group) => {
            let gid = if let Ok(gid) = group.parse::<u32>() {
                gid
            } else {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| g.gid)
                    .ok_or_else(|| invalid(format!("no group {group:?} in /etc/group")))?
            };
            (gid, Vec::new())
        }
        None => {
            let extra = name.as_ref().map_or_else(Vec::new, |name| {
                let mut gids: Vec<u32> = groups
                    .iter()
                    .filter(|g| g.gid != gid && g.members.iter().any(|m| m == name))
                    .map(|g| g.gid)
                    .collect();
                gids.dedup();
                gids
            });
            (gid, extra)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

fn read_passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>, SpecError> {
    let text = read_in_root(rootfs, "/etc/passwd")?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f
                    .get(5)
                    .filter(|h| !h.is_empty())
                    .unwrap_or(&"/")
                    .to_string(),
            })
        })
        .collect())
}

fn read_group(rootfs: &Path) -> Result<Vec<GroupEntry>, SpecError> {
    let text = read_in_root(rootfs, "/etc/group")?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Reads `path` as the container would see it: symlinks resolve inside `rootfs` (an image's
/// `/etc/passwd -> /host/etc/passwd` must not read the host's file). A missing file reads as
/// empty, as runc treats it.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, SpecError> {
    let io_err = |source: io::Error| SpecError::Io {
        op: "read",
        path: rootfs.join(path.trim_start_matches('/')),
        source,
    };
    match resolve_in_root(rootfs, Path::new(path)).map_err(io_err)? {
        Some(real) => match fs::read(&real) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io_err(e)),
        },
        None => Ok(String::new()),
    }
}

/// Resolves `path` inside `root` like `chroot(2)` would: absolute symlinks restart at `root`,
/// `..` stops at `root`. `None` when a component does not exist.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut done: Vec<PathBuf> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part.as_os_str() == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&part);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(io::Error::from_raw_os_error(
                    nix::errno::Errno::ELOOP as i32,
                ));
            }
            let target = fs::read_link(&candidate)?;
            if target.is_absolute() {
                done.clear();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push(PathBuf::from(n)),
                    Component::ParentDir => todo.push(PathBuf::from("..")),
                    _ => {}
                }
            }
        } else {
            done.push(part);
        }
    }
    let mut real = root.to_path_buf();
    real.extend(&done);
    Ok(Some(real))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             app:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,root\naudio:x:29:app\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_and_numbers() {
        let dir = rootfs();
        let u = resolve(dir.path(), "nobody").unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        assert_eq!(u.home, "/nonexistent");
        let u = resolve(dir.path(), "app").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![10, 29])
        );
        let u = resolve(dir.path(), "app:audio").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        assert!(u.additional_gids.is_empty());
        let u = resolve(dir.path(), "1000:65534").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 65534));
        let u = resolve(dir.path(), "4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = resolve(dir.path(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![10]);
        let u = resolve(dir.path(), "4242:nogroup").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 65534));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_field() {
        let dir = rootfs();
        let err = resolve(dir.path(), "ghost").unwrap_err();
        assert!(
            err.to_string().contains("user") && err.to_string().contains("ghost"),
            "{err}"
        );
        assert!(resolve(dir.path(), "app:ghosts").is_err());
        assert!(resolve(dir.path(), "app:").is_err());
    }

    #[test]
    fn numeric_users_need_no_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let u = resolve(dir.path(), "65534:65534").unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        assert!(resolve(dir.path(), "nobody").is_err());
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let dir = rootfs();
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("etc")).unwrap();
        // An absolute link that would read the host's passwd if followed naively.
        fs::rename(
            dir.path().join("etc/passwd"),
            dir.path().join("etc/passwd.real"),
        )
        .unwrap();
        symlink("/etc/passwd.real", dir.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(dir.path(), "app").unwrap().uid, 1000);
        fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        symlink(
            "../../../../../../etc/passwd",
            dir.path().join("etc/passwd"),
        )
        .unwrap();
        // Resolves to <rootfs>/etc/passwd (itself): a loop, not the host's file.
        assert!(resolve(dir.path(), "root").is_err());
    }
}
