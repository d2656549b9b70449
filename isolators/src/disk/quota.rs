//! `disk/quota`: project quotas on XFS (`prjquota`) and ext4 (`-O quota,project`, mounted
//! `prjquota`), after Mesos's `disk/xfs`.
//!
//! Each sandbox gets a project id from a configured range with the inherit flag
//! (`FS_XFLAG_PROJINHERIT`, so everything created below is charged to it), and the project a
//! block hard limit: writes beyond it fail with `EDQUOT` (ext4) or `ENOSPC` (XFS). Usage is the
//! project's quota usage, read in one syscall however many files the sandbox holds.
//!
//! State lives in the filesystem itself: a sandbox's project id is its directory's project
//! attribute, re-read on recovery. A project id is free when no known container holds it and
//! the project charges nothing: `cleanup` removes the limit and the directory's attribute, but
//! the sandbox's files keep the id until the containerizer removes the sandbox, so the id is
//! not handed to a new container whose quota would then count someone else's files (Mesos
//! keeps ids of not yet garbage-collected sandboxes for the same reason).
//!
//! ext4 follows VFS quota rules: processes with `CAP_SYS_RESOURCE` are not held to hard
//! limits, so containers must run without it (the OCI default capability set does not grant
//! it). XFS holds everyone to them.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cairn_api::{ContainerId, Reason};

use super::mounts::{self, MountInfo};
use super::sys::{self, Project, QuotaTarget};
use super::{container_dir, io_error, limitation_message, now_secs, unknown, walk};
use crate::{
    ContainerLimits, Isolator, IsolatorError, Limitation, Preparation, RecoveredContainer,
    ResourceStatistics,
};

const NAME: &str = "disk/quota";

/// Knobs of `disk/quota`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOptions {
    /// Project ids this agent may assign (Mesos's `--xfs_project_range`, `[5000-10000]` by
    /// default). Must not include 0, the project of everything else; no other user of project
    /// quotas on the filesystem may use these ids.
    pub project_ids: RangeInclusive<u32>,
    /// Report a DISK limitation (so the containerizer kills the container) when its usage
    /// reaches the limit (Mesos's `--enforce_container_disk_quota` with `--xfs_kill_containers`).
    /// Off by default: the hard quota already makes writes beyond the limit fail.
    pub kill_on_exceed: bool,
    /// How often `watch` should be polled when `kill_on_exceed` is on.
    pub watch_interval: Duration,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        Self {
            project_ids: 5000..=10000,
            kill_on_exceed: false,
            watch_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug)]
struct Assigned {
    dir: PathBuf,
    project: u32,
    limit: Option<u64>,
    reported: bool,
}

#[derive(Debug, Default)]
struct State {
    containers: HashMap<ContainerId, Assigned>,
    /// Where the search for a free id starts (round robin, so a just-freed id is reused last).
    next: u32,
}

/// The `disk/quota` isolator: see the [module docs](self).
#[derive(Debug)]
pub struct QuotaIsolator {
    work_dir: PathBuf,
    options: QuotaOptions,
    mount: MountInfo,
    target: QuotaTarget,
    /// Usage within this many bytes of the limit has reached it: the larger of the page size
    /// and the filesystem's block size (writes reserve space a page at a time, so ext4 with
    /// 1 KiB blocks stops up to 3 KiB short of a limit).
    slack: u64,
    state: Mutex<State>,
}

fn unsupported(problem: String) -> IsolatorError {
    IsolatorError::Unsupported {
        isolator: NAME,
        problem,
    }
}

