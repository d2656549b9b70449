//! OCI runtime bundles: `config.json` rendered from an image configuration and the
//! container's own [`ContainerSettings`].
//!
//! [`build_spec`] only describes (it reads the rootfs's `/etc/passwd` and `/etc/group`, and
//! checks bind sources exist); [`write_bundle`] writes the result atomically. A bad setting
//! gives [`SpecError::InvalidField`] naming the field, before anything is written.

pub mod caps;
pub mod defaults;
mod render;
pub mod seccomp;
pub mod settings;
pub mod user;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

pub use render::build_spec;
pub use settings::{
    CapabilityChanges, CgroupResources, ContainerSettings, MountSpec, Namespace, Namespaces,
    Rlimit, Seccomp,
};
pub use user::ResolvedUser;

/// The file name of the runtime configuration in a bundle.
pub const CONFIG_FILE: &str = "config.json";

/// Why a bundle could not be described or written.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A setting (or image field) is invalid; `field` names it as in [`ContainerSettings`]
    /// (`image.` prefixes the image configuration's fields).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field, e.g. `hostname`, `mounts[2].destination`, `resources.cpu_shares`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither the image nor the settings give a command.
    #[error("no command: the image has no Entrypoint or Cmd and the settings give none")]
    NoCommand,
    /// oci-spec refused to build a part of the spec.
    #[error("failed to build {what}: {reason}")]
    Build {
        /// The part being built.
        what: &'static str,
        /// oci-spec's message.
        reason: String,
    },
    /// Reading the rootfs or writing the bundle failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The spec could not be serialized.
    #[error("failed to serialize config.json: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Writes `spec` as `<bundle>/config.json`, creating `bundle` if needed. The file is
/// written to a temporary name, synced and renamed, so a reader (or a crash) never sees
/// half a config. Returns the config's path.
pub fn write_bundle(bundle: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| SpecError::Io { op, path, source }
    };
    fs::create_dir_all(bundle).map_err(io_err("create", bundle))?;
    let json = serde_json::to_vec_pretty(spec)?;
    let target = bundle.join(CONFIG_FILE);
    cairn_durable::write_atomic(&target, &json).map_err(io_err("write", &target))?;
    Ok(target)
}
