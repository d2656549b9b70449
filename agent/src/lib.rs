//! `cairn-agent`: the node daemon. It measures what the node really has, runs tasks as OCI
//! containers under isolation, keeps them running across its own restarts, and reports to the
//! leading master.
//!
//! - [`capacity`]: what the node really has;
//! - [`containerizer`]: runs each task in a container through its state machine;
//! - [`supervisor`]: the per-container process that outlives the agent;
//! - [`checkpoint`]: typed, versioned, atomic state for recovery after a restart;
//! - [`launch`]: `cairn-agent launch`, one task in the foreground for SREs.
//!
//! The master connection and the HTTP API follow (issue 5).

pub mod capacity;
pub mod checkpoint;
pub mod containerizer;
pub mod http;
pub mod launch;
pub mod supervisor;
