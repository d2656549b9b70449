//! Images and bundles.

pub mod digest;
pub mod extract;
pub mod import;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod spec;
pub mod store;
