//! Isolators.
