//! Running OCI bundles through youki's `libcontainer`.
//!
//! [`Runtime`] owns a state root (libcontainer's per-container state directories) and a
//! cgroup parent: every container's `linux.cgroupsPath` must lie below it (a bundle without
//! one is refused, since libcontainer's default lands at the root of every hierarchy).
//! [`Runtime::create`] forks the container's init, which waits; [`Container::start`] lets it
//! exec; [`Container::wait`] reaps it; [`Container::delete`] removes its state and cgroup.
//!
//! The init process is a child of the calling process (libcontainer clones it with
//! `CLONE_PARENT` from its intermediate process), so the caller can `waitpid(2)` it: this is
//! what lets the per-container supervisor (DESIGN.md, "Supervision") be its parent. The API is
//! synchronous and needs no async runtime. libcontainer forks with raw `clone(2)`, which runs
//! no fork handlers: call it from a single-threaded process, or keep other threads out of the
//! allocator meanwhile (the tests serialize container creation).

mod cgroups;
mod container;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

pub use cgroups::{own_cgroup, v1_leaf_dirs};
pub use container::{Container, ContainerStatus, ExitStatus};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A container id must be non-empty and made of `[A-Za-z0-9_+.-]` (not `.` or `..`).
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    /// The bundle's `config.json` could not be read.
    #[error("failed to load bundle {path}: {reason}")]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// oci-spec's message.
        reason: String,
    },
    /// The bundle sets no `linux.cgroupsPath`.
    #[error("bundle {0} sets no linux.cgroupsPath")]
    NoCgroupsPath(PathBuf),
    /// The bundle's cgroup is not below the runtime's cgroup parent.
    #[error("cgroup {path} is not below the runtime's cgroup parent {parent}")]
    CgroupOutsideParent {
        /// The bundle's `linux.cgroupsPath`.
        path: PathBuf,
        /// The runtime's parent.
        parent: PathBuf,
    },
    /// A container with this id already has state under the state root.
    #[error("container {0} already exists")]
    Exists(String),
    /// No container with this id under the state root.
    #[error("no container {0}")]
    NotFound(String),
    /// The container has no running process to signal.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container's init is not a child of this process, so its status cannot be reaped.
    #[error("container {0}'s init is not a child of this process")]
    NotOurChild(String),
    /// libcontainer failed.
    #[error("failed to {op} container {id}: {source}")]
    Libcontainer {
        /// The operation (`create`, `start`, `kill`, `delete`, `load`).
        op: &'static str,
        /// The container.
        id: String,
        /// libcontainer's error.
        #[source]
        source: Box<LibcontainerError>,
    },
    /// A file or directory operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `waitpid(2)` failed.
    #[error("failed to wait for container {id}: {source}")]
    Wait {
        /// The container.
        id: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The cgroup leaf survived deletion.
    #[error("cgroup {0} still exists after delete")]
    CgroupLeft(PathBuf),
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { op, path, source }
}

pub(crate) fn lc_err(op: &'static str, id: &str) -> impl FnOnce(LibcontainerError) -> RuntimeError {
    let id = id.to_string();
    move |source| RuntimeError::Libcontainer {
        op,
        id,
        source: Box::new(source),
    }
}

/// Where a container's stdout or stderr goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    /// `/dev/null`.
    #[default]
    Null,
    /// The calling process's own descriptor.
    Inherit,
    /// A file, created if missing and appended to (logs survive a restart).
    File(PathBuf),
}

impl Output {
    fn open(&self) -> Result<Option<OwnedFd>, RuntimeError> {
        let path = match self {
            Output::Inherit => return Ok(None),
            Output::Null => Path::new("/dev/null"),
            Output::File(path) => path.as_path(),
        };
        let file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("open output", path))?;
        Ok(Some(file.into()))
    }
}

/// Where a runtime keeps its state and places its containers' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// libcontainer's state root: one directory per container (its `state.json`, the
    /// notify socket). Created if missing.
    pub state_root: PathBuf,
    /// Every container's `linux.cgroupsPath` must be below this cgroup path (relative to
    /// each hierarchy's mount point, as in `/proc/self/cgroup`).
    pub cgroup_parent: PathBuf,
}

/// Runs bundles; see the module docs.
#[derive(Debug, Clone)]
pub struct Runtime {
    config: RuntimeConfig,
}

