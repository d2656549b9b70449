//! Real services for Cairn's integration tests.
//!
//! Every service here is a real program from Debian (ZooKeeper, `docker-registry`,
//! Prometheus, QEMU) started on loopback on free ports, owned by a guard that stops it and
//! removes its files when the guard drops, also when the test panics. When a test fails, the
//! service's directory (with its log) is kept and its path printed, so the failure can be read.
//!
//! Tests that need a service call [`require_root`] or [`require_command`] first: those print a
//! reason and return `false` on a machine that cannot run them, so developers without root still
//! get a green unit-test run, while CI (root, everything installed by `scripts/setup`) runs all.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

pub mod bins;
pub mod cgroups;
pub mod images;
pub mod netns;
pub mod ports;
pub mod prometheus;
pub mod registry;
pub mod service;
pub mod tls;
pub mod vm;
pub mod zookeeper;

pub use ports::free_port;
pub use service::{require_command, require_root, wait_until, Service, ServiceDir};
