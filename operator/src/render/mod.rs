//! What the operator generates for an AccessPolicy, as pure functions of the
//! policy, what was read from the cluster, and the operator's settings.
//!
//! The controller fetches ([`observed`]), calls [`plan::plan`], and applies
//! the result; nothing in here talks to the API server, so every rule is
//! unit-tested and the output is pinned by golden files.

pub mod config;
pub mod meta;
pub mod network;
pub mod observed;
pub mod plan;
pub mod rbac;
pub mod targets;

#[cfg(test)]
mod tests;
