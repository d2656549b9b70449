//! Images and bundles.

pub mod spec;
