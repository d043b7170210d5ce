//! The cardgate operator: turns AccessPolicies into governed agent pods and
//! records human decisions on ApprovalRequests. Also home of the
//! `kubectl-cardgate` plugin used by approvers and auditors.

pub mod inject;
pub mod tls;
pub mod webhook;
