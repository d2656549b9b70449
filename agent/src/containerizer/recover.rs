//! Recovery after an agent restart (Mesos's `MesosContainerizer::recover`): containers whose
//! supervisor still runs are re-adopted; containers that ended meanwhile are reported with
//! the status their supervisor recorded; launches cut short are destroyed; orphans (runtime
//! state or bundles no checkpoint knows) are removed. A checkpoint that cannot be read is
//! moved to `meta/quarantine/` and named in [`Recovery::quarantined`]: that container is left
//! alone and every other one is served.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

use cairn_api::{ContainerId, Reason, TaskId, TaskState};
use cairn_isolators::{ContainerLimits, RecoveredContainer};

use super::{lock, provision, ContainerState, ContainerizerError, Entry, Inner, Termination};
use crate::checkpoint::{self, ContainerCheckpoint};

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Containers still running, re-adopted with their supervisors.
    pub adopted: Vec<(ContainerId, TaskId)>,
    /// Containers whose task ended while the agent was down (or before its terminal update
    /// was acknowledged), with how.
    pub terminated: Vec<(ContainerId, TaskId, Termination)>,
    /// Containers whose checkpoint could not be read: the id and the error naming the file.
    pub quarantined: Vec<(ContainerId, String)>,
    /// Orphans removed: runtime containers and bundles no checkpoint knew.
    pub orphans: Vec<String>,
}

fn insert(inner: &Inner, record: ContainerCheckpoint) {
    lock(&inner.containers).insert(
        record.container_id.clone(),
        Entry {
            record,
            limitation: None,
            last_watch: vec![Instant::now(); inner.isolators.len()],
            destroying: false,
        },
    );
}

pub(super) fn recover(inner: &Arc<Inner>) -> Result<Recovery, ContainerizerError> {
    let mut recovery = Recovery::default();
    let meta = inner.layout.containers_meta();
    let mut records = Vec::new();
    let mut quarantined_ids = Vec::new();
    let entries = fs::read_dir(&meta).map_err(super::io_err("list", &meta))?;
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let id = ContainerId::new(name);
        let _ = checkpoint::durable::remove_stale_temps(&entry.path());
        match checkpoint::read::<ContainerCheckpoint>(&inner.layout.container_file(&id)) {
            Ok(Some(record)) => records.push(record),
            // Crashed before the first checkpoint: nothing was started.
            Ok(None) => {
                let _ = fs::remove_dir_all(entry.path());
            }
            Err(e) => {
                tracing::error!(container = %id, error = %e, "quarantining container");
                let target = inner.layout.quarantine().join(id.as_str());
                let _ = fs::create_dir_all(inner.layout.quarantine());
                let _ = fs::remove_dir_all(&target);
                if let Err(mv) = fs::rename(entry.path(), &target) {
                    tracing::error!(container = %id, error = %mv, "cannot move to quarantine");
                }
                quarantined_ids.push(id.clone());
                recovery.quarantined.push((id, e.to_string()));
            }
        }
    }

    // Isolators re-attach to every container not yet cleaned up, and to quarantined ones so
    // that they are not destroyed as orphans.
    let mut known: Vec<RecoveredContainer> = records
        .iter()
        .filter(|r| r.termination.is_none())
        .map(|r| RecoveredContainer {
            id: r.container_id.clone(),
            limits: r.limits.clone(),
        })
        .collect();
    known.extend(quarantined_ids.iter().map(|id| RecoveredContainer {
        id: id.clone(),
        limits: ContainerLimits::default(),
    }));
    for iso in &inner.isolators {
        iso.recover(&known)?;
    }

    let mut ids: HashSet<String> = quarantined_ids.iter().map(|i| i.value.clone()).collect();
    ids.extend(records.iter().map(|r| r.container_id.value.clone()));
    for record in records {
        let id = record.container_id.clone();
        let task = record.task_id.clone();
        if let Some(t) = record.termination.clone() {
            insert(inner, record);
            recovery.terminated.push((id, task, t));
            continue;
        }
        // Watched before the check, so an exit between the two is reported.
        inner.watch_exit(&id);
        let exited = inner.layout.exit_file(&id).exists();
        let supervised = record.supervisor.is_some_and(|s| s.is_alive());
        let state = record.state;
        insert(inner, record);
        match state {
            ContainerState::Running if !exited && supervised => {
                recovery.adopted.push((id, task));
                continue;
            }
            ContainerState::Running | ContainerState::Destroying if exited || !supervised => {
                inner.finish(&id);
            }
            _ => {
                // A launch the restart cut short: its supervisor (if any) gets end of file
                // instead of `start` and deletes the container.
                inner.destroy(
                    &id,
                    Termination {
                        state: TaskState::Failed,
                        reason: Some(Reason::AgentRestarted),
                        message: format!("the agent restarted while the container was {state}"),
                        exit: None,
                    },
                );
            }
        }
        if let Some(t) = lock(&inner.containers)
            .get(&id)
            .and_then(|e| e.record.termination.clone())
        {
            recovery.terminated.push((id, task, t));
        }
    }

    // Orphans: runtime containers and bundles without a checkpoint.
    for orphan in inner.runtime.list().unwrap_or_default() {
        if ids.contains(&orphan) {
            continue;
        }
        if let Ok(c) = inner.runtime.load(&orphan) {
            let _ = c.delete(true);
        }
        recovery.orphans.push(format!("runtime container {orphan}"));
    }
    if let Ok(dirs) = fs::read_dir(inner.layout.bundles()) {
        for dir in dirs.filter_map(Result::ok) {
            let name = dir.file_name().to_string_lossy().into_owned();
            if ids.contains(&name) {
                continue;
            }
            match provision::teardown(&dir.path()) {
                Ok(()) => recovery.orphans.push(format!("bundle {name}")),
                Err(e) => tracing::warn!(bundle = %name, error = %e, "orphan teardown failed"),
            }
        }
    }
    Ok(recovery)
}
