//! Shared helpers for the end-to-end tests: temporary nodes, child processes, fault injection.
