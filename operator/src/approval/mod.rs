//! ApprovalRequests on the operator's side: the admission rules
//! ([`admission`]), the phase as a function of reviews, sidecar reports and
//! the clock ([`lifecycle`]), announcements to a chat webhook ([`notify`])
//! and the approver's commands of `kubectl cardgate` ([`cli`]). The webhook
//! handlers live in [`crate::webhook::approvals`], the reconciler in
//! [`crate::controller::approval_request`].

pub mod admission;
pub mod cli;
pub use cardgate_crds::approval as lifecycle;
pub mod notify;
