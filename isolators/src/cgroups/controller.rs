//! The lifecycle every cgroup isolator shares, and the [`Controller`] trait each cgroup
//! controller implements (Mesos's cgroups2 isolator: one `Controller` per controller behind
//! the same lifecycle).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_api::ContainerId;

use super::oom_events::OomEvents;
use super::{check_name, memory, CgroupError, CgroupVersion, Cgroups, Subsystem};
use crate::isolator::{
    ContainerLimits, Isolator, IsolatorError, Limitation, Preparation, RecoveredContainer,
    ResourceStatistics,
};

/// A container's cgroup directories, one per subsystem the controller uses.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub version: CgroupVersion,
    dirs: Vec<(Subsystem, PathBuf)>,
}

impl Dirs {
    /// The directory for `subsystem`; the first (primary) one when the controller did not
    /// declare it (on v2 they are all the same).
    pub fn get(&self, subsystem: Subsystem) -> &Path {
        self.dirs
            .iter()
            .find(|(s, _)| *s == subsystem)
            .or(self.dirs.first())
            .map_or(Path::new("/nonexistent"), |(_, d)| d.as_path())
    }

    /// The primary directory.
    pub fn primary(&self) -> &Path {
        self.dirs
            .first()
            .map_or(Path::new("/nonexistent"), |(_, d)| d.as_path())
    }
}

/// One cgroup controller: what to check, write and read. Called only with directories that
/// were created (prepare) or found (recover).
pub trait Controller: Send + Sync + fmt::Debug {
    /// The isolator's name in the agent config, e.g. `cgroups/mem`.
    fn name(&self) -> &'static str;

    /// The subsystems it needs; the first is its primary one.
    fn subsystems(&self) -> &'static [Subsystem];

    /// Checks `limits` before anything is created.
    ///
    /// # Errors
    /// What is wrong with the limits, for the user.
    fn validate(&self, limits: &ContainerLimits) -> Result<(), String>;

    /// Writes `limits` into the container's cgroup (prepare and update).
    ///
    /// # Errors
    /// The kernel refused a value.
    fn apply(&self, dirs: &Dirs, limits: &ContainerLimits) -> Result<(), CgroupError>;

    /// Adds this controller's statistics to `stats`.
    ///
    /// # Errors
    /// A statistics file cannot be read.
    fn usage(
        &self,
        dirs: &Dirs,
        limits: &ContainerLimits,
        stats: &mut ResourceStatistics,
    ) -> Result<(), CgroupError>;

    /// Checks for a hard limit the container hit.
    ///
    /// # Errors
    /// The limit state cannot be read.
    fn watch(
        &self,
        _dirs: &Dirs,
        _limits: &ContainerLimits,
    ) -> Result<Option<Limitation>, CgroupError> {
        Ok(None)
    }

