//! When to issue new webhook certificates: a pure decision over times.
//!
//! Certificates are renewed at two thirds of their life, so a failure to
//! renew leaves a third of the lifetime (a month for the serving certificate)
//! to notice and fix it before the API server stops calling the webhooks.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Lifetimes of the certificates the operator issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Validity of the CA.
    pub ca: Duration,
    /// Validity of the serving certificate.
    pub serving: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            ca: Duration::from_secs(5 * 365 * 24 * 3600),
            serving: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// How far back `notBefore` is set, so nodes with a slow clock accept a
/// certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Validity period of one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
}

impl Validity {
    /// The moment to renew: two thirds into the validity period.
    pub fn renew_at(&self) -> Timestamp {
        let life = self.not_after.duration_since(self.not_before);
        self.not_before + life * 2 / 3
    }

    /// Whether the certificate is valid at `now`.
    pub fn covers(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// What the stored certificates look like, as far as renewal is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The current CA.
    pub ca: Validity,
    /// The serving certificate.
    pub serving: Validity,
    /// The serving certificate names exactly the webhook Service's DNS names.
    pub names_match: bool,
    /// The serving certificate was signed by the current CA.
    pub signed_by_ca: bool,
}

/// What to do with the stored certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing stored (or nothing usable): a new CA and serving certificate.
    Create,
    /// The CA is due: a new CA (the old one stays trusted until it expires)
    /// and a serving certificate from it.
    RotateCa,
    /// The serving certificate is due or wrong: a new one from the same CA.
    IssueServing,
    /// Everything is fine until `until`.
    Keep {
        /// When the next renewal is due.
        until: Timestamp,
    },
}

/// Decides what to do at `now` with what is stored (`None`: nothing, or
/// something that cannot be read).
pub fn decide(now: Timestamp, observed: Option<&Observed>) -> Action {
    let Some(o) = observed else {
        return Action::Create;
    };
    if !o.ca.covers(now) {
        return Action::Create;
    }
    if now >= o.ca.renew_at() {
        return Action::RotateCa;
    }
    if !o.serving.covers(now) || now >= o.serving.renew_at() || !o.names_match || !o.signed_by_ca {
        return Action::IssueServing;
    }
    Action::Keep {
        until: o.serving.renew_at().min(o.ca.renew_at()),
    }
}

/// Validity of a certificate issued at `now` for `life`, never beyond
/// `cap` (a serving certificate must not outlive its CA).
pub fn validity_from(now: Timestamp, life: Duration, cap: Option<Timestamp>) -> Validity {
    let backdate = SignedDuration::try_from(BACKDATE).unwrap_or(SignedDuration::ZERO);
    let life = SignedDuration::try_from(life).unwrap_or(SignedDuration::MAX);
    let not_after = now.saturating_add(life).unwrap_or(Timestamp::MAX);
    Validity {
        not_before: now.saturating_sub(backdate).unwrap_or(Timestamp::MIN),
        not_after: cap.map_or(not_after, |c| not_after.min(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn v(nb: &str, na: &str) -> Validity {
        Validity {
            not_before: t(nb),
            not_after: t(na),
        }
    }

    fn observed() -> Observed {
        Observed {
            ca: v("2026-01-01T00:00:00Z", "2031-01-01T00:00:00Z"),
            serving: v("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z"),
            names_match: true,
            signed_by_ca: true,
        }
    }

    #[test]
    fn nothing_stored_means_create() {
        assert_eq!(decide(t("2026-01-02T00:00:00Z"), None), Action::Create);
    }

    #[test]
    fn fresh_certificates_are_kept_until_two_thirds_of_the_serving_life() {
        let o = observed();
        // 90 days from Jan 1 is Apr 1; two thirds is 60 days: Mar 2.
        assert_eq!(
            decide(t("2026-01-02T00:00:00Z"), Some(&o)),
            Action::Keep {
                until: t("2026-03-02T00:00:00Z")
            }
        );
        assert_eq!(
            decide(t("2026-03-01T23:59:59Z"), Some(&o)),
            Action::Keep {
                until: t("2026-03-02T00:00:00Z")
            }
        );
        assert_eq!(
            decide(t("2026-03-02T00:00:00Z"), Some(&o)),
            Action::IssueServing
        );
    }

    #[test]
    fn expired_or_foreign_serving_certificates_are_reissued() {
        let o = observed();
        assert_eq!(
            decide(t("2026-05-01T00:00:00Z"), Some(&o)),
            Action::IssueServing
        );
        let renamed = Observed {
            names_match: false,
            ..o.clone()
        };
        assert_eq!(
            decide(t("2026-01-02T00:00:00Z"), Some(&renamed)),
            Action::IssueServing
        );
        let foreign = Observed {
            signed_by_ca: false,
            ..o.clone()
        };
        assert_eq!(
            decide(t("2026-01-02T00:00:00Z"), Some(&foreign)),
            Action::IssueServing
        );
        let not_yet = Observed {
            serving: v("2026-02-01T00:00:00Z", "2026-05-01T00:00:00Z"),
            ..o
        };
        assert_eq!(
            decide(t("2026-01-02T00:00:00Z"), Some(&not_yet)),
            Action::IssueServing
        );
    }

    #[test]
    fn the_ca_rotates_at_two_thirds_of_its_life_and_before_it_expires() {
        let o = observed();
        // Five years from 2026-01-01 are 1826 days; two thirds (1217 days
        // and 8 hours) end on 2029-05-02.
        let due = o.ca.renew_at();
        assert_eq!(due, t("2029-05-02T08:00:00Z"));
        let fresh_serving = Observed {
            serving: v("2029-03-20T00:00:00Z", "2029-06-18T00:00:00Z"),
            ..o.clone()
        };
        assert!(matches!(
            decide(t("2029-04-01T00:00:00Z"), Some(&fresh_serving)),
            Action::Keep { until } if until == fresh_serving.serving.renew_at().min(due)
        ));
        assert_eq!(decide(due, Some(&fresh_serving)), Action::RotateCa);
        assert_eq!(
            decide(t("2031-01-01T00:00:00Z"), Some(&fresh_serving)),
            Action::Create
        );
    }

    #[test]
    fn serving_validity_never_outlives_the_ca() {
        let now = t("2026-01-01T00:00:00Z");
        let v = validity_from(
            now,
            Duration::from_secs(90 * 86400),
            Some(t("2026-02-01T00:00:00Z")),
        );
        assert_eq!(v.not_before, t("2025-12-31T23:00:00Z"));
        assert_eq!(v.not_after, t("2026-02-01T00:00:00Z"));
    }
}
