//! The cgroup v1 backend: one directory per container in each hierarchy it uses, below the
//! parent in that hierarchy (which, relative to the agent's own cgroup, may differ per
//! hierarchy: see `/proc/self/cgroup`). Used on legacy hosts and on hybrid hosts, whose
//! cgroup2 mount holds none of the controllers the isolators need.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::mount::{join_cgroup, CgroupMount, OwnCgroups};
use super::{files, CgroupError, CgroupVersion, Cgroups, Subsystem};

const ALL: [Subsystem; 5] = [
    Subsystem::Cpu,
    Subsystem::CpuAcct,
    Subsystem::Memory,
    Subsystem::Pids,
    Subsystem::Io,
];

/// The parent cgroup in one v1 hierarchy.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// The parent's directory, e.g. `/sys/fs/cgroup/memory/<own>/cairn`.
    parent: PathBuf,
    /// The parent's path relative to the mount, e.g. `/<own>/cairn`.
    parent_rel: String,
}

/// cgroup v1 below a parent cgroup in each hierarchy.
#[derive(Debug)]
pub struct CgroupsV1 {
    hybrid: bool,
    hierarchies: BTreeMap<Subsystem, Hierarchy>,
}

impl CgroupsV1 {
    /// The backend for the hierarchies in `mounts`, with the parent `parent` (relative to
    /// the agent's own cgroup `own` in each hierarchy, or absolute when it starts with `/`).
    pub fn new(mounts: &[CgroupMount], own: &OwnCgroups, parent: &str, hybrid: bool) -> Self {
        let mut hierarchies = BTreeMap::new();
        for s in ALL {
            let name = s.v1_name();
            let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == name))
            else {
                continue;
            };
            let cgroup = if parent.starts_with('/') {
                parent.to_string()
            } else {
                let own = own.v1.get(name).map_or("/", String::as_str);
                format!("{}/{parent}", own.trim_end_matches('/'))
            };
            let dir = m.dir_of(&cgroup);
            let rel = dir
                .strip_prefix(&m.mount_point)
                .unwrap_or(Path::new(""))
                .to_string_lossy();
            hierarchies.insert(
                s,
                Hierarchy {
                    parent: dir.clone(),
                    parent_rel: format!("/{rel}"),
                },
            );
        }
        Self {
            hybrid,
            hierarchies,
        }
    }

    fn hierarchy(&self, s: Subsystem) -> Result<&Hierarchy, CgroupError> {
        self.hierarchies
            .get(&s)
            .ok_or(CgroupError::NotMounted(s.v1_name()))
    }
}

impl Cgroups for CgroupsV1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1 {
            hybrid: self.hybrid,
        }
    }

    fn enable(&self, subsystems: &[Subsystem]) -> Result<(), CgroupError> {
        for &s in subsystems {
            let h = self.hierarchy(s)?;
            files::mkdir(&h.parent)?;
            if s == Subsystem::Memory {
                // Hierarchical accounting, so the parent sees its containers' usage; the
                // file is read-only 1 on kernels that dropped the flat mode (ignore errors).
                let _ = files::write(&h.parent.join("memory.use_hierarchy"), "1");
            }
        }
        Ok(())
    }

    fn dir(&self, subsystem: Subsystem, name: &str) -> PathBuf {
        match self.hierarchies.get(&subsystem) {
            Some(h) => h.parent.join(name),
            // Not mounted: a path that never exists, so reads fail naming the hierarchy.
            None => join_cgroup(Path::new("/sys/fs/cgroup"), subsystem.v1_name()).join(name),
        }
    }

    fn relative_path(&self, subsystem: Subsystem, name: &str) -> String {
        self.hierarchies.get(&subsystem).map_or_else(
            || format!("/{name}"),
            |h| format!("{}/{name}", h.parent_rel.trim_end_matches('/')),
        )
    }

    fn create(&self, subsystem: Subsystem, name: &str) -> Result<PathBuf, CgroupError> {
        super::check_name(name)?;
        let dir = self.hierarchy(subsystem)?.parent.join(name);
        files::mkdir(&dir)?;
        Ok(dir)
    }

    fn attach(&self, subsystem: Subsystem, name: &str, pid: u32) -> Result<(), CgroupError> {
        let dir = self.hierarchy(subsystem)?.parent.join(name);
        files::write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    fn destroy(&self, subsystem: Subsystem, name: &str) -> Result<(), CgroupError> {
        super::check_name(name)?;
        let Ok(h) = self.hierarchy(subsystem) else {
            return Ok(());
        };
        let dir = h.parent.join(name);
        if !dir.exists() {
            return Ok(());
        }
        // v1 has no cgroup.kill; stop forks first where the container has a pids cgroup, so
        // the kill loop converges even for a fork bomb.
        if let Some(p) = self.hierarchies.get(&Subsystem::Pids) {
            let _ = files::write(&p.parent.join(name).join("pids.max"), "0");
        }
        files::kill_tree(&dir)?;
        files::remove_tree(&dir)
    }

    fn containers(&self, subsystem: Subsystem) -> Result<Vec<String>, CgroupError> {
        files::child_names(&self.hierarchy(subsystem)?.parent)
    }
}
