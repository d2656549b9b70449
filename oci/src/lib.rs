//! Images and bundles.
