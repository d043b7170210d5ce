//! Contracts that the cardgate operator and sidecar must agree on.
//!
//! Two processes built at different times read and write these shapes, so they
//! live in one crate that both depend on:
//!
//! - [`v1alpha1`]: the three custom resources (AccessPolicy, MaskingRule,
//!   ApprovalRequest) that users `kubectl apply` and the operator reconciles;
//! - [`config`]: the sidecar configuration file that the operator renders and
//!   the sidecar loads (also written by hand for standalone mode);
//! - [`audit`]: the audit record and the hash chain that makes it tamper-evident;
//! - [`detect`]: the built-in card-data detector the masking engine and the
//!   evidence engine share;
//! - [`evidence`]: verification of exported audit logs for assessors;
//! - [`pod`]: names, paths and ports the operator's injection and the
//!   sidecar must agree on;
//! - [`validation`]: one error type that names every problem with its path.

#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod config;
pub mod detect;
pub mod evidence;
pub mod glob;
pub mod pod;
pub mod summary;
pub mod v1alpha1;
pub mod validation;

/// API group of every cardgate custom resource.
pub const GROUP: &str = "cardgate.dev";
/// API version of the custom resources in this crate.
pub const VERSION: &str = "v1alpha1";
