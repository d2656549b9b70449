//! `cgroups/io`: a proportional io weight and optional per-device bandwidth limits; bytes
//! read and written.
//!
//! - v2: `io.weight` (`default <1..10000>`; `io.bfq.weight` when only BFQ provides it),
//!   `io.max` (`<major>:<minor> rbps=<n|max> wbps=<n|max>`), statistics from `io.stat`.
//! - v1: `blkio.weight` (10..1000, converted from the v2 scale; `blkio.bfq.weight` with
//!   BFQ), `blkio.throttle.{read,write}_bps_device`, statistics from
//!   `blkio.throttle.io_service_bytes_recursive`.
//!
//! The weight needs an io scheduler or controller that implements it (BFQ, or v2 iocost);
//! where the host has none the weight is skipped with a warning, as it is only a
//! proportion. Bandwidth limits are enforced by the block layer and always apply.

use std::path::Path;

use super::controller::{Controller, Dirs};
use super::stats::{blkio_bytes, io_stat_bytes};
use super::{files, CgroupError, CgroupVersion, Subsystem};
use crate::isolator::{ContainerLimits, ResourceStatistics};

/// A v2 io weight (1..=10000) on the v1 blkio scale (10..=1000).
pub fn v1_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(1, 10_000));
    10 + (w - 1) * 990 / 9999
}

/// The `cgroups/io` controller.
#[derive(Debug, Default)]
pub struct Io;

fn write_first(dir: &Path, names: &[&str], value: &str) -> Result<bool, CgroupError> {
    for name in names {
        let path = dir.join(name);
        if path.exists() {
            files::write(&path, value)?;
            return Ok(true);
        }
    }
    Ok(false)
}

impl Controller for Io {
    fn name(&self) -> &'static str {
        "cgroups/io"
    }

    fn subsystems(&self) -> &'static [Subsystem] {
        &[Subsystem::Io]
    }

    fn validate(&self, limits: &ContainerLimits) -> Result<(), String> {
        match limits.io_weight {
            Some(w) if !(1..=10_000).contains(&w) => {
                Err(format!("io weight must be within 1..=10000, not {w}"))
            }
            _ => Ok(()),
        }
    }

    fn apply(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Io);
        let v2 = dirs.version == CgroupVersion::V2;
        if let Some(w) = limits.io_weight {
            let written = if v2 {
                write_first(dir, &["io.weight"], &format!("default {w}"))?
                    || write_first(dir, &["io.bfq.weight"], &w.to_string())?
            } else {
                write_first(
                    dir,
                    &["blkio.weight", "blkio.bfq.weight"],
                    &v1_weight(w).to_string(),
                )?
            };
            if !written {
                tracing::warn!(dir = %dir.display(), "no io weight file on this host; weight skipped");
            }
        }
        for &(major, minor, read, write) in &limits.io_bps {
            if v2 {
                let bps = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |n| n.to_string());
                let line = format!("{major}:{minor} rbps={} wbps={}", bps(read), bps(write));
                files::write(&dir.join("io.max"), &line)?;
            } else {
                // 0 removes a v1 throttle rule.
                let read = format!("{major}:{minor} {}", read.unwrap_or(0));
                files::write(&dir.join("blkio.throttle.read_bps_device"), &read)?;
                let write = format!("{major}:{minor} {}", write.unwrap_or(0));
                files::write(&dir.join("blkio.throttle.write_bps_device"), &write)?;
            }
        }
        Ok(())
    }

    fn usage(
        &self,
        dirs: &Dirs,
        _limits: &ContainerLimits,
        stats: &mut ResourceStatistics,
    ) -> Result<(), CgroupError> {
        let dir = dirs.get(Subsystem::Io);
        let mut buf = [0u8; 8192];
        let (read, write) = match dirs.version {
            CgroupVersion::V2 => io_stat_bytes(files::read_into(&dir.join("io.stat"), &mut buf)?),
            CgroupVersion::V1 { .. } => {
                let recursive = dir.join("blkio.throttle.io_service_bytes_recursive");
                let path = if recursive.exists() {
                    recursive
                } else {
                    dir.join("blkio.throttle.io_service_bytes")
                };
                blkio_bytes(files::read_into(&path, &mut buf)?)
            }
        };
        stats.blkio_read_bytes = Some(read);
        stats.blkio_write_bytes = Some(write);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_onto_the_v1_scale() {
        assert_eq!(v1_weight(1), 10);
        assert_eq!(v1_weight(100), 19);
        assert_eq!(v1_weight(10_000), 1000);
    }
}
