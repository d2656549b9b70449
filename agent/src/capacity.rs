//! Measured capacity: what this node can give to tasks.
//!
//! Follows Mesos's agent (`src/slave/containerizer/containerizer.cpp`, `resources`): CPUs from
//! the affinity mask, memory from `MemTotal`, disk from `statvfs` of the work directory; and,
//! unlike Mesos, bounded by any cgroup CPU quota or memory limit *above* the agent, so an agent
//! placed in a limited cgroup (a systemd slice, a container) never offers what it cannot have.
//! A system reservation is subtracted (Mesos's defaults: memory `total - 1 GiB`, disk
//! `total - 5 GiB`, or half on small nodes).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cairn_api::{Range, Resources};
use serde::Serialize;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Why capacity could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("cpu affinity of the agent: {0}")]
    Affinity(#[source] nix::Error),
    #[error("statvfs of the work directory {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("resources: {0}")]
    Resources(#[from] cairn_api::ResourceError),
}

/// What the node has, before reservations, and where each figure came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeCapacity {
    /// CPUs the agent may run on: the affinity mask, capped by any CFS quota above it.
    pub cpus: f64,
    /// CPUs in the affinity mask.
    pub cpus_affinity: usize,
    /// The tightest CFS quota above the agent, in CPUs, if any.
    pub cpus_cgroup_quota: Option<f64>,
    /// Memory in bytes: `MemTotal`, capped by any cgroup memory limit above the agent.
    pub mem_bytes: u64,
    pub mem_total_bytes: u64,
    pub mem_cgroup_limit_bytes: Option<u64>,
    /// Size of the work directory's filesystem in bytes.
    pub disk_bytes: u64,
}

/// How much to hold back for the system, and what to advertise beyond measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Memory held back; `None` uses Mesos's default (1 GiB, or half below 2 GiB).
    pub mem_bytes: Option<u64>,
    /// Disk held back; `None` uses Mesos's default (5 GiB, or half below 10 GiB).
    pub disk_bytes: Option<u64>,
    /// CPUs held back (default none, as in Mesos).
    pub cpus: f64,
    /// Port ranges to offer (Mesos's default `[31000-32000]`).
    pub ports: Vec<Range>,
}

impl Default for Reservation {
    fn default() -> Self {
        Self {
            mem_bytes: None,
            disk_bytes: None,
            cpus: 0.0,
            ports: vec![Range {
                begin: 31000,
                end: 32000,
            }],
        }
    }
}

/// Measures the node from the kernel's view of this process.
///
/// # Errors
/// A file under `/proc` or `/sys/fs/cgroup` that cannot be read or parsed, or a work
/// directory that cannot be `statvfs`ed.
pub fn measure(work_dir: &Path) -> Result<NodeCapacity, CapacityError> {
    let cpus_affinity = affinity_cpus()?;
    let cgroups = CgroupView::of_self()?;
    let cpus_cgroup_quota = cgroups.cpu_quota()?;
    let cpus = cpus_cgroup_quota.map_or(cpus_affinity as f64, |q| q.min(cpus_affinity as f64));
    let mem_total_bytes = mem_total()?;
    let mem_cgroup_limit_bytes = cgroups.memory_limit()?.filter(|l| *l < mem_total_bytes);
    let mem_bytes = mem_cgroup_limit_bytes.unwrap_or(mem_total_bytes);
    let disk_bytes = disk_size(work_dir)?;
    Ok(NodeCapacity {
        cpus,
        cpus_affinity,
        cpus_cgroup_quota,
        mem_bytes,
        mem_total_bytes,
        mem_cgroup_limit_bytes,
        disk_bytes,
    })
}

