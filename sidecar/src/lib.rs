//! The cardgate sidecar: the agent's only path to cardholder-data services.
//!
//! It authenticates each agent, holds the real credential, decides every
//! statement against the AccessPolicy, masks card data in everything it
//! returns or writes, and keeps a tamper-evident audit trail.

#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
pub mod audit;
pub mod gate;
pub mod identity;
pub mod intercept;
pub mod masking;
pub mod policy;
pub mod postgres;
pub mod recording;
pub mod runtime;
