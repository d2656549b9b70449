//! `cairn-master`: the control plane. It elects a leader (through ZooKeeper, or standalone),
//! keeps the registry of agents, and shares resources among frameworks through offers,
//! speaking Apache Mesos's v1 scheduler and operator HTTP APIs.
//!
//! This first slice holds the registry and its standalone, on-disk store ([`registry`]);
//! the agent and framework managers, the allocator and the APIs follow (issue 6).

pub mod allocator;
pub mod config;
pub mod core;
pub mod credentials;
pub use cairn_durable as durable;
pub mod election;
pub mod http;
pub mod leadership;
pub mod metrics;
pub mod registry;
pub mod zk_registry;
