//! `cairn-agent`: the node daemon. It measures what the node really has, runs tasks as OCI
//! containers under isolation, keeps them running across its own restarts, and reports to the
//! leading master.
//!
//! This first slice holds capacity measurement ([`capacity`]); the containerizer, checkpointing,
//! the master connection and the HTTP API follow (issue 5).

pub mod capacity;
