//! The cardgate operator: turns AccessPolicies into governed agent pods and
//! records human decisions on ApprovalRequests. Also home of the
//! `kubectl-cardgate` plugin used by approvers and auditors.

#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod collector_ca;
pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod preflight;
pub mod render;
pub mod runtime;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod webhook;
