//! Pulling images with the Registry HTTP API v2.
