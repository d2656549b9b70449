//! The cgroup v2 backend: one directory per container below the parent, controllers enabled
//! in `cgroup.subtree_control` from the agent's own cgroup down to the parent
//! (Documentation/admin-guide/cgroup-v2.rst, "Enabling and Disabling").

use std::path::{Path, PathBuf};

use super::mount::{CgroupMount, OwnCgroups};
use super::{files, CgroupError, CgroupVersion, Cgroups, Subsystem};

/// cgroup v2 below one parent cgroup.
#[derive(Debug)]
pub struct CgroupsV2 {
    /// The agent's own cgroup: the top of the chain it may write `subtree_control` in.
    own: PathBuf,
    /// The parent of every container cgroup.
    parent: PathBuf,
    /// `parent` relative to the mount, e.g. `/cairn`.
    parent_rel: String,
}

impl CgroupsV2 {
    /// The backend for the unified mount `mount`, with `parent` relative to the agent's own
    /// cgroup (or absolute from the mount's root when it starts with `/`).
    pub fn new(mount: &CgroupMount, own: &OwnCgroups, parent: &str) -> Self {
        let own_cgroup = own.v2.clone().unwrap_or_else(|| "/".to_string());
        let cgroup = if parent.starts_with('/') {
            parent.to_string()
        } else {
            format!("{}/{parent}", own_cgroup.trim_end_matches('/'))
        };
        let parent = mount.dir_of(&cgroup);
        let rel = parent
            .strip_prefix(&mount.mount_point)
            .unwrap_or(Path::new(""))
            .to_string_lossy();
        Self {
            own: mount.dir_of(&own_cgroup),
            parent_rel: format!("/{rel}"),
            parent,
        }
    }

    /// Enables `controllers` in `dir/cgroup.subtree_control` where not already enabled.
    fn enable_in(dir: &Path, controllers: &[&'static str]) -> Result<(), CgroupError> {
        let available = files::read_string(&dir.join("cgroup.controllers"))?;
        let enabled = files::read_string(&dir.join("cgroup.subtree_control"))?;
        for &c in controllers {
            if enabled.split_whitespace().any(|e| e == c) {
                continue;
            }
            if !available.split_whitespace().any(|a| a == c) {
                return Err(CgroupError::ControllerUnavailable {
                    controller: c,
                    path: dir.into(),
                });
            }
            // EBUSY here means the agent's own cgroup holds processes (the "no internal
            // processes" rule): run the agent in a leaf and give it a delegated parent.
            files::write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
        Ok(())
    }
}

impl Cgroups for CgroupsV2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn enable(&self, subsystems: &[Subsystem]) -> Result<(), CgroupError> {
        let mut controllers: Vec<&'static str> = subsystems.iter().map(|s| s.v2_name()).collect();
        controllers.dedup();
        files::mkdir(&self.parent)?;
        // Each cgroup from the agent's own down to the parent must delegate the controllers
        // to its children; cgroups above the agent's own are not ours to change.
        let mut chain: Vec<&Path> = self
            .parent
            .ancestors()
            .take_while(|d| d.starts_with(&self.own))
            .collect();
        chain.reverse();
        if chain.is_empty() {
            // An absolute parent outside the agent's own cgroup: only the parent is ours.
            chain.push(&self.parent);
        }
        for dir in chain {
            Self::enable_in(dir, &controllers)?;
        }
        Ok(())
    }

    fn dir(&self, _subsystem: Subsystem, name: &str) -> PathBuf {
        self.parent.join(name)
    }

    fn relative_path(&self, _subsystem: Subsystem, name: &str) -> String {
        format!("{}/{name}", self.parent_rel.trim_end_matches('/'))
    }

    fn create(&self, _subsystem: Subsystem, name: &str) -> Result<PathBuf, CgroupError> {
        super::check_name(name)?;
        let dir = self.parent.join(name);
        files::mkdir(&dir)?;
        Ok(dir)
    }

    fn attach(&self, _subsystem: Subsystem, name: &str, pid: u32) -> Result<(), CgroupError> {
        files::write(
            &self.parent.join(name).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    fn destroy(&self, _subsystem: Subsystem, name: &str) -> Result<(), CgroupError> {
        super::check_name(name)?;
        let dir = self.parent.join(name);
        if !dir.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included; the
        // SIGKILL loop then only waits for it to empty (and does the job on older kernels).
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            let _ = files::write(&kill, "1");
        }
        files::kill_tree(&dir)?;
        files::remove_tree(&dir)
    }

    fn containers(&self, _subsystem: Subsystem) -> Result<Vec<String>, CgroupError> {
        files::child_names(&self.parent)
    }
}
