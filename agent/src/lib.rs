//! The agent library.
