//! A container's root filesystem, assembled from cached extracted layers.
//!
//! With overlayfs (the default where the kernel has it and the caller may mount), the layer
//! directories from [`crate::extract::LayerCache`] are stacked read-only as `lowerdir`, with a
//! per-container `upperdir` and `workdir` taking the container's writes, so the cached layers
//! are shared by every container of an image and never modified. Where overlayfs is
//! unavailable, or when [`RootfsMode::Copy`] asks for it, the layers are copied bottom to top
//! into one directory, applying their overlayfs-form whiteouts as deletions: the same tree.
//!
//! Layout inside the container directory (which belongs to the caller):
//!
//! ```text
//! <container_dir>/rootfs/        the root filesystem (an overlay mount point, or the copy)
//! <container_dir>/rootfs-upper/  overlay upper directory (the container's changes)
//! <container_dir>/rootfs-work/   overlay work directory
//! <container_dir>/rootfs.json    what was assembled, so teardown works after a restart
//! ```
//!
//! [`Rootfs`] tears itself down when dropped unless [`Rootfs::keep`] was called (containers
//! outlive the agent: keep it once the container is recorded); [`Rootfs::teardown`] needs
//! only the container directory and is idempotent.

mod copy;
mod overlay;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "rootfs.json";
const STATE_VERSION: u32 = 1;
const ROOTFS_DIR: &str = "rootfs";
const UPPER_DIR: &str = "rootfs-upper";
const WORK_DIR: &str = "rootfs-work";

/// How the layers are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// overlayfs, falling back to a copy when the mount fails.
    #[default]
    Auto,
    /// overlayfs only: failing to mount is an error.
    Overlay,
    /// Always copy (no overlayfs).
    Copy,
}

/// Options for [`Rootfs::assemble`].
#[derive(Debug, Clone, Default)]
pub struct RootfsOptions {
    /// How the layers are combined.
    pub mode: RootfsMode,
    /// Mount the root filesystem read-only (overlay without an upper directory; a copy is
    /// bind-mounted read-only over itself).
    pub readonly: bool,
}

/// How a root filesystem was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsKind {
    /// An overlay mount over the layer directories.
    Overlay,
    /// A private copy of the layers.
    Copy,
}

/// What was assembled, persisted beside the root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    kind: RootfsKind,
    readonly: bool,
    layers: Vec<PathBuf>,
}

/// Why a root filesystem could not be assembled or torn down.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A filesystem operation failed.
    #[error("rootfs: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A layer directory is missing or not a directory.
    #[error("rootfs: layer directory {path} is missing or not a directory")]
    MissingLayer { path: PathBuf },
    /// The container directory already holds a root filesystem.
    #[error("rootfs: {path} already holds a root filesystem; tear it down first")]
    AlreadyAssembled { path: PathBuf },
    /// The overlay mount failed (and the mode did not allow a copy instead).
    #[error("rootfs: cannot mount overlay of {layers} layers on {target}: {source}")]
    Mount {
        target: PathBuf,
        layers: usize,
        source: io::Error,
    },
    /// The overlay mount options do not fit in a page (too many or too long layer paths).
    #[error(
        "rootfs: overlay options for {layers} layers are {len} bytes, over the kernel's limit"
    )]
    TooManyLayers { layers: usize, len: usize },
    /// Unmounting failed even lazily.
    #[error("rootfs: cannot unmount {path}: {source}")]
    Unmount { path: PathBuf, source: io::Error },
    /// The root filesystem is still a mount point after unmounting; nothing was removed.
    #[error("rootfs: {path} is still mounted; not removing it")]
    StillMounted { path: PathBuf },
    /// Copying a layer failed.
    #[error("rootfs: cannot copy {entry} of layer {layer}: {source}")]
    Copy {
        layer: PathBuf,
        entry: PathBuf,
        source: io::Error,
    },
    /// The state file is unreadable.
    #[error("rootfs: bad state file {path}: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// An assembled root filesystem. Dropping it tears it down unless [`Rootfs::keep`] was
/// called.
#[derive(Debug)]
pub struct Rootfs {
    container_dir: PathBuf,
    path: PathBuf,
    kind: RootfsKind,
    readonly: bool,
    armed: bool,
}

