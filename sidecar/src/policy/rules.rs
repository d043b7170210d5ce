//! The policy decision: ordered rules, first match wins, then
//! `defaultAction`. A pure function of the configuration and one
//! classification.

use cardgate_crds::config::{PolicyName, SidecarConfig};
use cardgate_crds::glob::NamePattern;
use cardgate_crds::v1alpha1::{RuleAction, StatementClass};

use super::classify::Classification;

/// How decisions made by the built-in metadata allowance are labelled.
pub const METADATA_ALLOWANCE: &str = "built-in metadata allowance";

/// Compiled rules of one configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default_action: RuleAction,
}

#[derive(Debug, Clone)]
struct Rule {
    action: RuleAction,
    label: String,
    name: Option<String>,
    targets: Vec<String>,
    classes: Vec<StatementClass>,
    tables: Tables,
    /// Rules with HTTP conditions (methods, paths) never match SQL.
    http_only: bool,
}

#[derive(Debug, Clone)]
enum Tables {
    Any,
    Patterns(Vec<NamePattern>),
    /// A pattern did not compile (only possible for an unvalidated
    /// configuration): the rule fails closed — an allow never matches, a
    /// deny or requireApproval always does.
    Invalid,
}

/// The outcome for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    /// allow, deny or requireApproval.
    pub action: RuleAction,
    /// 0-based index of the deciding rule; `None` = defaultAction.
    pub rule: Option<usize>,
    /// How the decision is named in audit records: "rule 3 (no-ddl)",
    /// "rule 3", "defaultAction", or "built-in metadata allowance".
    pub label: String,
    /// The class of the statement decided.
    pub class: StatementClass,
    /// The deciding rule's name, if it has one.
    pub rule_name: Option<String>,
}

impl Policy {
    /// Compiles the rules of a configuration (already validated).
    pub fn from_config(cfg: &SidecarConfig) -> Policy {
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let m = &r.matches;
                let tables = if m.tables.is_empty() {
                    Tables::Any
                } else {
                    m.tables
                        .iter()
                        .map(|t| NamePattern::parse(t, 2))
                        .collect::<Result<Vec<_>, _>>()
                        .map_or(Tables::Invalid, Tables::Patterns)
                };
                Rule {
                    action: r.action,
                    label: r.display_name(i + 1),
                    name: r.name.clone(),
                    targets: m.targets.clone(),
                    classes: m.classes.clone(),
                    tables,
                    http_only: !m.methods.is_empty() || !m.paths.is_empty(),
                }
            })
            .collect();
        Policy {
            rules,
            default_action: cfg.default_action,
        }
    }

    /// Decides a statement sent to `target`. Statements that do not parse are
    /// never allowed: allow rules do not match them, and an allow
    /// defaultAction becomes deny. `metadata` that no rule matches is
    /// allowed whatever the defaultAction ([`METADATA_ALLOWANCE`]): drivers
    /// read it to set themselves up, and a rule author should not have to
    /// know each driver's queries; a rule matching it (e.g. a deny with
    /// `classes: [metadata]`) decides instead.
    pub fn decide(&self, target: &str, c: &Classification) -> RuleDecision {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(target, c) {
                return RuleDecision {
                    action: rule.action,
                    rule: Some(i),
                    label: rule.label.clone(),
                    class: c.class,
                    rule_name: rule.name.clone(),
                };
            }
        }
        if c.class == StatementClass::Metadata {
            return RuleDecision {
                action: RuleAction::Allow,
                rule: None,
                label: METADATA_ALLOWANCE.into(),
                class: c.class,
                rule_name: None,
            };
        }
        let action = match self.default_action {
            RuleAction::Allow if c.class == StatementClass::Unparseable => RuleAction::Deny,
            a => a,
        };
        RuleDecision {
            action,
            rule: None,
            label: "defaultAction".into(),
            class: c.class,
            rule_name: None,
        }
    }
}

impl Rule {
    fn matches(&self, target: &str, c: &Classification) -> bool {
        if self.http_only {
            return false;
        }
        if self.action == RuleAction::Allow && c.class == StatementClass::Unparseable {
            return false;
        }
        if !self.targets.is_empty() && !self.targets.iter().any(|t| t == target) {
            return false;
        }
        if !self.classes.is_empty() && !self.classes.contains(&c.class) {
            return false;
        }
        let patterns = match &self.tables {
            Tables::Any => return true,
            Tables::Invalid => return self.action != RuleAction::Allow,
            Tables::Patterns(p) => p,
        };
        let listed = |name: &String| match name.split_once('.') {
            Some((schema, table)) => patterns.iter().any(|p| p.matches(&[schema, table])),
            None => patterns.iter().any(|p| p.matches(&[name.as_str()])),
        };
        let mut touched = c.reads.iter().chain(&c.writes).map(listed);
        if self.action == RuleAction::Allow {
            if c.reads.is_empty() && c.writes.is_empty() {
                // Nothing to check against the list: fine for `SELECT 1` or
                // SHOW, but a table list cannot bound a DO block, SET ROLE
                // or pg_read_file, which name no relation.
                return matches!(
                    c.class,
                    StatementClass::Read | StatementClass::Metadata | StatementClass::Control
                );
            }
            // Every relation must be listed, so an allow never reaches an
            // unlisted table.
            touched.all(|m| m)
        } else {
            // One listed relation is enough, so joining an unlisted table
            // cannot dodge a deny.
            touched.any(|m| m)
        }
    }
}

impl RuleDecision {
    /// The 42501 message, e.g. `cardgate: denied by AccessPolicy
    /// payments/agent-readonly rule 3 no-ddl (ddl)`: names the policy, the
    /// rule and the class, so the agent (and its operator) know what to ask
    /// for.
    pub fn denial_message(&self, policy: &PolicyName) -> String {
        let rule = match (self.rule, &self.rule_name) {
            (Some(i), Some(name)) => format!("rule {} {name}", i + 1),
            (Some(i), None) => format!("rule {}", i + 1),
            (None, _) => "defaultAction".into(),
        };
        format!(
            "cardgate: denied by AccessPolicy {policy} {rule} ({})",
            self.class
        )
    }
}
