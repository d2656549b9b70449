//! `cgroups/pids`: a per-container process limit (`pids.max`, the same file on v1 and v2),
//! from the container's limits or the agent's default; process and thread counts.

use super::controller::{Controller, Dirs};
use super::stats::count_lines;
use super::{files, CgroupError, Subsystem};
use crate::isolator::{ContainerLimits, ResourceStatistics};

/// The `cgroups/pids` controller.
#[derive(Debug, Default)]
pub struct Pids {
    /// `pids.max` for containers whose limits carry none; `None`: unlimited.
    pub default_limit: Option<u64>,
}

impl Pids {
    fn limit(&self, limits: &ContainerLimits) -> Option<u64> {
        limits.pids.or(self.default_limit)
    }
}

impl Controller for Pids {
    fn name(&self) -> &'static str {
        "cgroups/pids"
    }

    fn subsystems(&self) -> &'static [Subsystem] {
        &[Subsystem::Pids]
    }

    fn validate(&self, limits: &ContainerLimits) -> Result<(), String> {
        match self.limit(limits) {
            Some(0) => Err("the pids limit must be at least 1 (the container's init)".to_string()),
            _ => Ok(()),
        }
    }

    fn apply(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        let max = self
            .limit(limits)
            .map_or_else(|| "max".to_string(), |n| n.to_string());
        files::write(&dirs.get(Subsystem::Pids).join("pids.max"), &max)
    }

    fn usage(
        &self,
        dirs: &Dirs,
        _limits: &ContainerLimits,
        stats: &mut ResourceStatistics,
    ) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Pids);
        // pids.current counts tasks (threads); cgroup.procs lists processes.
        stats.threads = Some(files::read_u64(&dir.join("pids.current"))?);
        const BUF: usize = 16 * 1024;
        let mut buf = [0u8; BUF];
        let path = dir.join("cgroup.procs");
        let text = files::read_into(&path, &mut buf)?;
        stats.processes = Some(if text.len() == BUF {
            files::procs(dir)?.len() as u64 // more than fits: count them all
        } else {
            count_lines(text)
        });
        Ok(())
    }
}
