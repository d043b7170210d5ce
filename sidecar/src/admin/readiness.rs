//! Readiness as a set of named conditions.
//!
//! Kubernetes stops routing to a pod whose `/readyz` fails; for the sidecar
//! that means "do not start the agent against a proxy that would refuse
//! everything". Each part of the process owns one condition: flags it flips
//! (configuration loaded, listeners bound) and probes evaluated on request
//! (the audit trail's health).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

type Probe = Box<dyn Fn() -> bool + Send + Sync>;

enum Check {
    Flag(Arc<AtomicBool>),
    Probe(Probe),
}

/// Named readiness conditions; ready when all hold. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(&'static str, Check)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

/// A condition its owner flips; starts false.
#[derive(Clone, Debug)]
pub struct ReadyFlag {
    value: Arc<AtomicBool>,
}

impl ReadyFlag {
    /// Sets the condition.
    pub fn set(&self, ready: bool) {
        self.value.store(ready, Ordering::Release);
    }
}

impl Readiness {
    /// No conditions yet (ready until some are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition named `name` (e.g. `config`, `listeners`), initially
    /// not met, and returns the handle that flips it.
    pub fn flag(&self, name: &'static str) -> ReadyFlag {
        let value = Arc::new(AtomicBool::new(false));
        self.push(name, Check::Flag(value.clone()));
        ReadyFlag { value }
    }

    /// Adds a condition evaluated on every readiness request (e.g. `audit`:
    /// `move || log.healthy()`).
    pub fn probe(&self, name: &'static str, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.push(name, Check::Probe(Box::new(probe)));
    }

    fn push(&self, name: &'static str, check: Check) {
        self.checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, check));
    }

    /// Every condition with whether it holds, in the order they were added.
    pub fn status(&self) -> Vec<(&'static str, bool)> {
        self.checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, check)| {
                let ok = match check {
                    Check::Flag(v) => v.load(Ordering::Acquire),
                    Check::Probe(p) => p(),
                };
                (*name, ok)
            })
            .collect()
    }

    /// Whether every condition holds.
    pub fn ready(&self) -> bool {
        self.status().iter().all(|(_, ok)| *ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let r = Readiness::new();
        let config = r.flag("config");
        let audit = Arc::new(AtomicBool::new(true));
        let a = audit.clone();
        r.probe("audit", move || a.load(Ordering::Acquire));
        assert!(!r.ready());
        config.set(true);
        assert!(r.ready());
        audit.store(false, Ordering::Release);
        assert_eq!(r.status(), vec![("config", true), ("audit", false)]);
        assert!(!r.ready());
    }
}
