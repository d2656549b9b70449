//! Cairn's wire types, shared by every part of the system: ids, resources, task states and
//! reasons (with Apache Mesos's names and numbers), and RecordIO framing.
//!
//! This crate does no I/O. Its JSON shapes follow Mesos's v1 API (`include/mesos/v1/mesos.proto`
//! rendered as JSON), so the master's scheduler and operator APIs can serve existing Mesos
//! frameworks and tools unchanged.

pub mod ids;
pub mod protocol;
pub mod recordio;
pub mod resources;
pub mod task_state;
pub mod v1;

pub use ids::{AgentId, ContainerId, FrameworkId, OfferId, TaskId};
pub use resources::{Range, Resource, ResourceError, Resources};
pub use task_state::{Reason, Source, TaskState};
