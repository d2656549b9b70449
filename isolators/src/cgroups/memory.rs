//! `cgroups/mem`: the `mem` resource as a hard limit, swap off by default, an optional soft
//! limit; memory statistics; OOM kills as limitations, by event (see [`super::oom_events`])
//! with a polled counter (see [`super::oom`]) as the fallback.
//!
//! - v2: `memory.max`, `memory.swap.max` (0 unless the limits allow swap; the file exists
//!   only with swap accounting), `memory.high` for the soft limit, `memory.oom.group` so an
//!   OOM kill takes the whole container (configurable).
//! - v1: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` = limit + swap (only with
//!   swap accounting, `swapaccount=1`), `memory.soft_limit_in_bytes`.

use std::time::Duration;

use super::controller::{Controller, Dirs};
use super::stats::each_flat;
use super::{files, oom, CgroupError, CgroupVersion, Subsystem};
use crate::isolator::{ContainerLimits, Limitation, ResourceStatistics};

/// Mesos's `MIN_MEMORY` (32 MB): smaller limits are raised to it, as in Mesos.
pub const MIN_MEMORY: u64 = 32 << 20;

/// How often the agent should poll for OOM kills (one small read per container, or a look at
/// what the event thread recorded). Subscribers to the event path need not poll.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The `cgroups/mem` controller.
#[derive(Debug)]
pub struct Memory {
    /// Write `memory.oom.group` = 1 (v2).
    pub oom_group: bool,
}

/// The hard limit Mesos would set for `limits`.
pub fn hard_limit(limits: &ContainerLimits) -> u64 {
    limits.mem_bytes.max(MIN_MEMORY)
}

impl Memory {
    fn apply_v2(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Memory);
        let high = limits
            .mem_soft_bytes
            .map_or_else(|| "max".to_string(), |s| s.to_string());
        files::write(&dir.join("memory.high"), &high)?;
        files::write(&dir.join("memory.max"), &hard_limit(limits).to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            files::write(&swap, &limits.swap_bytes.unwrap_or(0).to_string())?;
        }
        let group = dir.join("memory.oom.group");
        if self.oom_group && group.exists() {
            files::write(&group, "1")?;
        }
        Ok(())
    }

    fn apply_v1(dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Memory);
        let limit = hard_limit(limits);
        let mem = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            // The kernel keeps memsw >= mem at every step: raise memsw first when growing,
            // lower mem first when shrinking.
            let total = limit
                .saturating_add(limits.swap_bytes.unwrap_or(0))
                .to_string();
            let current = files::read_u64(&mem).unwrap_or(u64::MAX);
            if limit > current {
                files::write(&memsw, &total)?;
                files::write(&mem, &limit.to_string())?;
            } else {
                files::write(&mem, &limit.to_string())?;
                files::write(&memsw, &total)?;
            }
        } else {
            files::write(&mem, &limit.to_string())?;
        }
        let soft = limits
            .mem_soft_bytes
            .map_or_else(|| "-1".to_string(), |s| s.to_string());
        files::write(&dir.join("memory.soft_limit_in_bytes"), &soft)
    }
}

impl Controller for Memory {
    fn name(&self) -> &'static str {
        "cgroups/mem"
    }

    fn subsystems(&self) -> &'static [Subsystem] {
        &[Subsystem::Memory]
    }

    fn validate(&self, limits: &ContainerLimits) -> Result<(), String> {
        if limits.mem_bytes == 0 {
            return Err("mem must be positive".to_string());
        }
        if let Some(soft) = limits.mem_soft_bytes {
            if soft > limits.mem_bytes {
                return Err(format!(
                    "the soft memory limit ({soft} bytes) is above the hard limit ({} bytes)",
                    limits.mem_bytes
                ));
            }
        }
        Ok(())
    }

    fn apply(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        match dirs.version {
            CgroupVersion::V2 => self.apply_v2(dirs, limits),
            CgroupVersion::V1 { .. } => Self::apply_v1(dirs, limits),
        }
    }

    fn usage(
        &self,
        dirs: &Dirs,
        limits: &ContainerLimits,
        stats: &mut ResourceStatistics,
    ) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Memory);
        let mut buf = [0u8; 8192];
        stats.mem_limit_bytes = Some(hard_limit(limits));
        stats.mem_soft_limit_bytes = limits.mem_soft_bytes;
        match dirs.version {
            CgroupVersion::V2 => {
                stats.mem_total_bytes = Some(files::read_u64(&dir.join("memory.current"))?);
                each_flat(
                    files::read_into(&dir.join("memory.stat"), &mut buf)?,
                    |k, v| match k {
                        "anon" => {
                            stats.mem_anon_bytes = Some(v);
                            stats.mem_rss_bytes = Some(v);
                        }
                        "file" => {
                            stats.mem_file_bytes = Some(v);
                            stats.mem_cache_bytes = Some(v);
                        }
                        _ => {}
                    },
                );
                // memory.peak: Linux 5.19; memory.swap.current: with swap accounting.
                stats.mem_max_bytes = files::read_u64(&dir.join("memory.peak")).ok();
                stats.mem_swap_bytes = files::read_u64(&dir.join("memory.swap.current")).ok();
            }
            CgroupVersion::V1 { .. } => {
                stats.mem_total_bytes = Some(files::read_u64(&dir.join("memory.usage_in_bytes"))?);
                each_flat(
                    files::read_into(&dir.join("memory.stat"), &mut buf)?,
                    |k, v| match k {
                        // v1's rss is anonymous memory (and swap cache).
                        "total_rss" => {
                            stats.mem_anon_bytes = Some(v);
                            stats.mem_rss_bytes = Some(v);
                        }
                        "total_cache" => {
                            stats.mem_file_bytes = Some(v);
                            stats.mem_cache_bytes = Some(v);
                        }
                        "total_swap" => stats.mem_swap_bytes = Some(v),
                        _ => {}
                    },
                );
                stats.mem_max_bytes =
                    Some(files::read_u64(&dir.join("memory.max_usage_in_bytes"))?);
            }
        }
        Ok(())
    }

    fn watch(
        &self,
        dirs: &Dirs,
        limits: &ContainerLimits,
    ) -> Result<Option<Limitation>, CgroupError> {
        oom::check(
            dirs.version,
            dirs.get(Subsystem::Memory),
            hard_limit(limits),
        )
    }

    fn watch_interval(&self) -> Option<Duration> {
        Some(WATCH_INTERVAL)
    }

    fn reports_oom(&self) -> bool {
        true
    }
}
