//! One container: start, signal, wait, state, delete.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{cgroups, lc_err, RuntimeError};

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl ExitStatus {
    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(code) => Some(code),
            ExitStatus::Signaled(_) => None,
        }
    }

    /// The signal, if one killed it.
    pub fn signal(self) -> Option<Signal> {
        match self {
            ExitStatus::Signaled(sig) => Some(sig),
            ExitStatus::Exited(_) => None,
        }
    }

    /// The shell's convention: the code, or 128 + the signal number.
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig as i32,
        }
    }
}

/// The container's lifecycle state (the OCI runtime spec's, plus paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Being created.
    Creating,
    /// Created; init waits for start.
    Created,
    /// Its process runs.
    Running,
    /// Its process has exited.
    Stopped,
    /// Frozen.
    Paused,
}

impl From<libcontainer::container::ContainerStatus> for ContainerStatus {
    fn from(s: libcontainer::container::ContainerStatus) -> Self {
        use libcontainer::container::ContainerStatus as L;
        match s {
            L::Creating => Self::Creating,
            L::Created => Self::Created,
            L::Running => Self::Running,
            L::Stopped => Self::Stopped,
            L::Paused => Self::Paused,
        }
    }
}

/// A created container. Dropping the handle leaves the container alone (it outlives its
/// supervisor by design); call [`Container::delete`] to remove it.
#[derive(Debug)]
pub struct Container {
    inner: libcontainer::container::Container,
    cgroup: PathBuf,
    /// Whether its init is our child (created here), so `waitpid` can reap it.
    child: bool,
    exit: Option<ExitStatus>,
}

impl Container {
    pub(super) fn new(inner: libcontainer::container::Container, cgroup: PathBuf) -> Self {
        Self {
            inner,
            cgroup,
            child: true,
            exit: None,
        }
    }

    pub(super) fn new_foreign(inner: libcontainer::container::Container, cgroup: PathBuf) -> Self {
        Self {
            inner,
            cgroup,
            child: false,
            exit: None,
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// The host pid of its init process.
    pub fn pid(&self) -> Option<i32> {
        self.inner.pid().map(Pid::as_raw)
    }

    /// Its cgroup path (`linux.cgroupsPath`).
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// Its bundle directory.
    pub fn bundle(&self) -> &Path {
        self.inner.bundle()
    }

    /// Lets the init process exec the command.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        let id = self.id().to_string();
        self.inner.start().map_err(lc_err("start", &id))
    }

    /// Sends `signal` to the init process (with a private pid namespace, the kernel kills
    /// the rest when init dies).
    pub fn signal(&mut self, signal: Signal) -> Result<(), RuntimeError> {
        let id = self.id().to_string();
        self.inner.refresh_status().map_err(lc_err("kill", &id))?;
        if !self.inner.can_kill() {
            return Err(RuntimeError::NotRunning(id));
        }
        // libcontainer's kill() marks the container stopped whatever the signal; its
        // status is refreshed from /proc on the next query, so that is harmless.
        self.inner.kill(signal, false).map_err(lc_err("kill", &id))
    }

    /// Blocks until the init process exits and reaps it; returns its status. Repeated calls
    /// return the same status.
    pub fn wait(&mut self) -> Result<ExitStatus, RuntimeError> {
        self.reap(None)
    }

    /// Like [`Container::wait`] but returns `None` at once while the init still runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, RuntimeError> {
        match self.reap(Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => Ok(Some(status)),
            Err(RuntimeError::Wait {
                source: Errno::EAGAIN,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> Result<ExitStatus, RuntimeError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let id = self.id().to_string();
        if !self.child {
            return Err(RuntimeError::NotOurChild(id));
        }
        let pid = self
            .inner
            .pid()
            .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
        loop {
            let status = match waitpid(pid, flags) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signaled(sig),
                Ok(WaitStatus::StillAlive) => {
                    return Err(RuntimeError::Wait {
                        id,
                        source: Errno::EAGAIN,
                    })
                }
                // Stopped/continued (no WUNTRACED here, but be safe) and EINTR: wait again.
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Err(RuntimeError::NotOurChild(id)),
                Err(source) => return Err(RuntimeError::Wait { id, source }),
            };
            self.exit = Some(status);
            return Ok(status);
        }
    }

    /// The current status, refreshed from `/proc`.
    pub fn status(&mut self) -> Result<ContainerStatus, RuntimeError> {
        if self.exit.is_some() {
            return Ok(ContainerStatus::Stopped);
        }
        let id = self.id().to_string();
        self.inner.refresh_status().map_err(lc_err("query", &id))?;
        Ok(self.inner.status().into())
    }

    /// Deletes the container: with `force`, kills whatever still runs in it first (else a
    /// running container is an error). Removes its state directory and its cgroup (checked
    /// in every v1 hierarchy). A running init that is our child is reaped.
    pub fn delete(mut self, force: bool) -> Result<(), RuntimeError> {
        let id = self.id().to_string();
        self.inner.delete(force).map_err(lc_err("delete", &id))?;
        if self.child && self.exit.is_none() {
            // The kill above made it exit; reap it so no zombie is left behind.
            let _ = self.reap(None);
        }
        cgroups::remove_v1_leaf(&self.cgroup)
            .map_err(super::io_err("remove cgroup", &self.cgroup))?;
        match cgroups::v1_leaf_dirs(&self.cgroup).into_iter().next() {
            Some(dir) => Err(RuntimeError::CgroupLeft(dir)),
            None => Ok(()),
        }
    }
}
