//! The containerizer's side of the isolators: building them from the config, and acting on
//! the limitations they report (Mesos: an isolator's `watch` future resolving makes the
//! containerizer destroy the container, and the limitation becomes the task's reason).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Weak};
use std::time::Duration;

use cairn_api::ContainerId;
use cairn_isolators::registry::IsolatorsConfig;
use cairn_isolators::{Isolator, Limitation};
use nix::sys::signal::Signal;

use super::{lock, ContainerizerConfig, ContainerizerError, Inner};

impl Inner {
    /// An isolator reported `limitation` for the container: the first one for a container
    /// that has not ended is kept (it decides the task's end, see [`Self::finish`]) and the
    /// container is killed; any later one is ignored, so a limitation is acted on once
    /// whether it came as an event or from `watch`.
    pub(super) fn limited(&self, id: &ContainerId, limitation: Limitation) {
        {
            let mut containers = lock(&self.containers);
            let Some(e) = containers.get_mut(id) else {
                tracing::debug!(container = %id, "limitation for an unknown container");
                return;
            };
            if e.limitation.is_some() || e.record.termination.is_some() {
                return;
            }
            tracing::info!(container = %id, message = %limitation.message, "limitation");
            e.limitation = Some(limitation);
        }
        // Mesos: a limitation destroys the container. The monitor sees the exit and finishes.
        self.signal(id, Signal::SIGKILL);
    }
}

/// Builds the configured isolators in order: the `disk/*` ones with [`ContainerizerConfig::disk`]
/// (the registry builds them with defaults), every other one through the registry. Both see
/// `sandboxes` as their work directory, the root of the `<sandboxes>/<container id>` sandboxes
/// the containerizer creates ([`Layout::sandbox`]), which the disk isolators measure.
pub(super) fn build(
    config: &ContainerizerConfig,
    sandboxes: &Path,
) -> Result<Vec<Box<dyn Isolator>>, ContainerizerError> {
    let is_disk = |name: &str| matches!(name.trim(), "disk/du" | "disk/quota");
    let others: Vec<&str> = config
        .isolation
        .iter()
        .map(String::as_str)
        .filter(|n| !is_disk(n))
        .collect();
    // Unknown names fail here, before any disk isolator is built.
    let mut built = cairn_isolators::registry::build(
        &others,
        &IsolatorsConfig {
            cgroups: config.cgroups.clone(),
            work_dir: sandboxes.to_path_buf(),
        },
    )?
    .into_iter();
    // The registry's order and deduplication (a name once, at its first place).
    let mut isolators: Vec<Box<dyn Isolator>> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for name in config.isolation.iter().map(|n| n.trim()) {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let next = match name {
            "disk/du" => cairn_isolators::disk::build_du(sandboxes, &config.disk)?,
            "disk/quota" => cairn_isolators::disk::build_quota(sandboxes, &config.disk)?,
            _ => match built.next() {
                Some(isolator) => isolator,
                None => continue,
            },
        };
        isolators.push(next);
    }
    Ok(isolators)
}

/// Acts on the limitations one isolator pushes, as they arrive, until the containerizer stops.
pub(super) fn limitation_events(
    inner: &Weak<Inner>,
    events: &mpsc::Receiver<(ContainerId, Limitation)>,
) {
    loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok((id, limitation)) => {
                let Some(inner) = inner.upgrade() else { return };
                inner.limited(&id, limitation);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        match inner.upgrade() {
            Some(inner) if !inner.stop.load(Ordering::Acquire) => {}
            _ => return,
        }
    }
}