impl Rootfs {
    /// Assembles the root filesystem of `layers` (extracted layer directories, **bottom
    /// first**, the order of an image manifest) in `container_dir` (created if missing).
    ///
    /// # Errors
    /// See [`RootfsError`]; on error nothing assembled is left behind.
    pub fn assemble(
        layers: &[impl AsRef<Path>],
        container_dir: &Path,
        opts: &RootfsOptions,
    ) -> Result<Rootfs, RootfsError> {
        let layers: Vec<PathBuf> = layers.iter().map(|l| l.as_ref().to_owned()).collect();
        for layer in &layers {
            if !fs::symlink_metadata(layer).is_ok_and(|m| m.is_dir()) {
                return Err(RootfsError::MissingLayer {
                    path: layer.clone(),
                });
            }
        }
        fs::create_dir_all(container_dir).map_err(io_err("create", container_dir))?;
        let state_path = container_dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(RootfsError::AlreadyAssembled {
                path: container_dir.to_owned(),
            });
        }
        let path = container_dir.join(ROOTFS_DIR);
        // Armed from here: any error below tears down what was started.
        let mut rootfs = Rootfs {
            container_dir: container_dir.to_owned(),
            path: path.clone(),
            kind: RootfsKind::Copy,
            readonly: opts.readonly,
            armed: true,
        };
        let use_overlay = match opts.mode {
            RootfsMode::Copy => false,
            RootfsMode::Overlay => true,
            // overlayfs needs at least one lower layer.
            RootfsMode::Auto => !layers.is_empty() && overlay::available(),
        };
        if use_overlay {
            write_state(&state_path, RootfsKind::Overlay, opts.readonly, &layers)?;
            match overlay::mount(&layers, container_dir, &path, opts.readonly) {
                Ok(()) => {
                    rootfs.kind = RootfsKind::Overlay;
                    return Ok(rootfs);
                }
                Err(e) if opts.mode == RootfsMode::Auto => {
                    tracing::warn!(error = %e, "overlayfs unavailable, copying the layers instead");
                    teardown_dirs(container_dir)?;
                }
                Err(e) => return Err(e),
            }
        }
        write_state(&state_path, RootfsKind::Copy, opts.readonly, &layers)?;
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        copy::merge(&layers, &path)?;
        if opts.readonly {
            overlay::bind_readonly(&path)?;
        }
        Ok(rootfs)
    }

    /// The root filesystem's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container directory it lives in.
    #[must_use]
    pub fn container_dir(&self) -> &Path {
        &self.container_dir
    }

    /// How it was built.
    #[must_use]
    pub fn kind(&self) -> RootfsKind {
        self.kind
    }

    /// Whether it is read-only.
    #[must_use]
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Disarms the teardown on drop and returns the root filesystem's path: from now on the
    /// caller tears it down with [`Rootfs::teardown`] (for example after an agent restart).
    #[must_use = "the root filesystem stays mounted until Rootfs::teardown"]
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        self.path.clone()
    }

    /// Tears this root filesystem down now.
    ///
    /// # Errors
    /// As [`Rootfs::teardown`].
    pub fn destroy(mut self) -> Result<(), RootfsError> {
        self.armed = false;
        Rootfs::teardown(&self.container_dir)
    }

    /// Unmounts (lazily if busy) and removes the root filesystem in `container_dir`, its
    /// upper and work directories and its state file; removes `container_dir` too if that
    /// leaves it empty. Needs nothing but the directory, so it works after a restart, and
    /// does nothing for a directory without a root filesystem.
    ///
    /// # Errors
    /// [`RootfsError::Unmount`] or [`RootfsError::StillMounted`] (then nothing is removed),
    /// or [`RootfsError::Io`].
    pub fn teardown(container_dir: &Path) -> Result<(), RootfsError> {
        let path = container_dir.join(ROOTFS_DIR);
        overlay::unmount_all(&path)?;
        teardown_dirs(container_dir)?;
        remove_file(&container_dir.join(STATE_FILE))?;
        // Only if empty: the container directory belongs to the caller.
        let _ = fs::remove_dir(container_dir);
        Ok(())
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = Rootfs::teardown(&self.container_dir) {
                tracing::error!(error = %e, dir = %self.container_dir.display(), "rootfs teardown failed");
            }
        }
    }
}

fn write_state(
    path: &Path,
    kind: RootfsKind,
    readonly: bool,
    layers: &[PathBuf],
) -> Result<(), RootfsError> {
    let state = State {
        version: STATE_VERSION,
        kind,
        readonly,
        layers: layers.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|source| RootfsError::State {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("write", path))
}

/// Removes the rootfs, upper and work directories (never while mounted).
fn teardown_dirs(container_dir: &Path) -> Result<(), RootfsError> {
    let rootfs = container_dir.join(ROOTFS_DIR);
    if overlay::is_mount_point(&rootfs) {
        return Err(RootfsError::StillMounted { path: rootfs });
    }
    for dir in [ROOTFS_DIR, UPPER_DIR, WORK_DIR] {
        let dir = container_dir.join(dir);
        // remove_dir_all never follows symlinks, so a container's symlinks cannot aim it
        // elsewhere (std's fix for CVE-2022-21658).
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &dir)(e)),
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), RootfsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}