/// Opens a directory or regular file for the project ioctls, never following a symlink and
/// never blocking (on a FIFO the walk would not offer anyway).
fn open_inode(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

impl QuotaIsolator {
    /// An isolator for the sandboxes under `work_dir` (`<work_dir>/<container id>`), which must
    /// exist. Checks that its filesystem can enforce project quotas and changes nothing.
    ///
    /// # Errors
    /// [`IsolatorError::Unsupported`] naming the filesystem, its mount and options and what is
    /// missing, when the work dir cannot do project quotas (use `disk/du` there);
    /// [`IsolatorError::Invalid`] for a project id range that is empty or includes 0.
    pub fn new(work_dir: impl AsRef<Path>, options: QuotaOptions) -> Result<Self, IsolatorError> {
        if options.project_ids.is_empty() || *options.project_ids.start() == 0 {
            return Err(IsolatorError::Invalid {
                isolator: NAME,
                op: "configure",
                container: "-".to_string(),
                problem: format!(
                    "project id range {:?} must be non-empty and exclude 0",
                    options.project_ids
                ),
            });
        }
        let given = work_dir.as_ref();
        let work_dir = fs::canonicalize(given)
            .map_err(|e| unsupported(format!("work dir {}: {e}", given.display())))?;
        let mount = mounts::mount_of(&work_dir)
            .map_err(|e| unsupported(format!("reading /proc/self/mountinfo: {e}")))?
            .ok_or_else(|| {
                unsupported(format!(
                    "no mount found for work dir {}",
                    work_dir.display()
                ))
            })?;
        let on = format!(
            "{} ({} mounted at {} with {})",
            mount.fs_type,
            mount.source,
            mount.mount_point.display(),
            mount.options_string()
        );
        match mount.fs_type.as_str() {
            "xfs" if !mount.enforces_project_quota() => {
                return Err(unsupported(format!(
                    "work dir {} is on {on}: project quotas need the prjquota mount option",
                    work_dir.display()
                )))
            }
            "ext4" if !mount.enforces_project_quota() => {
                return Err(unsupported(format!(
                    "work dir {} is on {on}: project quotas need the project and quota \
                     features (mkfs.ext4 -O quota,project, or tune2fs -O quota,project \
                     unmounted) and the prjquota mount option",
                    work_dir.display()
                )))
            }
            "xfs" | "ext4" => {}
            _ => {
                return Err(unsupported(format!(
                    "work dir {} is on {on}: project quotas need XFS or ext4 mounted with \
                     prjquota; use disk/du here",
                    work_dir.display()
                )))
            }
        }
        let probe_id = *options.project_ids.start();
        let mut target = QuotaTarget::Dir(work_dir.clone());
        if let Err(e) = target.get(probe_id) {
            // quotactl_fd(2) is Linux 5.14; older kernels take the block device.
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(unsupported(format!(
                    "quotactl(Q_GETQUOTA, PRJQUOTA) on {on} failed: {e}"
                )));
            }
            let device = CString::new(mount.source.clone())
                .map_err(|_| unsupported(format!("mount source of {on} contains NUL")))?;
            target = QuotaTarget::Device(device);
            target.get(probe_id).map_err(|e| {
                unsupported(format!(
                    "quotactl(Q_GETQUOTA, PRJQUOTA) on {on} failed: {e} (does the kernel have \
                     CONFIG_QUOTA and CONFIG_XFS_QUOTA?)"
                ))
            })?;
        }
        let block_size = nix::sys::statvfs::statvfs(&work_dir)
            .map_err(|e| unsupported(format!("statvfs of {}: {e}", work_dir.display())))?
            .block_size();
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096);
        let slack = block_size.max(page_size);
        File::open(&work_dir)
            .and_then(|dir| sys::get_project(&dir))
            .map_err(|e| {
                unsupported(format!(
                    "FS_IOC_FSGETXATTR on work dir {} ({on}) failed: {e}",
                    work_dir.display()
                ))
            })?;
        Ok(Self {
            work_dir,
            state: Mutex::new(State {
                containers: HashMap::new(),
                next: probe_id,
            }),
            options,
            mount,
            target,
            slack,
        })
    }

    /// The filesystem type of the work dir (`xfs` or `ext4`).
    pub fn fs_type(&self) -> &str {
        &self.mount.fs_type
    }

    /// The project id assigned to container `id`, if it is known.
    pub fn project_of(&self, id: &ContainerId) -> Option<u32> {
        self.state().containers.get(id).map(|a| a.project)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_range(&self, project: u32) -> bool {
        self.options.project_ids.contains(&project)
    }

    /// Picks a project id that no container holds and that charges nothing.
    fn allocate(&self, state: &mut State) -> io::Result<u32> {
        let (start, end) = (
            *self.options.project_ids.start(),
            *self.options.project_ids.end(),
        );
        let held: HashSet<u32> = state.containers.values().map(|a| a.project).collect();
        let count = u64::from(end - start) + 1;
        let first = u64::from(state.next.clamp(start, end) - start);
        for i in 0..count {
            let project = start + u32::try_from((first + i) % count).unwrap_or(0);
            if held.contains(&project) {
                continue;
            }
            let quota = self.target.get(project)?;
            if quota.used_bytes == 0 && quota.inodes == 0 {
                state.next = if project == end { start } else { project + 1 };
                return Ok(project);
            }
        }
        Err(io::Error::other(format!(
            "no free project id in {start}..={end}: each is held by a container or still \
             charged with files of a sandbox not yet removed"
        )))
    }

    /// Gives `dir` and everything already in it the project, with the inherit flag on
    /// directories (XFS takes it only there).
    fn tag_tree(dir: &Path, project: u32) -> io::Result<()> {
        walk::visit(dir, |path, meta| {
            if !(meta.is_dir() || meta.is_file()) {
                return Ok(());
            }
            let inode = open_inode(path)?;
            sys::set_project(
                &inode,
                Project {
                    id: project,
                    inherit: meta.is_dir(),
                },
            )
        })?;
        Ok(())
    }

    /// Sets the limit of `project` (0 = none) and tags `dir` with it.
    fn apply(&self, dir: &Path, project: u32, limit: Option<u64>) -> io::Result<()> {
        self.target.set_limit(project, limit.unwrap_or(0))?;
        Self::tag_tree(dir, project)
    }

    /// Removes the limit of `project` and, if `dir` still carries it, the directory's project
    /// attribute. Its files keep the id until the sandbox is removed (see the module docs).
    fn release(&self, dir: &Path, project: u32) -> io::Result<()> {
        self.target.set_limit(project, 0)?;
        let inode = match open_inode(dir) {
            Ok(inode) => inode,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if sys::get_project(&inode)?.id == project {
            sys::set_project(
                &inode,
                Project {
                    id: 0,
                    inherit: false,
                },
            )?;
        }
        Ok(())
    }

    /// The project attribute of `dir` if it is one of ours; `None` when `dir` is missing.
    fn project_on(&self, dir: &Path) -> io::Result<Option<u32>> {
        let inode = match open_inode(dir) {
            Ok(inode) => inode,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let project = sys::get_project(&inode)?.id;
        Ok(self.in_range(project).then_some(project))
    }

    /// Assigns a fresh project to `dir` for container `id` and applies `limit`; on failure
    /// undoes what it did.
    fn assign(
        &self,
        id: &ContainerId,
        dir: PathBuf,
        limit: Option<u64>,
        op: &'static str,
    ) -> Result<u32, IsolatorError> {
        let project = {
            let mut state = self.state();
            let project = self
                .allocate(&mut state)
                .map_err(|e| io_error(NAME, op, id, e))?;
            state.containers.insert(
                id.clone(),
                Assigned {
                    dir: dir.clone(),
                    project,
                    limit,
                    reported: false,
                },
            );
            project
        };
        if let Err(e) = self.apply(&dir, project, limit) {
            if let Err(undo) = self.release(&dir, project) {
                tracing::warn!(container = %id, project, "disk/quota: undoing prepare: {undo}");
            }
            self.state().containers.remove(id);
            return Err(io_error(NAME, op, id, e));
        }
        tracing::debug!(container = %id, project, ?limit, "disk/quota: assigned {}", dir.display());
        Ok(project)
    }
}

impl Isolator for QuotaIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Re-reads each recovered sandbox's project from its directory (assigning one if it has
    /// none of ours, e.g. when switching from `disk/du`) and re-applies its limit; then releases
    /// the projects of sandboxes under the work dir that belong to no recovered container.
    fn recover(&self, containers: &[RecoveredContainer]) -> Result<(), IsolatorError> {
        let mut known = HashSet::new();
        for c in containers {
            let dir = container_dir(NAME, "recover", &self.work_dir, &c.id)?;
            known.insert(c.id.as_str().to_string());
            if !dir.exists() {
                tracing::warn!(container = %c.id, "disk/quota: no sandbox {} to recover", dir.display());
                continue;
            }
            let err = |e| io_error(NAME, "recover", &c.id, e);
            let limit = c.limits.disk_bytes;
            let taken = |p: u32| self.state().containers.values().any(|a| a.project == p);
            match self.project_on(&dir).map_err(err)? {
                Some(project) if !taken(project) => {
                    self.target
                        .set_limit(project, limit.unwrap_or(0))
                        .map_err(err)?;
                    self.state().containers.insert(
                        c.id.clone(),
                        Assigned {
                            dir,
                            project,
                            limit,
                            reported: false,
                        },
                    );
                }
                _ => {
                    self.assign(&c.id, dir, limit, "recover")?;
                }
            }
        }
        let orphan_err = |e| io_error(NAME, "recover", &ContainerId::new("-"), e);
        for entry in fs::read_dir(&self.work_dir).map_err(orphan_err)? {
            let entry = entry.map_err(orphan_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) || !entry.file_type().map_err(orphan_err)?.is_dir() {
                continue;
            }
            let dir = entry.path();
            let id = ContainerId::new(name);
            let err = |e| io_error(NAME, "recover", &id, e);
            if let Some(project) = self.project_on(&dir).map_err(err)? {
                tracing::info!(container = %id, project, "disk/quota: releasing orphan");
                self.release(&dir, project).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Creates the sandbox if the containerizer has not yet, assigns it a project and sets
    /// the project's hard limit to `disk_bytes` (no limit, only accounting, without one).
    fn prepare(
        &self,
        id: &ContainerId,
        limits: &ContainerLimits,
    ) -> Result<Preparation, IsolatorError> {
        let dir = container_dir(NAME, "prepare", &self.work_dir, id)?;
        if self.state().containers.contains_key(id) {
            return Err(IsolatorError::Invalid {
                isolator: NAME,
                op: "prepare",
                container: id.to_string(),
                problem: "already prepared".to_string(),
            });
        }
        fs::create_dir_all(&dir).map_err(|e| io_error(NAME, "prepare", id, e))?;
        self.assign(id, dir, limits.disk_bytes, "prepare")?;
        Ok(Preparation::default())
    }

    fn isolate(&self, id: &ContainerId, _pid: u32) -> Result<(), IsolatorError> {
        if self.state().containers.contains_key(id) {
            Ok(())
        } else {
            Err(unknown(NAME, "isolate", id))
        }
    }

    /// With `kill_on_exceed`, reports DISK once when the project's usage reaches its limit
    /// (within a page or block of it).
    fn watch(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        if !self.options.kill_on_exceed {
            return Ok(None);
        }
        let (project, limit) = match self.state().containers.get(id) {
            Some(Assigned {
                project,
                limit: Some(limit),
                reported: false,
                ..
            }) => (*project, *limit),
            _ => return Ok(None),
        };
        let used = self
            .target
            .get(project)
            .map_err(|e| io_error(NAME, "watch", id, e))?
            .used_bytes;
        // Reached: the next page would not fit.
        if used.saturating_add(self.slack) <= limit {
            return Ok(None);
        }
        let mut state = self.state();
        match state.containers.get_mut(id) {
            Some(a) if !a.reported => {
                a.reported = true;
                Ok(Some(Limitation {
                    reason: Reason::ContainerLimitationDisk,
                    message: limitation_message(used, limit),
                }))
            }
            _ => Ok(None),
        }
    }

    fn update(&self, id: &ContainerId, limits: &ContainerLimits) -> Result<(), IsolatorError> {
        let mut state = self.state();
        let Some(a) = state.containers.get_mut(id) else {
            return Err(unknown(NAME, "update", id));
        };
        self.target
            .set_limit(a.project, limits.disk_bytes.unwrap_or(0))
            .map_err(|e| io_error(NAME, "update", id, e))?;
        a.limit = limits.disk_bytes;
        Ok(())
    }

    fn usage(&self, id: &ContainerId) -> Result<ResourceStatistics, IsolatorError> {
        let (project, limit) = match self.state().containers.get(id) {
            Some(a) => (a.project, a.limit),
            None => return Err(unknown(NAME, "usage", id)),
        };
        let quota = self
            .target
            .get(project)
            .map_err(|e| io_error(NAME, "usage", id, e))?;
        Ok(ResourceStatistics {
            timestamp: now_secs(),
            disk_used_bytes: Some(quota.used_bytes),
            disk_limit_bytes: limit,
            ..ResourceStatistics::default()
        })
    }

    /// Removes the project's limit and the sandbox's project attribute; also for a container
    /// this agent does not know whose sandbox still carries one of our ids.
    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        let err = |e| io_error(NAME, "cleanup", id, e);
        let known = self
            .state()
            .containers
            .get(id)
            .map(|a| (a.dir.clone(), a.project));
        match known {
            Some((dir, project)) => {
                self.release(&dir, project).map_err(err)?;
                self.state().containers.remove(id);
            }
            None => {
                let Ok(dir) = container_dir(NAME, "cleanup", &self.work_dir, id) else {
                    return Ok(());
                };
                if let Some(project) = self.project_on(&dir).map_err(err)? {
                    let held = self
                        .state()
                        .containers
                        .values()
                        .any(|a| a.project == project);
                    if !held {
                        self.release(&dir, project).map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn watch_interval(&self) -> Option<Duration> {
        self.options
            .kill_on_exceed
            .then_some(self.options.watch_interval)
    }
}
