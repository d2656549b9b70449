//! Isolators: what keeps a container to what it asked for, measures what it uses, and says
//! why it was stopped when it hits a hard limit.
//!
//! The contract follows Mesos's isolators (`src/slave/containerizer/mesos/isolator.hpp`),
//! written in Rust: see [`Isolator`]. Isolators never fork and never run the container; they
//! describe what they need in [`Preparation`] (cgroup settings, mounts, environment) and the
//! containerizer merges those descriptions and renders them into the OCI spec. Isolators are
//! chosen by name in the agent config (`cgroups/mem`, `disk/du`, ...).

pub mod cgroups;
pub mod disk;
pub mod isolator;
pub mod registry;

pub use isolator::{
    ContainerLimits, Isolator, IsolatorError, Limitation, Preparation, RecoveredContainer,
    ResourceStatistics,
};