impl Runtime {
    /// A runtime with `config`; creates the state root.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        fs::create_dir_all(&config.state_root)
            .map_err(io_err("create state root", &config.state_root))?;
        let state_root = fs::canonicalize(&config.state_root)
            .map_err(io_err("resolve state root", &config.state_root))?;
        Ok(Self {
            config: RuntimeConfig {
                state_root,
                ..config
            },
        })
    }

    /// The configuration (with the state root made absolute).
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The cgroup path a container with `id` should use: `<cgroup_parent>/<id>`.
    pub fn cgroup_path_for(&self, id: &str) -> PathBuf {
        self.config.cgroup_parent.join(id)
    }

    /// Creates container `id` from `bundle`: its init process is forked into its namespaces
    /// and cgroup, and waits for [`Container::start`]. stdin is `/dev/null`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: &Output,
        stderr: &Output,
    ) -> Result<Container, RuntimeError> {
        check_id(id)?;
        let cgroup = self.check_bundle(bundle)?;
        if self.config.state_root.join(id).exists() {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_root_path(&self.config.state_root)
            .map_err(lc_err("create", id))?;
        let stdin = File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
        builder = builder.with_stdin(stdin);
        if let Some(fd) = stdout.open()? {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = stderr.open()? {
            builder = builder.with_stderr(fd);
        }
        let built = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(root_is_initramfs())
            .build();
        match built {
            Ok(inner) => Ok(Container::new(inner, cgroup)),
            Err(e) => {
                // Leave nothing behind: a half-created container's state and cgroup.
                let state_dir = self.config.state_root.join(id);
                if let Ok(mut c) = libcontainer::container::Container::load(state_dir.clone()) {
                    let _ = c.delete(true);
                }
                let _ = cgroups::remove_v1_leaf(&cgroup);
                let _ = fs::remove_dir_all(&state_dir);
                Err(lc_err("create", id)(e))
            }
        }
    }

    /// Loads container `id` from the state root (after a restart of the caller). Its init
    /// is then not a child of this process: [`Container::wait`] reports
    /// [`RuntimeError::NotOurChild`].
    pub fn load(&self, id: &str) -> Result<Container, RuntimeError> {
        check_id(id)?;
        let dir = self.config.state_root.join(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let inner = libcontainer::container::Container::load(dir).map_err(lc_err("load", id))?;
        let cgroup = inner
            .spec()
            .ok()
            .map(|c| c.cgroup_path.clone())
            .unwrap_or_else(|| self.cgroup_path_for(id));
        Ok(Container::new_foreign(inner, cgroup))
    }

    /// The ids of containers with state under the state root.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let root = &self.config.state_root;
        let mut ids: Vec<String> = fs::read_dir(root)
            .map_err(io_err("list", root))?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Checks the bundle's cgroup path is set and below the parent; returns it.
    fn check_bundle(&self, bundle: &Path) -> Result<PathBuf, RuntimeError> {
        let spec = Spec::load(bundle.join(crate::spec::CONFIG_FILE)).map_err(|e| {
            RuntimeError::Bundle {
                path: bundle.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .ok_or_else(|| RuntimeError::NoCgroupsPath(bundle.to_path_buf()))?;
        let parent = &self.config.cgroup_parent;
        let below = path.starts_with(parent)
            && path != *parent
            && !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if below {
            Ok(path)
        } else {
            Err(RuntimeError::CgroupOutsideParent {
                path,
                parent: parent.clone(),
            })
        }
    }
}

/// Whether this process's root is the initramfs (`rootfs`), as in a machine that never
/// switched to a real root (the test VM, some diskless boots). `pivot_root(2)` refuses to move
/// the initramfs away (EINVAL), so containers then enter their root with a move mount and
/// `chroot` instead, as `runc --no-pivot` (Docker's `DOCKER_RAMDISK`) does. Everywhere else
/// containers pivot, which leaves no path back to the host's root.
fn root_is_initramfs() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|line| {
            let Some((pre, post)) = line.split_once(" - ") else {
                return false;
            };
            pre.split_whitespace().nth(4) == Some("/")
                && matches!(post.split_whitespace().next(), Some("rootfs" | "ramfs"))
        })
    })
}

fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("task-1.a_b+c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(
                matches!(check_id(bad), Err(RuntimeError::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bundles_must_put_their_cgroup_below_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(RuntimeConfig {
            state_root: dir.path().join("state"),
            cgroup_parent: "/cairn".into(),
        })
        .unwrap();
        let write = |cgroup: Option<&str>| {
            let mut linux = oci_spec::runtime::Linux::default();
            linux.set_cgroups_path(cgroup.map(PathBuf::from));
            let mut spec = Spec::default();
            spec.set_linux(Some(linux));
            crate::spec::write_bundle(&dir.path().join("b"), &spec).unwrap();
        };
        let bundle = dir.path().join("b");
        write(None);
        assert!(matches!(
            runtime.check_bundle(&bundle),
            Err(RuntimeError::NoCgroupsPath(_))
        ));
        for outside in ["/other/x", "/cairn", "/cairn/../x", "/cairnx/y"] {
            write(Some(outside));
            assert!(
                matches!(
                    runtime.check_bundle(&bundle),
                    Err(RuntimeError::CgroupOutsideParent { .. })
                ),
                "{outside}"
            );
        }
        write(Some("/cairn/c1"));
        assert_eq!(
            runtime.check_bundle(&bundle).unwrap(),
            PathBuf::from("/cairn/c1")
        );
        assert!(matches!(
            runtime.check_bundle(&dir.path().join("missing")),
            Err(RuntimeError::Bundle { .. })
        ));
    }
}