    /// How often [`Controller::watch`] is worth polling.
    fn watch_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether this controller's limitations are OOM kills, which the isolator then also
    /// learns of from kernel events ([`super::oom_events`]) in the container's memory cgroup.
    fn reports_oom(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct Info {
    limits: ContainerLimits,
    dirs: Dirs,
    /// The limitation was reported (at most once per container).
    limited: AtomicBool,
}

/// A cgroup isolator: the shared lifecycle around one [`Controller`], on a shared backend.
#[derive(Debug)]
pub struct CgroupsIsolator {
    backend: Arc<dyn Cgroups>,
    controller: Box<dyn Controller>,
    containers: RwLock<HashMap<ContainerId, Arc<Info>>>,
    /// The OOM notifier, for a controller that [`Controller::reports_oom`] (when it could
    /// be started; else `watch` polls).
    oom: Option<OomEvents>,
}

impl CgroupsIsolator {
    /// Wraps `controller`, making sure the backend's parent cgroup can host it.
    ///
    /// # Errors
    /// The host lacks the controller's hierarchy or controller (`Unsupported`), or the parent
    /// cannot be set up.
    pub fn new(
        backend: Arc<dyn Cgroups>,
        controller: Box<dyn Controller>,
    ) -> Result<Self, IsolatorError> {
        backend
            .enable(controller.subsystems())
            .map_err(|e| match e {
                CgroupError::NotMounted(_) | CgroupError::ControllerUnavailable { .. } => {
                    IsolatorError::Unsupported {
                        isolator: controller.name(),
                        problem: e.to_string(),
                    }
                }
                e => IsolatorError::Cgroup {
                    isolator: controller.name(),
                    op: "enable",
                    container: "(parent)".to_string(),
                    source: e,
                },
            })?;
        let oom = if controller.reports_oom() {
            OomEvents::start(backend.version())
                .map_err(|e| {
                    tracing::warn!(error = %e, "no oom notifier; oom kills are polled");
                })
                .ok()
        } else {
            None
        };
        Ok(Self {
            backend,
            controller,
            containers: RwLock::default(),
            oom,
        })
    }

    /// The backend this isolator writes through.
    pub fn backend(&self) -> &Arc<dyn Cgroups> {
        &self.backend
    }

    fn err(&self, op: &'static str, id: &ContainerId, source: CgroupError) -> IsolatorError {
        IsolatorError::Cgroup {
            isolator: self.controller.name(),
            op,
            container: id.to_string(),
            source,
        }
    }

    fn invalid(&self, op: &'static str, id: &ContainerId, problem: String) -> IsolatorError {
        IsolatorError::Invalid {
            isolator: self.controller.name(),
            op,
            container: id.to_string(),
            problem,
        }
    }

    fn dirs(&self, name: &str) -> Dirs {
        Dirs {
            version: self.backend.version(),
            dirs: self
                .controller
                .subsystems()
                .iter()
                .map(|&s| (s, self.backend.dir(s, name)))
                .collect(),
        }
    }

    /// Registers `id` with the OOM notifier (prepare, recover, update: the limit may change).
    /// A failure only costs the event path: `watch` still reads the counter.
    fn track_oom(&self, id: &ContainerId, info: &Info) {
        if let Some(oom) = &self.oom {
            let dir = info.dirs.get(Subsystem::Memory);
            if let Err(e) = oom.register(id, dir, memory::hard_limit(&info.limits)) {
                tracing::warn!(container = %id, error = %e, "oom notification not registered; polled");
            }
        }
    }

    fn get(&self, op: &'static str, id: &ContainerId) -> Result<Arc<Info>, IsolatorError> {
        let map = self
            .containers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(id)
            .cloned()
            .ok_or_else(|| self.invalid(op, id, "unknown container".to_string()))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Isolator for CgroupsIsolator {
    fn name(&self) -> &'static str {
        self.controller.name()
    }

    fn recover(&self, containers: &[RecoveredContainer]) -> Result<(), IsolatorError> {
        let mut known = HashSet::new();
        let mut map = self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for c in containers {
            known.insert(c.id.as_str().to_string());
            if check_name(c.id.as_str()).is_err() {
                continue;
            }
            let dirs = self.dirs(c.id.as_str());
            if dirs.primary().is_dir() {
                let info = Info {
                    limits: c.limits.clone(),
                    dirs,
                    limited: AtomicBool::new(false),
                };
                self.track_oom(&c.id, &info);
                map.insert(c.id.clone(), Arc::new(info));
            } else {
                // Its cgroup is gone (host reboot, or removed by hand): the containerizer
                // finds the container dead; nothing to re-attach to.
                tracing::warn!(container = %c.id, isolator = self.name(), "no cgroup to recover");
            }
        }
        drop(map);
        // Orphans: cgroups below our parent that belong to no recovered container (the agent
        // died between prepare and checkpoint, or during cleanup). Mesos destroys them too.
        for &s in self.controller.subsystems() {
            let names = self
                .backend
                .containers(s)
                .map_err(|e| self.err("recover", &ContainerId::new("(parent)"), e))?;
            for name in names.into_iter().filter(|n| !known.contains(n)) {
                tracing::info!(cgroup = %name, isolator = self.name(), "removing orphan cgroup");
                let id = ContainerId::new(name.as_str());
                self.backend
                    .destroy(s, &name)
                    .map_err(|e| self.err("recover", &id, e))?;
            }
        }
        Ok(())
    }

    fn prepare(
        &self,
        id: &ContainerId,
        limits: &ContainerLimits,
    ) -> Result<Preparation, IsolatorError> {
        check_name(id.as_str()).map_err(|e| self.invalid("prepare", id, e.to_string()))?;
        self.controller
            .validate(limits)
            .map_err(|p| self.invalid("prepare", id, p))?;
        for &s in self.controller.subsystems() {
            self.backend
                .create(s, id.as_str())
                .map_err(|e| self.err("prepare", id, e))?;
        }
        let dirs = self.dirs(id.as_str());
        self.controller
            .apply(&dirs, limits)
            .map_err(|e| self.err("prepare", id, e))?;
        let primary = self.controller.subsystems()[0];
        let path = self.backend.relative_path(primary, id.as_str());
        let info = Info {
            limits: limits.clone(),
            dirs,
            limited: AtomicBool::new(false),
        };
        self.track_oom(id, &info);
        self.containers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Arc::new(info));
        Ok(Preparation {
            cgroup_path: Some(path),
            ..Preparation::default()
        })
    }

    fn isolate(&self, id: &ContainerId, pid: u32) -> Result<(), IsolatorError> {
        self.get("isolate", id)?;
        for &s in self.controller.subsystems() {
            self.backend
                .attach(s, id.as_str(), pid)
                .map_err(|e| self.err("isolate", id, e))?;
        }
        Ok(())
    }

    fn watch(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        let Ok(info) = self.get("watch", id) else {
            return Ok(None);
        };
        if info.limited.load(Ordering::Acquire) {
            return Ok(None);
        }
        let read = || self.controller.watch(&info.dirs, &info.limits);
        let limitation = match self.oom.as_ref().and_then(|oom| oom.claim(id, read)) {
            Some(claimed) => claimed,
            None => read(),
        }
        .map_err(|e| self.err("watch", id, e))?;
        if limitation.is_some() && info.limited.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        Ok(limitation)
    }

    fn update(&self, id: &ContainerId, limits: &ContainerLimits) -> Result<(), IsolatorError> {
        let info = self.get("update", id)?;
        self.controller
            .validate(limits)
            .map_err(|p| self.invalid("update", id, p))?;
        self.controller
            .apply(&info.dirs, limits)
            .map_err(|e| self.err("update", id, e))?;
        let updated = Info {
            limits: limits.clone(),
            dirs: info.dirs.clone(),
            limited: AtomicBool::new(info.limited.load(Ordering::Acquire)),
        };
        self.track_oom(id, &updated);
        self.containers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Arc::new(updated));
        Ok(())
    }

    fn usage(&self, id: &ContainerId) -> Result<ResourceStatistics, IsolatorError> {
        let info = self.get("usage", id)?;
        let mut stats = ResourceStatistics {
            timestamp: now(),
            ..ResourceStatistics::default()
        };
        self.controller
            .usage(&info.dirs, &info.limits, &mut stats)
            .map_err(|e| self.err("usage", id, e))?;
        Ok(stats)
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        self.containers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        // Before the cgroup goes: v1 signals a registered eventfd when its cgroup is removed.
        if let Some(oom) = &self.oom {
            oom.deregister(id);
        }
        if check_name(id.as_str()).is_err() {
            return Ok(()); // nothing can have been created under such a name
        }
        // Also for ids we do not know: a prepare that failed after creating the cgroup.
        for &s in self.controller.subsystems().iter().rev() {
            self.backend
                .destroy(s, id.as_str())
                .map_err(|e| self.err("cleanup", id, e))?;
        }
        Ok(())
    }

    fn watch_interval(&self) -> Option<Duration> {
        self.controller.watch_interval()
    }

    fn subscribe(&self) -> Option<Receiver<(ContainerId, Limitation)>> {
        self.oom.as_ref().map(OomEvents::subscribe)
    }
}
