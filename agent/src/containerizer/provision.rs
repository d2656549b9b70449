//! Provisioning: the image (from the local store, else pulled), its layers extracted once
//! into the shared [`LayerCache`], and the plan for the container's root filesystem, which
//! its supervisor assembles in the bundle directory inside its own mount namespace. A task
//! without an image gets a read-only bind of the host's root filesystem instead (Mesos
//! command tasks run on the host filesystem).

use std::fs;
use std::path::{Path, PathBuf};

use cairn_oci::extract::LayerCache;
use cairn_oci::reference::Reference;
use cairn_oci::registry::{Puller, RegistryConfig};
use cairn_oci::rootfs::{Rootfs, RootfsMode, RootfsOptions};
use cairn_oci::store::{Image, Store};
use rustix::mount::{MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use super::types::Termination;

pub mod pulls;

/// The root filesystem directory in a bundle (as `oci::rootfs` lays it out).
pub const ROOTFS_DIR: &str = "rootfs";
/// Marks a bundle whose root filesystem is the host's (read-only bind of `/`).
const HOST_MARKER: &str = "host-rootfs";

/// Finds `image` in the store, pulling it when a registry is configured.
pub fn image(
    store: &Store,
    registry: Option<&RegistryConfig>,
    image: &str,
) -> Result<Image, Termination> {
    let reference = Reference::parse(image)
        .map_err(|e| Termination::invalid(format!("invalid image reference {image:?}: {e}")))?;
    match store.image(&reference) {
        Ok(Some(found)) => return Ok(found),
        Ok(None) => {}
        Err(e) => {
            return Err(Termination::launch_failed(format!(
                "image {reference}: {e}"
            )))
        }
    }
    let Some(config) = registry else {
        return Err(Termination::launch_failed(format!(
            "image {reference} is not in the local store and pulls are disabled"
        )));
    };
    let puller = Puller::new(store.clone(), config.clone())
        .map_err(|e| Termination::launch_failed(format!("pull {reference}: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Termination::launch_failed(format!("pull {reference}: {e}")))?;
    let (progress, _pull) = pulls::track(&reference.to_string());
    rt.block_on(puller.ensure(&reference, &progress))
        .map(|p| p.image)
        .map_err(|e| Termination::launch_failed(format!("failed to pull image {reference}: {e}")))
}

/// How a container's root filesystem is assembled. The agent decides it (extracting the
/// image's layers into the shared cache); the container's supervisor carries it out in its own
/// mount namespace ([`RootfsPlan::assemble`]), so the node's mount table does not grow with
/// every container: a table of a thousand overlay mounts made each launch read it (libcontainer
/// reads `/proc/self/mountinfo` many times per container on cgroup v1) and copy it (a new
/// mount namespace copies every mount), and launches slowed down as containers accumulated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootfsPlan {
    /// A read-only bind of the host's root filesystem (a task without an image).
    Host,
    /// The image's extracted layers, bottom first, combined as `mode` says.
    Image {
        /// The image reference, for error messages.
        image: String,
        layers: Vec<PathBuf>,
        mode: RootfsMode,
    },
}

impl RootfsPlan {
    /// Assembles the root filesystem at `<bundle>/rootfs`, in the caller's mount namespace;
    /// returns its path. Nothing is left mounted on error.
    pub fn assemble(&self, bundle: &Path) -> Result<PathBuf, String> {
        match self {
            RootfsPlan::Host => host_rootfs(bundle),
            RootfsPlan::Image {
                image,
                layers,
                mode,
            } => {
                let opts = RootfsOptions {
                    mode: *mode,
                    readonly: false,
                };
                Rootfs::assemble(layers, bundle, &opts)
                    .map(Rootfs::keep)
                    .map_err(|e| format!("image {image}: {e}"))
            }
        }
    }
}

/// Extracts `image`'s layers (cached); returns the plan for its root filesystem.
pub fn image_plan(
    layers: &LayerCache,
    image: &Image,
    mode: RootfsMode,
) -> Result<RootfsPlan, Termination> {
    let mut dirs = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let dir = layers
            .extract(&layer.path, &layer.media_type, &layer.digest.to_string())
            .map_err(|e| {
                Termination::launch_failed(format!(
                    "image {}: layer {}: {e}",
                    image.reference, layer.digest
                ))
            })?;
        dirs.push(dir);
    }
    Ok(RootfsPlan::Image {
        image: image.reference.to_string(),
        layers: dirs,
        mode,
    })
}

/// The plan for a task without an image; marks `bundle` (created here) as holding the host's
/// root filesystem, so [`teardown`] knows what it finds there even after a restart.
pub fn host_plan(bundle: &Path) -> Result<RootfsPlan, Termination> {
    let fail = |op: &str, e: std::io::Error| {
        Termination::launch_failed(format!("host root filesystem: {op}: {e}"))
    };
    fs::create_dir_all(bundle).map_err(|e| fail("create", e))?;
    fs::write(bundle.join(HOST_MARKER), b"").map_err(|e| fail("mark", e))?;
    Ok(RootfsPlan::Host)
}

/// Binds the host's root filesystem (that mount only, not the ones below it: those would
/// include every other container's root filesystem) at `<bundle>/rootfs`, privately; the
/// spec then mounts it read-only.
fn host_rootfs(bundle: &Path) -> Result<PathBuf, String> {
    let fail = |op: &str, e: std::io::Error| format!("host root filesystem: {op}: {e}");
    let path = bundle.join(ROOTFS_DIR);
    fs::create_dir_all(&path).map_err(|e| fail("create", e))?;
    rustix::mount::mount_bind("/", &path).map_err(|e| fail("bind /", e.into()))?;
    if let Err(e) = rustix::mount::mount_change(&path, MountPropagationFlags::PRIVATE) {
        let _ = rustix::mount::unmount(&path, UnmountFlags::DETACH);
        return Err(fail("make private", e.into()));
    }
    Ok(path)
}

/// Tears down whatever root filesystem `bundle` holds (image or host), then the bundle.
/// Idempotent; works from the directory alone (after a restart).
pub fn teardown(bundle: &Path) -> Result<(), String> {
    if bundle.join(HOST_MARKER).exists() {
        let path = bundle.join(ROOTFS_DIR);
        if is_mount_point(&path) {
            rustix::mount::unmount(&path, UnmountFlags::DETACH)
                .map_err(|e| format!("unmount {}: {e}", path.display()))?;
        }
        let _ = fs::remove_dir(&path);
    } else {
        Rootfs::teardown(bundle).map_err(|e| e.to_string())?;
    }
    match fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", bundle.display()))
        }
        _ => Ok(()),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's, or it is listed in
/// the mount table: a bind of the same filesystem keeps the device).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| unescape(m) == target)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}
