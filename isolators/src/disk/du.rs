//! `disk/du`: periodic usage walks of each sandbox, a limitation when usage passes the limit
//! (Mesos's `disk/du` with `--enforce_container_disk_quota`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cairn_api::{ContainerId, Reason};

use super::{container_dir, io_error, limitation_message, now_secs, unknown, walk};
use crate::{
    ContainerLimits, Isolator, IsolatorError, Limitation, Preparation, RecoveredContainer,
    ResourceStatistics,
};

const NAME: &str = "disk/du";

/// Knobs of `disk/du`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuOptions {
    /// How often the containerizer should call `watch` (Mesos's
    /// `--container_disk_watch_interval`, 15 s by default). `usage` reuses a walk younger than
    /// this.
    pub interval: Duration,
    /// At most this many walks run at once, across all containers; more wait their turn (walks
    /// are disk-bound: running many at once only slows each down).
    pub max_concurrent_walks: usize,
}

impl Default for DuOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            max_concurrent_walks: 2,
        }
    }
}

#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    limit: Option<u64>,
    /// The latest walk: when it finished and what it counted.
    last: Option<(Instant, u64)>,
    reported: bool,
}

/// A counting semaphore bounding concurrent walks.
#[derive(Debug)]
struct Walks {
    running: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

#[derive(Debug)]
struct WalkPermit<'a>(&'a Walks);

impl Walks {
    fn acquire(&self) -> WalkPermit<'_> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while *running >= self.max {
            running = self
                .freed
                .wait(running)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        WalkPermit(self)
    }
}

impl Drop for WalkPermit<'_> {
    fn drop(&mut self) {
        let mut running = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *running -= 1;
        self.0.freed.notify_one();
    }
}

/// The `disk/du` isolator: see the [module docs](super).
#[derive(Debug)]
pub struct DuIsolator {
    work_dir: PathBuf,
    options: DuOptions,
    containers: Mutex<HashMap<ContainerId, Entry>>,
    walks: Walks,
}

impl DuIsolator {
    /// An isolator for the sandboxes under `work_dir` (`<work_dir>/<container id>`). Has no side
    /// effects; works on any filesystem.
    pub fn new(work_dir: impl Into<PathBuf>, options: DuOptions) -> Self {
        let max = options.max_concurrent_walks.max(1);
        Self {
            work_dir: work_dir.into(),
            options,
            containers: Mutex::new(HashMap::new()),
            walks: Walks {
                running: Mutex::new(0),
                freed: Condvar::new(),
                max,
            },
        }
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<ContainerId, Entry>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn track(
        &self,
        id: &ContainerId,
        limits: &ContainerLimits,
        op: &'static str,
    ) -> Result<(), IsolatorError> {
        let dir = container_dir(NAME, op, &self.work_dir, id)?;
        self.containers().insert(
            id.clone(),
            Entry {
                dir,
                limit: limits.disk_bytes,
                last: None,
                reported: false,
            },
        );
        Ok(())
    }

    /// Walks the sandbox of `id` now (waiting for a walk slot) and records the result.
    fn walk(&self, id: &ContainerId, op: &'static str) -> Result<u64, IsolatorError> {
        let dir = match self.containers().get(id) {
            Some(entry) => entry.dir.clone(),
            None => return Err(unknown(NAME, op, id)),
        };
        let used = {
            let _permit = self.walks.acquire();
            walk::disk_usage(&dir).map_err(|e| io_error(NAME, op, id, e))?
        };
        if let Some(entry) = self.containers().get_mut(id) {
            entry.last = Some((Instant::now(), used));
        }
        tracing::debug!(container = %id, used, "disk/du walked {}", dir.display());
        Ok(used)
    }
}

impl Isolator for DuIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    /// `disk/du` keeps no state outside memory: it tracks the recovered containers again and
    /// has no orphans to clean up.
    fn recover(&self, containers: &[RecoveredContainer]) -> Result<(), IsolatorError> {
        for c in containers {
            self.track(&c.id, &c.limits, "recover")?;
        }
        Ok(())
    }

    fn prepare(
        &self,
        id: &ContainerId,
        limits: &ContainerLimits,
    ) -> Result<Preparation, IsolatorError> {
        if self.containers().contains_key(id) {
            return Err(IsolatorError::Invalid {
                isolator: NAME,
                op: "prepare",
                container: id.to_string(),
                problem: "already prepared".to_string(),
            });
        }
        self.track(id, limits, "prepare")?;
        Ok(Preparation::default())
    }

    fn isolate(&self, id: &ContainerId, _pid: u32) -> Result<(), IsolatorError> {
        if self.containers().contains_key(id) {
            Ok(())
        } else {
            Err(unknown(NAME, "isolate", id))
        }
    }

    /// Walks the sandbox and reports DISK once when usage is above the limit.
    fn watch(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        let limit = match self.containers().get(id) {
            Some(Entry {
                limit: Some(limit),
                reported: false,
                ..
            }) => *limit,
            _ => return Ok(None),
        };
        let used = self.walk(id, "watch")?;
        if used <= limit {
            return Ok(None);
        }
        let mut containers = self.containers();
        match containers.get_mut(id) {
            Some(entry) if !entry.reported => {
                entry.reported = true;
                Ok(Some(Limitation {
                    reason: Reason::ContainerLimitationDisk,
                    message: limitation_message(used, limit),
                }))
            }
            _ => Ok(None),
        }
    }

    fn update(&self, id: &ContainerId, limits: &ContainerLimits) -> Result<(), IsolatorError> {
        match self.containers().get_mut(id) {
            Some(entry) => {
                entry.limit = limits.disk_bytes;
                Ok(())
            }
            None => Err(unknown(NAME, "update", id)),
        }
    }

    /// The latest walk if it is younger than the watch interval, else a fresh one.
    fn usage(&self, id: &ContainerId) -> Result<ResourceStatistics, IsolatorError> {
        let (limit, last) = match self.containers().get(id) {
            Some(entry) => (entry.limit, entry.last),
            None => return Err(unknown(NAME, "usage", id)),
        };
        let used = match last {
            Some((at, used)) if at.elapsed() < self.options.interval => used,
            _ => self.walk(id, "usage")?,
        };
        Ok(ResourceStatistics {
            timestamp: now_secs(),
            disk_used_bytes: Some(used),
            disk_limit_bytes: limit,
            ..ResourceStatistics::default()
        })
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        self.containers().remove(id);
        Ok(())
    }

    fn watch_interval(&self) -> Option<Duration> {
        Some(self.options.interval)
    }
}
