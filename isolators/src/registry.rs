//! Isolators by name, as the agent config lists them (`isolation = ["cgroups/cpu",
//! "cgroups/mem"]`), following Mesos's `--isolation` flag. Unknown names are an error that
//! lists the known ones; nothing is built (no cgroup touched) when any name is unknown.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::cgroups::{self, cpu::Cpu, io::Io, memory::Memory, pids::Pids, Cgroups, CgroupsConfig};
use crate::isolator::{Isolator, IsolatorError};

/// What the isolators need from the agent's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IsolatorsConfig {
    /// The cgroup parent and defaults of the `cgroups/*` isolators.
    pub cgroups: CgroupsConfig,
    /// The agent's work directory (container sandboxes), for the `disk/*` isolators.
    pub work_dir: PathBuf,
}

impl Default for IsolatorsConfig {
    fn default() -> Self {
        Self {
            cgroups: CgroupsConfig::default(),
            work_dir: PathBuf::from("/var/lib/cairn"),
        }
    }
}

/// What a builder gets: the config, and the cgroup backend, detected at most once and
/// shared by every cgroup isolator.
#[derive(Debug)]
pub struct Context<'a> {
    pub config: &'a IsolatorsConfig,
    cgroups: OnceLock<Arc<dyn Cgroups>>,
}

impl Context<'_> {
    /// The shared cgroup backend (detected on first use).
    ///
    /// # Errors
    /// No usable cgroup hierarchy on this host.
    pub fn cgroups(&self, isolator: &'static str) -> Result<Arc<dyn Cgroups>, IsolatorError> {
        if let Some(backend) = self.cgroups.get() {
            return Ok(backend.clone());
        }
        let backend =
            cgroups::open(&self.config.cgroups).map_err(|e| IsolatorError::Unsupported {
                isolator,
                problem: e.to_string(),
            })?;
        Ok(self.cgroups.get_or_init(|| backend).clone())
    }
}

/// Builds one isolator.
pub type Builder = fn(&Context<'_>) -> Result<Box<dyn Isolator>, IsolatorError>;

fn cgroup(
    cx: &Context<'_>,
    controller: Box<dyn cgroups::controller::Controller>,
) -> Result<Box<dyn Isolator>, IsolatorError> {
    let backend = cx.cgroups(controller.name())?;
    Ok(Box::new(cgroups::CgroupsIsolator::new(
        backend, controller,
    )?))
}

/// Every isolator by name: one line each. The disk isolators (`src/disk/`) add theirs here,
/// e.g. `("disk/du", |cx| Ok(Box::new(crate::disk::du::DiskDu::new(cx.config)?)))`.
pub const KNOWN: &[(&str, Builder)] = &[
    ("cgroups/cpu", |cx| cgroup(cx, Box::new(Cpu))),
    ("cgroups/mem", |cx| {
        cgroup(
            cx,
            Box::new(Memory {
                oom_group: cx.config.cgroups.oom_group,
            }),
        )
    }),
    ("cgroups/pids", |cx| {
        cgroup(
            cx,
            Box::new(Pids {
                default_limit: cx.config.cgroups.default_pids_limit,
            }),
        )
    }),
    ("cgroups/io", |cx| cgroup(cx, Box::new(Io))),
    ("disk/du", |cx| {
        crate::disk::build_du(&cx.config.work_dir, &Default::default())
    }),
    ("disk/quota", |cx| {
        crate::disk::build_quota(&cx.config.work_dir, &Default::default())
    }),
];

/// The known isolator names, in registry order.
pub fn known() -> Vec<&'static str> {
    KNOWN.iter().map(|(name, _)| *name).collect()
}

/// Builds the isolators named in `names`, in that order (duplicates once, at their first
/// place), the order the containerizer prepares them in and cleans them up in reverse.
///
/// # Errors
/// [`IsolatorError::UnknownIsolator`] for a name not in [`KNOWN`] (checked before anything is
/// built), or the first isolator that cannot run on this host.
pub fn build<S: AsRef<str>>(
    names: &[S],
    config: &IsolatorsConfig,
) -> Result<Vec<Box<dyn Isolator>>, IsolatorError> {
    let mut builders: Vec<(&str, Builder)> = Vec::new();
    for name in names {
        let name = name.as_ref().trim();
        let Some(&(known_name, builder)) = KNOWN.iter().find(|(n, _)| *n == name) else {
            return Err(IsolatorError::UnknownIsolator(
                name.to_string(),
                known().join(", "),
            ));
        };
        if !builders.iter().any(|(n, _)| *n == known_name) {
            builders.push((known_name, builder));
        }
    }
    let cx = Context {
        config,
        cgroups: OnceLock::new(),
    };
    builders
        .into_iter()
        .map(|(_, builder)| builder(&cx))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = build(&["cgroups/cpu", "cgroups/gpu"], &IsolatorsConfig::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"cgroups/gpu\""), "{text}");
        for name in ["cgroups/cpu", "cgroups/mem", "cgroups/pids", "cgroups/io"] {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn no_names_no_isolators() {
        let none: &[&str] = &[];
        assert!(build(none, &IsolatorsConfig::default()).unwrap().is_empty());
    }
}
