//! `cgroups/cpu`: the `cpus` resource as a proportional weight, and as a CFS bandwidth quota
//! when hard limits are on (Mesos's `cgroups/cpu` with `--cgroups_enable_cfs`).
//!
//! - v1: `cpu.shares` = 1024 per CPU (minimum 2), `cpu.cfs_period_us` = 100 ms and
//!   `cpu.cfs_quota_us` = `cpus` periods (minimum 1 ms); time from `cpuacct.stat`.
//! - v2: `cpu.weight` from the same shares with the conversion runc and systemd use
//!   (`1 + (shares - 2) * 9999 / 262142`), `cpu.max` = `"<quota> <period>"`; time from
//!   `cpu.stat`.

use super::controller::{Controller, Dirs};
use super::stats::each_flat;
use super::{files, CgroupError, CgroupVersion, Subsystem};
use crate::isolator::{ContainerLimits, ResourceStatistics};

/// Mesos's `CPU_SHARES_PER_CPU`.
pub const SHARES_PER_CPU: f64 = 1024.0;
/// Mesos's `MIN_CPU_SHARES` (the kernel's minimum).
pub const MIN_SHARES: u64 = 2;
/// The CFS period, Mesos's `CPU_CFS_PERIOD` (100 ms).
pub const CFS_PERIOD_US: u64 = 100_000;
/// Mesos's `MIN_CPU_CFS_QUOTA` (1 ms, the kernel's minimum).
pub const MIN_CFS_QUOTA_US: u64 = 1_000;
/// `USER_HZ`: the unit of v1 `cpuacct.stat` (sysconf(_SC_CLK_TCK) is 100 on Linux).
const USER_HZ: f64 = 100.0;

/// `cpus` as v1 shares.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn shares(cpus: f64) -> u64 {
    ((cpus * SHARES_PER_CPU) as u64).max(MIN_SHARES)
}

/// v1 shares as a v2 weight (1..=10000).
pub fn weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

/// `cpus` as a CFS quota per [`CFS_PERIOD_US`].
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
pub fn quota_us(cpus: f64) -> u64 {
    ((cpus * CFS_PERIOD_US as f64) as u64).max(MIN_CFS_QUOTA_US)
}

/// The `cgroups/cpu` controller.
#[derive(Debug, Default)]
pub struct Cpu;

impl Controller for Cpu {
    fn name(&self) -> &'static str {
        "cgroups/cpu"
    }

    fn subsystems(&self) -> &'static [Subsystem] {
        &[Subsystem::Cpu, Subsystem::CpuAcct]
    }

    fn validate(&self, limits: &ContainerLimits) -> Result<(), String> {
        if !limits.cpus.is_finite() || limits.cpus <= 0.0 {
            return Err(format!(
                "cpus must be a positive number, not {}",
                limits.cpus
            ));
        }
        Ok(())
    }

    fn apply(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Cpu);
        let shares = shares(limits.cpus);
        match dirs.version {
            CgroupVersion::V2 => {
                files::write(&dir.join("cpu.weight"), &weight(shares).to_string())?;
                let max = if limits.cpu_hard_limits {
                    format!("{} {CFS_PERIOD_US}", quota_us(limits.cpus))
                } else {
                    format!("max {CFS_PERIOD_US}")
                };
                files::write(&dir.join("cpu.max"), &max)
            }
            CgroupVersion::V1 { .. } => {
                files::write(&dir.join("cpu.shares"), &shares.to_string())?;
                files::write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                let quota = if limits.cpu_hard_limits {
                    quota_us(limits.cpus).to_string()
                } else {
                    "-1".into()
                };
                files::write(&dir.join("cpu.cfs_quota_us"), &quota)
            }
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn usage(
        &self,
        dirs: &Dirs,
        limits: &ContainerLimits,
        stats: &mut ResourceStatistics,
    ) -> Result<(), CgroupError> {
        let mut buf = [0u8; 1024];
        stats.cpus_limit = Some(limits.cpus);
        let (mut periods, mut throttled, mut throttled_secs) = (None, None, None);
        match dirs.version {
            CgroupVersion::V2 => {
                let text = files::read_into(&dirs.get(Subsystem::Cpu).join("cpu.stat"), &mut buf)?;
                each_flat(text, |k, v| match k {
                    "user_usec" => stats.cpus_user_time_secs = Some(v as f64 / 1e6),
                    "system_usec" => stats.cpus_system_time_secs = Some(v as f64 / 1e6),
                    "nr_periods" => periods = Some(v),
                    "nr_throttled" => throttled = Some(v),
                    "throttled_usec" => throttled_secs = Some(v as f64 / 1e6),
                    _ => {}
                });
            }
            CgroupVersion::V1 { .. } => {
                let acct = dirs.get(Subsystem::CpuAcct).join("cpuacct.stat");
                each_flat(files::read_into(&acct, &mut buf)?, |k, v| match k {
                    "user" => stats.cpus_user_time_secs = Some(v as f64 / USER_HZ),
                    "system" => stats.cpus_system_time_secs = Some(v as f64 / USER_HZ),
                    _ => {}
                });
                let text = files::read_into(&dirs.get(Subsystem::Cpu).join("cpu.stat"), &mut buf)?;
                each_flat(text, |k, v| match k {
                    "nr_periods" => periods = Some(v),
                    "nr_throttled" => throttled = Some(v),
                    "throttled_time" => throttled_secs = Some(v as f64 / 1e9),
                    _ => {}
                });
            }
        }
        // Mesos reports the throttling fields only with hard limits (CFS bandwidth on).
        if limits.cpu_hard_limits {
            stats.cpus_nr_periods = periods;
            stats.cpus_nr_throttled = throttled;
            stats.cpus_throttled_time_secs = throttled_secs;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesos_conversions() {
        assert_eq!(shares(1.0), 1024);
        assert_eq!(shares(0.25), 256);
        assert_eq!(shares(0.001), MIN_SHARES);
        assert_eq!(weight(1024), 39);
        assert_eq!(weight(2), 1);
        assert_eq!(weight(262_144), 10_000);
        assert_eq!(quota_us(0.25), 25_000);
        assert_eq!(quota_us(0.001), MIN_CFS_QUOTA_US);
    }
}
