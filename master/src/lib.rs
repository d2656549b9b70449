//! The master library.