impl NodeCapacity {
    /// The resources to offer: capacity minus the reservation, in Mesos units (MB for mem and
    /// disk), CPUs rounded down to thousandths.
    ///
    /// # Errors
    /// Only when a computed figure is not a valid resource (cannot happen for measured input).
    pub fn offerable(&self, reservation: &Reservation) -> Result<Resources, CapacityError> {
        let mem = self.mem_bytes.saturating_sub(
            reservation
                .mem_bytes
                .unwrap_or_else(|| default_reservation(self.mem_bytes, 2 * GIB, GIB)),
        );
        let disk = self.disk_bytes.saturating_sub(
            reservation
                .disk_bytes
                .unwrap_or_else(|| default_reservation(self.disk_bytes, 10 * GIB, 5 * GIB)),
        );
        let cpus = ((self.cpus - reservation.cpus).max(0.0) * 1000.0).floor() / 1000.0;
        Ok(Resources::new()
            .with_scalar("cpus", cpus)?
            .with_scalar("mem", (mem / MIB) as f64)?
            .with_scalar("disk", (disk / MIB) as f64)?
            .with_ranges("ports", &reservation.ports)?)
    }
}

/// Mesos's rule: hold back `fixed` when the total is at least `threshold`, else half.
fn default_reservation(total: u64, threshold: u64, fixed: u64) -> u64 {
    if total >= threshold {
        fixed
    } else {
        total / 2
    }
}

fn affinity_cpus() -> Result<usize, CapacityError> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(CapacityError::Affinity)?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count())
}

fn read(path: &Path) -> Result<String, CapacityError> {
    fs::read_to_string(path).map_err(|source| CapacityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn mem_total() -> Result<u64, CapacityError> {
    let path = Path::new("/proc/meminfo");
    let text = read(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| CapacityError::Parse {
            path: path.into(),
            problem: "no MemTotal line".into(),
        })
}

fn disk_size(work_dir: &Path) -> Result<u64, CapacityError> {
    let st = nix::sys::statvfs::statvfs(work_dir).map_err(|source| CapacityError::Statvfs {
        path: work_dir.to_path_buf(),
        source,
    })?;
    Ok(st.blocks() * st.fragment_size())
}

/// The cgroups this process is in, as `/proc/self/cgroup` says, with the standard
/// `/sys/fs/cgroup` mount layout (unified, or v1 with one directory per controller).
#[derive(Debug)]
struct CgroupView {
    root: PathBuf,
    unified: Option<String>,
    v1: Vec<(Vec<String>, String)>,
}

impl CgroupView {
    fn of_self() -> Result<Self, CapacityError> {
        let text = read(Path::new("/proc/self/cgroup"))?;
        Ok(Self::parse(Path::new("/sys/fs/cgroup"), &text))
    }

    fn parse(root: &Path, proc_cgroup: &str) -> Self {
        let mut unified = None;
        let mut v1 = Vec::new();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                unified = Some(path.to_string());
            } else {
                v1.push((
                    controllers.split(',').map(String::from).collect(),
                    path.to_string(),
                ));
            }
        }
        // On a pure v2 host the unified hierarchy is at the root; on a hybrid host it holds
        // no cpu or memory controller and the v1 hierarchies decide.
        Self {
            root: root.to_path_buf(),
            unified,
            v1,
        }
    }

    fn is_v2(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// Directories from this process's cgroup up to the hierarchy root, innermost first.
    fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let mut p = PathBuf::from(path.trim_start_matches('/'));
        loop {
            dirs.push(base.join(&p));
            if !p.pop() {
                break;
            }
        }
        dirs
    }

    fn v1_dirs(&self, controller: &str) -> Vec<PathBuf> {
        self.v1
            .iter()
            .find(|(cs, _)| cs.iter().any(|c| c == controller))
            .map(|(cs, path)| {
                // Mounted as /sys/fs/cgroup/<name>, where co-mounted controllers have a
                // symlink per controller (cpu -> cpu,cpuacct).
                let base = self.root.join(controller);
                let base = if base.exists() {
                    base
                } else {
                    self.root.join(cs.join(","))
                };
                Self::ancestors(&base, path)
            })
            .unwrap_or_default()
    }

    fn v2_dirs(&self) -> Vec<PathBuf> {
        self.unified
            .as_deref()
            .map(|p| Self::ancestors(&self.root, p))
            .unwrap_or_default()
    }

    /// The tightest CFS quota above this process, in CPUs.
    fn cpu_quota(&self) -> Result<Option<f64>, CapacityError> {
        let mut best: Option<f64> = None;
        let mut consider = |cpus: f64| best = Some(best.map_or(cpus, |b: f64| b.min(cpus)));
        if self.is_v2() {
            for dir in self.v2_dirs() {
                let file = dir.join("cpu.max");
                let Some(text) = read_optional(&file)? else {
                    continue;
                };
                let mut it = text.split_whitespace();
                if let (Some(quota), Some(period)) = (it.next(), it.next()) {
                    if let (Ok(q), Ok(p)) = (quota.parse::<f64>(), period.parse::<f64>()) {
                        consider(q / p);
                    }
                }
            }
        } else {
            for dir in self.v1_dirs("cpu") {
                let (Some(q), Some(p)) = (
                    read_optional(&dir.join("cpu.cfs_quota_us"))?,
                    read_optional(&dir.join("cpu.cfs_period_us"))?,
                ) else {
                    continue;
                };
                if let (Ok(q), Ok(p)) = (q.trim().parse::<i64>(), p.trim().parse::<i64>()) {
                    if q > 0 && p > 0 {
                        consider(q as f64 / p as f64);
                    }
                }
            }
        }
        Ok(best)
    }

    /// The tightest memory limit above this process, in bytes.
    fn memory_limit(&self) -> Result<Option<u64>, CapacityError> {
        let (dirs, file) = if self.is_v2() {
            (self.v2_dirs(), "memory.max")
        } else {
            (self.v1_dirs("memory"), "memory.limit_in_bytes")
        };
        let mut best: Option<u64> = None;
        for dir in dirs {
            if let Some(text) = read_optional(&dir.join(file))? {
                if let Ok(limit) = text.trim().parse::<u64>() {
                    best = Some(best.map_or(limit, |b| b.min(limit)));
                }
            }
        }
        Ok(best)
    }
}

