//! `cairn-agent`: the node daemon. It measures what the node really has, runs tasks as OCI
//! containers under isolation, keeps them running across its own restarts, and reports to the
//! leading master.
//!
//! - [`capacity`]: what the node really has;
//! - [`containerizer`]: runs each task in a container through its state machine;
//! - [`supervisor`]: the per-container process that outlives the agent;
//! - [`checkpoint`]: typed, versioned, atomic state for recovery after a restart;
//! - [`launch`]: `cairn-agent launch`, one task in the foreground for SREs;
//! - [`config`]: the daemon's settings (file, `CAIRN_*` variables, flags);
//! - [`status`]: checkpointed, acknowledged, in-order status updates;
//! - [`master_link`]: registration, the event stream, heartbeats, resends;
//! - [`daemon`]: wires it all and runs until a signal;
//! - [`http`]: the agent's HTTP API.

pub mod capacity;
pub mod checkpoint;
pub mod config;
pub mod containerizer;
pub mod daemon;
pub mod http;
pub mod launch;
pub mod master_link;
pub mod status;
pub mod supervisor;
