//! OOM kills as limitations (Mesos: `REASON_CONTAINER_LIMITATION_MEMORY`): the counter.
//!
//! The kernel counts OOM kills per memory cgroup: v2 in `memory.events` (`oom_kill`, which
//! includes descendants), v1 in `memory.oom_control` (`oom_kill`, Linux 4.13; `under_oom` on
//! older kernels). A container's cgroup is new, so any kill counted there is the
//! container's, also one that happened while the agent was down.
//!
//! The kill is noticed as it happens by [`super::oom_events`] (inotify on v2's
//! `memory.events`, a `cgroup.event_control` eventfd on v1), which reads this counter when
//! the kernel says something changed. [`check`] is also what `watch` runs when no event was
//! recorded: one small read, cheap enough to poll every second for every container and to
//! run when a container exits (the kill is counted before the killed process is reaped).

use std::path::Path;

use cairn_api::Reason;

use super::stats::flat;
use super::{files, CgroupError, CgroupVersion};
use crate::isolator::Limitation;

/// The number of OOM kills in the memory cgroup `dir`.
///
/// # Errors
/// The events file cannot be read.
pub fn oom_kills(version: CgroupVersion, dir: &Path) -> Result<u64, CgroupError> {
    let mut buf = [0u8; 512];
    Ok(match version {
        CgroupVersion::V2 => flat(
            files::read_into(&dir.join("memory.events"), &mut buf)?,
            "oom_kill",
        )
        .unwrap_or(0),
        CgroupVersion::V1 { .. } => {
            let text = files::read_into(&dir.join("memory.oom_control"), &mut buf)?;
            flat(text, "oom_kill")
                .or_else(|| flat(text, "under_oom"))
                .unwrap_or(0)
        }
    })
}

/// The memory limitation of the cgroup `dir` limited to `limit` bytes, if it saw an OOM kill.
/// Its message carries the peak usage and the limit.
///
/// # Errors
/// The events file cannot be read.
pub fn check(
    version: CgroupVersion,
    dir: &Path,
    limit: u64,
) -> Result<Option<Limitation>, CgroupError> {
    let kills = oom_kills(version, dir)?;
    if kills == 0 {
        return Ok(None);
    }
    let peak = match version {
        CgroupVersion::V2 => files::read_u64(&dir.join("memory.peak"))
            .or_else(|_| files::read_u64(&dir.join("memory.current"))),
        CgroupVersion::V1 { .. } => files::read_u64(&dir.join("memory.max_usage_in_bytes")),
    }
    .unwrap_or(0);
    Ok(Some(Limitation {
        reason: Reason::ContainerLimitationMemory,
        message: format!("memory limit exceeded: {peak} of {limit} bytes used, oom_kill {kills}"),
    }))
}
