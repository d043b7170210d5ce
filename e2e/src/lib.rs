//! Helpers shared by the end-to-end tests.
//!
//! Suites that need outside resources (a Kubernetes cluster, network
//! namespaces) skip with a clear message where those are missing, and fail
//! instead when the matching `CARDGATE_E2E_REQUIRE_*` variable is `1`, so CI
//! cannot pass by skipping.

pub mod cluster;
pub mod controlplane;
pub mod netns;
pub mod operator;
pub mod pg;

use std::path::PathBuf;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the environment variable is set to `1`.
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Skips the calling test (returns `false`) with `why`, or panics when `var`
/// requires the resource.
pub fn skip_or_fail(var: &str, why: &str) -> bool {
    if required(var) {
        panic!("{why}, and {var}=1 requires it");
    }
    eprintln!("SKIPPED: {why} (set {var}=1 to make this a failure)");
    false
}