/// Reads a cgroup file that may be absent at this level (the root has no `cpu.max`).
fn read_optional(path: &Path) -> Result<Option<String>, CapacityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CapacityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_follows_mesos_defaults() {
        assert_eq!(default_reservation(8 * GIB, 2 * GIB, GIB), GIB);
        assert_eq!(default_reservation(GIB, 2 * GIB, GIB), GIB / 2);
        assert_eq!(default_reservation(100 * GIB, 10 * GIB, 5 * GIB), 5 * GIB);
        assert_eq!(default_reservation(4 * GIB, 10 * GIB, 5 * GIB), 2 * GIB);
    }

    #[test]
    fn offerable_subtracts_reservations_in_mesos_units() {
        let cap = NodeCapacity {
            cpus: 2.0,
            cpus_affinity: 2,
            cpus_cgroup_quota: None,
            mem_bytes: 24 * GIB,
            mem_total_bytes: 24 * GIB,
            mem_cgroup_limit_bytes: None,
            disk_bytes: 100 * GIB,
        };
        let r = cap.offerable(&Reservation::default()).unwrap();
        assert_eq!(
            r.to_string(),
            "cpus:2;disk:97280;mem:23552;ports:[31000-32000]"
        );
        let r = cap
            .offerable(&Reservation {
                mem_bytes: Some(0),
                cpus: 0.5,
                ..Reservation::default()
            })
            .unwrap();
        assert!((r.cpus() - 1.5).abs() < 1e-9);
        assert!((r.mem_mb() - 24576.0).abs() < 1e-9);
    }

    #[test]
    fn parses_hybrid_proc_cgroup() {
        let view = CgroupView::parse(
            Path::new("/nonexistent"),
            "12:memory:/process_api/abc\n4:cpu,cpuacct:/\n0::/\n",
        );
        assert_eq!(view.unified.as_deref(), Some("/"));
        assert_eq!(view.v1.len(), 2);
        let dirs = view.v1_dirs("memory");
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/nonexistent/memory/process_api/abc"),
                PathBuf::from("/nonexistent/memory/process_api"),
                PathBuf::from("/nonexistent/memory"),
            ]
        );
    }
}
