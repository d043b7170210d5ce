//! The audit record and its hash chain.
//!
//! One JSON object per line. Each record carries `seq` (1, 2, 3…), `prevHash`
//! (the `hash` of the record before it; 64 zeros for the first) and `hash`:
//! SHA-256 over the record's canonical form, which is the record without its
//! `hash` field, serialized as compact JSON with object keys sorted
//! byte-wise at every level. Nothing else (no floats, no whitespace choices)
//! enters the hash, so any conforming JSON tool can recompute it.
//!
//! [`verify`] walks a log and names the first record that was modified,
//! removed, reordered or forged, and reports a log cut off mid-record as
//! truncated. A chain detects edits anywhere but its end; to detect a rewrite
//! of the whole tail, compare the last `hash` with a copy kept elsewhere (an
//! audit collector's copy) — pass it as an anchor.
//!
//! Fields follow PCI DSS 10.2.2: who (`actor`), what (`event`), when
//! (`time`, UTC), success or failure (`outcome`), where from (`origin`) and
//! which data or resource (`resource`).

use std::fmt;
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::v1alpha1::{Phase, RuleAction, StatementClass};

/// `prevHash` of the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. Dotted names group events for SIEM queries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The audit trail started (PCI DSS 10.2.1.6).
    #[serde(rename = "audit.start")]
    AuditStart,
    /// The audit trail stopped cleanly.
    #[serde(rename = "audit.stop")]
    AuditStop,
    /// A configuration was loaded and is in force.
    #[serde(rename = "config.loaded")]
    ConfigLoaded,
    /// A configuration was refused; the previous one (or none) stays.
    #[serde(rename = "config.rejected")]
    ConfigRejected,
    /// An agent authenticated.
    #[serde(rename = "auth.success")]
    AuthSuccess,
    /// An authentication attempt failed (PCI DSS 10.2.1.4).
    #[serde(rename = "auth.failure")]
    AuthFailure,
    /// A client session began.
    #[serde(rename = "session.start")]
    SessionStart,
    /// A client session ended.
    #[serde(rename = "session.end")]
    SessionEnd,
    /// A connection was refused before authentication (unknown target,
    /// malformed protocol, too many connections).
    #[serde(rename = "connection.refused")]
    ConnectionRefused,
    /// A statement or request was decided and, if allowed, run.
    #[serde(rename = "statement")]
    Statement,
    /// An ApprovalRequest was created.
    #[serde(rename = "approval.created")]
    ApprovalCreated,
    /// A reviewer added a review.
    #[serde(rename = "approval.review")]
    ApprovalReview,
    /// A request reached its final decision.
    #[serde(rename = "approval.decided")]
    ApprovalDecided,
    /// An approved statement ran.
    #[serde(rename = "approval.executed")]
    ApprovalExecuted,
    /// The requester withdrew the request.
    #[serde(rename = "approval.withdrawn")]
    ApprovalWithdrawn,
    /// The request expired undecided.
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// A policy or masking rule changed in the cluster (PCI DSS 10.2.1.2).
    #[serde(rename = "policy.changed")]
    PolicyChanged,
}

impl EventKind {
    /// The record kind and outcome for an ApprovalRequest that reached
    /// `phase`, so the operator and a standalone sidecar record the same.
    pub fn approval_outcome(phase: Phase) -> (EventKind, Outcome) {
        match phase {
            Phase::Approved | Phase::Consumed => (EventKind::ApprovalDecided, Outcome::Success),
            Phase::Denied | Phase::Pending => (EventKind::ApprovalDecided, Outcome::Failure),
            Phase::Expired => (EventKind::ApprovalExpired, Outcome::Failure),
            Phase::Withdrawn => (EventKind::ApprovalWithdrawn, Outcome::Failure),
        }
    }
}

/// Whether the event succeeded, as PCI DSS 10.2.2 asks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action happened.
    Success,
    /// The action was refused or failed.
    Failure,
}

/// Who acted: the authenticated agent, or a reviewer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// Subject (or username) as authenticated; for a failed authentication,
    /// what the client claimed, marked as such in `auth.reason`.
    pub subject: String,
    /// Token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Where the event came from: the component, the pod it runs in, the client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    /// `sidecar` or `operator`.
    pub component: String,
    /// Pod namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Pod service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Host name when not in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Client address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Session identifier, shared by all records of one client connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The data or resource the event touched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Target name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Database (postgres targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Relations read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// Relations written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
    /// Kind/name of a Kubernetes object (policies, approval requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// Details of a statement event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatementDetails {
    /// Statement text, masked.
    pub text: String,
    /// Class it was parsed as.
    pub class: StatementClass,
    /// What the policy decided.
    pub decision: RuleAction,
    /// Rule that decided, or `defaultAction`.
    pub rule: String,
    /// `simple`, `extended` (Parse/Bind/Execute), `copy`, `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Rows returned or affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of row data returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Time from receiving the statement to its completion, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Values masked in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_values: Option<u64>,
    /// SQLSTATE of an error, from the server or the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// ApprovalRequest that allowed or held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// Details of an approval event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDetails {
    /// ApprovalRequest name.
    pub name: String,
    /// Approved, Denied, Expired, Withdrawn, Consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Reviewer (authenticated username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    /// Reviewer's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Statement fingerprint the request is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// One audit record. Optional sections appear only for the events that use
/// them; verification works on the raw JSON, so readers of older or newer
/// records still verify them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The chain this record belongs to: set when a chain begins and kept
    /// for its whole life (across restarts that continue a file), so a
    /// reader can separate the chains of many pods in one interleaved
    /// export. Absent on records written before chains had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// UTC time, RFC 3339 with microseconds.
    pub time: String,
    /// What happened.
    pub event: EventKind,
    /// Success or failure.
    pub outcome: Outcome,
    /// Who acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Where the event came from.
    pub origin: Origin,
    /// What it touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// Governing policy (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Statement details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementDetails>,
    /// Approval details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalDetails>,
    /// Human-readable explanation (reason of a failure, what changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form.
    pub hash: String,
}

impl AuditRecord {
    /// A record for `event` at the current time; the chain fills in `seq`,
    /// `prevHash` and `hash` when it is sealed.
    pub fn new(event: EventKind, outcome: Outcome, origin: Origin) -> Self {
        Self {
            chain: None,
            seq: 0,
            time: now_rfc3339(),
            event,
            outcome,
            actor: None,
            origin,
            resource: None,
            policy: None,
            statement: None,
            approval: None,
            message: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}

/// The current UTC time as written in records: `2026-11-22T04:55:35.123456Z`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Writes the canonical form of a record: compact JSON, keys sorted at every
/// level, the top-level `hash` left out.
pub fn canonical_bytes(record: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(record, true, &mut out);
    out
}

fn write_canonical(v: &Value, top: bool, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| !(top && k.as_str() == "hash"))
                .collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(&map[k], false, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, false, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

/// SHA-256 (lower-case hex) of a record's canonical form.
pub fn record_hash(record: &Value) -> String {
    hex::encode(Sha256::digest(canonical_bytes(record)))
}

/// The writer's end of a chain: hands out sequence numbers and links each
/// record to the one before.
#[derive(Debug, Clone)]
pub struct Chain {
    id: String,
    next_seq: u64,
    prev_hash: String,
}

impl Default for Chain {
    /// A new chain with a new random id.
    fn default() -> Self {
        Self {
            id: new_chain_id(),
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }
}

/// A new chain id: 128 random bits in hex, so chains of different pods and
/// restarts never share one.
pub fn new_chain_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Chain {
    /// Continues a chain after the record with `seq` and `hash` (e.g. the
    /// last record of an existing log file), keeping its id; a log written
    /// before chains had ids continues under a new one.
    pub fn resume(seq: u64, hash: String, id: Option<String>) -> Self {
        Self {
            id: id.unwrap_or_else(new_chain_id),
            next_seq: seq + 1,
            prev_hash: hash,
        }
    }

    /// The chain's id, written on every record it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seals `record` into the chain and returns its JSON line (with a
    /// trailing newline).
    pub fn seal(&mut self, record: &mut AuditRecord) -> Vec<u8> {
        record.chain = Some(self.id.clone());
        record.seq = self.next_seq;
        record.prev_hash.clone_from(&self.prev_hash);
        record.hash.clear();
        let mut line = Vec::with_capacity(1024);
        serde_json::to_writer(&mut line, &canonical::Record(record))
            .expect("audit records serialize");
        record.hash = hex::encode(Sha256::digest(&line));
        self.next_seq += 1;
        self.prev_hash.clone_from(&record.hash);
        line.clear();
        serde_json::to_writer(&mut line, &*record).expect("audit records serialize");
        line.push(b'\n');
        line
    }
}

/// The canonical form of a record written straight from the types, without
/// building a [`Value`] tree first: the writer seals every record, and the
/// tree cost most of the time. Each view lists its fields in sorted key
/// order and skips what the record's own serialization skips, so the bytes
/// equal [`canonical_bytes`] of the serialized record; the types are
/// destructured so a new field fails to compile until it is placed here,
/// and a test holds the two forms together.
mod canonical {
    use serde::Serialize;

    use super::{Actor, ApprovalDetails, AuditRecord, Origin, Resource, StatementDetails};

    fn none<T>(v: &Option<T>) -> bool {
        v.is_none()
    }

    fn empty<T>(v: &[T]) -> bool {
        v.is_empty()
    }

    /// A record without its `hash`.
    pub struct Record<'a>(pub &'a AuditRecord);

    impl Serialize for Record<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // Destructured so that a new field cannot be forgotten here.
            let AuditRecord {
                chain,
                seq,
                time,
                event,
                outcome,
                actor,
                origin,
                resource,
                policy,
                statement,
                approval,
                message,
                prev_hash,
                hash: _,
            } = self.0;
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct View<'a> {
                #[serde(skip_serializing_if = "none")]
                actor: Option<ActorView<'a>>,
                #[serde(skip_serializing_if = "none")]
                approval: Option<ApprovalView<'a>>,
                #[serde(skip_serializing_if = "none")]
                chain: &'a Option<String>,
                event: &'a super::EventKind,
                #[serde(skip_serializing_if = "none")]
                message: &'a Option<String>,
                origin: OriginView<'a>,
                outcome: &'a super::Outcome,
                #[serde(skip_serializing_if = "none")]
                policy: &'a Option<String>,
                prev_hash: &'a str,
                #[serde(skip_serializing_if = "none")]
                resource: Option<ResourceView<'a>>,
                seq: u64,
                #[serde(skip_serializing_if = "none")]
                statement: Option<StatementView<'a>>,
                time: &'a str,
            }
            View {
                actor: actor.as_ref().map(ActorView::of),
                approval: approval.as_ref().map(ApprovalView::of),
                chain,
                event,
                message,
                origin: OriginView::of(origin),
                outcome,
                policy,
                prev_hash,
                resource: resource.as_ref().map(ResourceView::of),
                seq: *seq,
                statement: statement.as_ref().map(StatementView::of),
                time,
            }
            .serialize(s)
        }
    }

    #[derive(Serialize)]
    struct ActorView<'a> {
        #[serde(skip_serializing_if = "empty")]
        groups: &'a [String],
        #[serde(skip_serializing_if = "none")]
        issuer: &'a Option<String>,
        subject: &'a str,
    }

    impl<'a> ActorView<'a> {
        fn of(a: &'a Actor) -> Self {
            let Actor {
                subject,
                issuer,
                groups,
            } = a;
            Self {
                groups,
                issuer,
                subject,
            }
        }
    }

    #[derive(Serialize)]
    struct ApprovalView<'a> {
        #[serde(skip_serializing_if = "none")]
        decision: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        fingerprint: &'a Option<String>,
        name: &'a str,
        #[serde(skip_serializing_if = "none")]
        reason: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        reviewer: &'a Option<String>,
    }

    impl<'a> ApprovalView<'a> {
        fn of(a: &'a ApprovalDetails) -> Self {
            let ApprovalDetails {
                name,
                decision,
                reviewer,
                reason,
                fingerprint,
            } = a;
            Self {
                decision,
                fingerprint,
                name,
                reason,
                reviewer,
            }
        }
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct OriginView<'a> {
        #[serde(skip_serializing_if = "none")]
        client: &'a Option<String>,
        component: &'a str,
        #[serde(skip_serializing_if = "none")]
        host: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        namespace: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        node: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        pod: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        pod_uid: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        service_account: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        session: &'a Option<String>,
    }

    impl<'a> OriginView<'a> {
        fn of(o: &'a Origin) -> Self {
            let Origin {
                component,
                namespace,
                pod,
                pod_uid,
                service_account,
                node,
                host,
                client,
                session,
            } = o;
            Self {
                client,
                component,
                host,
                namespace,
                node,
                pod,
                pod_uid,
                service_account,
                session,
            }
        }
    }

    #[derive(Serialize)]
    struct ResourceView<'a> {
        #[serde(skip_serializing_if = "none")]
        database: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        object: &'a Option<String>,
        #[serde(skip_serializing_if = "empty")]
        reads: &'a [String],
        #[serde(skip_serializing_if = "none")]
        target: &'a Option<String>,
        #[serde(skip_serializing_if = "empty")]
        writes: &'a [String],
    }

    impl<'a> ResourceView<'a> {
        fn of(r: &'a Resource) -> Self {
            let Resource {
                target,
                database,
                reads,
                writes,
                object,
            } = r;
            Self {
                database,
                object,
                reads,
                target,
                writes,
            }
        }
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StatementView<'a> {
        #[serde(skip_serializing_if = "none")]
        approval: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        bytes: &'a Option<u64>,
        class: &'a crate::v1alpha1::StatementClass,
        decision: &'a crate::v1alpha1::RuleAction,
        #[serde(skip_serializing_if = "none")]
        duration_us: &'a Option<u64>,
        #[serde(skip_serializing_if = "none")]
        masked_values: &'a Option<u64>,
        #[serde(skip_serializing_if = "none")]
        protocol: &'a Option<String>,
        #[serde(skip_serializing_if = "none")]
        rows: &'a Option<u64>,
        rule: &'a str,
        #[serde(skip_serializing_if = "none")]
        sqlstate: &'a Option<String>,
        text: &'a str,
    }

    impl<'a> StatementView<'a> {
        fn of(st: &'a StatementDetails) -> Self {
            let StatementDetails {
                text,
                class,
                decision,
                rule,
                protocol,
                rows,
                bytes,
                duration_us,
                masked_values,
                sqlstate,
                approval,
            } = st;
            Self {
                approval,
                bytes,
                class,
                decision,
                duration_us,
                masked_values,
                protocol,
                rows,
                rule,
                sqlstate,
                text,
            }
        }
    }
}

/// What [`verify`] found wrong first. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// A line is not a JSON record (and is not the last line).
    Malformed {
        /// Line number.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// The record's content no longer matches its own hash.
    Modified {
        /// Line number.
        line: usize,
        /// The record's seq.
        seq: u64,
    },
    /// Records are missing: `found` came where `expected` should be, and
    /// `expected` appears nowhere later.
    Missing {
        /// Line number of the record after the gap.
        line: usize,
        /// First missing seq.
        expected: u64,
        /// Seq found instead.
        found: u64,
    },
    /// Records are out of order: `expected` appears, but later (or `found`
    /// repeats an earlier seq).
    Reordered {
        /// Line number.
        line: usize,
        /// Seq that should come here.
        expected: u64,
        /// Seq found instead.
        found: u64,
    },
    /// The record hashes correctly but does not link to the record before
    /// it: it, or the record before it, was replaced.
    Forged {
        /// Line number.
        line: usize,
        /// The record's seq.
        seq: u64,
    },
    /// The log ends in the middle of a record: it was cut off after `last_seq`.
    Truncated {
        /// Line number of the partial record.
        line: usize,
        /// Last complete record.
        last_seq: u64,
    },
    /// The first record is not the start of a chain.
    NoGenesis {
        /// Seq of the first record.
        seq: u64,
    },
    /// The log does not reach or does not match a hash kept elsewhere.
    AnchorMismatch {
        /// Anchored seq.
        seq: u64,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { line, reason } => {
                write!(f, "line {line}: not an audit record ({reason})")
            }
            Self::Modified { line, seq } => write!(
                f,
                "record seq={seq} (line {line}) was modified: its content does not match its hash"
            ),
            Self::Missing {
                line,
                expected,
                found,
            } => write!(
                f,
                "record seq={expected} is missing: line {line} holds seq={found}{}",
                if found > &(expected + 1) {
                    format!(" (records {expected}..={} were removed)", found - 1)
                } else {
                    String::new()
                }
            ),
            Self::Reordered {
                line,
                expected,
                found,
            } => write!(
                f,
                "records are out of order: line {line} holds seq={found} where seq={expected} belongs"
            ),
            Self::Forged { line, seq } => write!(
                f,
                "record seq={seq} (line {line}) is forged or follows a forged record: its prevHash is not the hash of seq={}",
                seq.saturating_sub(1)
            ),
            Self::Truncated { line, last_seq } => write!(
                f,
                "the log was cut off: line {line} is an incomplete record after seq={last_seq}"
            ),
            Self::NoGenesis { seq } => write!(
                f,
                "the log starts at seq={seq}, not at the start of a chain: earlier records were removed (verify with an anchor to check a partial export)"
            ),
            Self::AnchorMismatch { seq, reason } => write!(f, "anchor seq={seq}: {reason}"),
        }
    }
}

/// A hash kept outside the log (by the collector, or from an earlier
/// verification) that the log must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Seq of the anchored record.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Options for [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a log that starts mid-chain (an export of a range); its first
    /// record is trusted as the starting point.
    pub allow_partial: bool,
    /// Hashes the log must contain.
    pub anchors: Vec<Anchor>,
}

/// Result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Complete records read.
    pub records: u64,
    /// First and last seq seen.
    pub first_seq: Option<u64>,
    /// Last seq of the verified prefix.
    pub last_seq: Option<u64>,
    /// Hash of the last verified record: keep it as an anchor.
    pub last_hash: Option<String>,
    /// Whether the last record is `audit.stop` (a cleanly closed trail).
    pub closed: bool,
    /// Chain id of the last verified record, if it carries one: a writer
    /// continuing the log keeps it.
    pub chain: Option<String>,
    /// The first problem, if any.
    pub problem: Option<ChainProblem>,
}

impl VerifyReport {
    /// Whether the chain verified without problems.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.problem, self.first_seq, self.last_seq) {
            (None, Some(first), Some(last)) => {
                write!(
                    f,
                    "OK: {} records, seq {first}..={last}, chain intact",
                    self.records
                )?;
                if !self.closed {
                    write!(
                        f,
                        "; no audit.stop yet (still being written, or stopped uncleanly)"
                    )?;
                }
                if let Some(h) = &self.last_hash {
                    write!(f, "\nlast hash (keep as an anchor): {last}:{h}")?;
                }
                Ok(())
            }
            (None, _, _) => write!(f, "OK: the log is empty"),
            (Some(p), _, last) => {
                write!(f, "FAILED: {p}")?;
                if let Some(last) = last {
                    write!(
                        f,
                        "\n{} records up to seq={last} verified before the problem",
                        self.records
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// Parses `SEQ:HASH`, the form `verify` prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("anchor {s:?} is not SEQ:HASH"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("anchor {s:?}: {seq:?} is not a sequence number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("anchor {s:?}: the hash must be 64 hex digits"));
        }
        Ok(Self {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// Verifies the audit log in `path`; the entry point of the `audit verify`
/// commands of the sidecar and of `kubectl cardgate`.
pub fn verify_file(
    path: &std::path::Path,
    options: &VerifyOptions,
) -> std::io::Result<VerifyReport> {
    let f = std::fs::File::open(path)?;
    verify(std::io::BufReader::new(f), options)
}

/// Verifies a log of JSON-lines records and reports the first problem.
pub fn verify(reader: impl BufRead, options: &VerifyOptions) -> std::io::Result<VerifyReport> {
    let mut raw_lines: Vec<(usize, Vec<u8>, bool)> = Vec::new();
    let mut reader = reader;
    let mut n = 0;
    loop {
        let mut buf = Vec::new();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) && complete {
            continue;
        }
        raw_lines.push((n, buf, complete));
    }

    let mut report = VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        closed: false,
        chain: None,
        problem: None,
    };
    let total = raw_lines.len();
    let mut parsed: Vec<(usize, Value)> = Vec::with_capacity(total);
    for (i, (line, bytes, complete)) in raw_lines.into_iter().enumerate() {
        let last = i + 1 == total;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() && complete => parsed.push((line, v)),
            // A final record whose newline never made it to disk is still a
            // whole record; its hash decides whether it is intact.
            Ok(v) if v.is_object() && last => parsed.push((line, v)),
            Err(e) if last && (!complete || e.is_eof()) => {
                report.problem = Some(ChainProblem::Truncated {
                    line,
                    last_seq: parsed
                        .last()
                        .and_then(|(_, v)| v.get("seq"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                });
                break;
            }
            Ok(_) => {
                report.problem = Some(ChainProblem::Malformed {
                    line,
                    reason: "not a JSON object".into(),
                });
                return Ok(report);
            }
            Err(e) => {
                report.problem = Some(ChainProblem::Malformed {
                    line,
                    reason: e.to_string(),
                });
                return Ok(report);
            }
        }
    }
    let truncated = report.problem.take();
    let refs: Vec<(usize, &Value)> = parsed.iter().map(|(l, v)| (*l, v)).collect();
    let mut report = walk_records(&refs, options);
    if report.problem.is_none() {
        report.problem = truncated.or_else(|| anchor_beyond_end(&report, options));
    }
    Ok(report)
}

/// Walks parsed records in the order given and reports the first problem
/// of their chain: the one check behind [`verify`] and the evidence engine
/// ([`crate::evidence`]). `position` (a line number, or an index into an
/// export) is what the problem names.
pub fn walk(parsed: &[(usize, &Value)], options: &VerifyOptions) -> VerifyReport {
    let mut report = walk_records(parsed, options);
    if report.problem.is_none() {
        report.problem = anchor_beyond_end(&report, options);
    }
    report
}

/// The problem of an anchor past the last verified record: the tail that
/// held it was removed.
fn anchor_beyond_end(report: &VerifyReport, options: &VerifyOptions) -> Option<ChainProblem> {
    let a = options
        .anchors
        .iter()
        .find(|a| report.last_seq.is_none_or(|last| a.seq > last))?;
    Some(ChainProblem::AnchorMismatch {
        seq: a.seq,
        reason: format!(
            "the log ends at seq={}, before the anchored record: its tail was removed",
            report.last_seq.unwrap_or(0)
        ),
    })
}

fn walk_records(parsed: &[(usize, &Value)], options: &VerifyOptions) -> VerifyReport {
    let mut report = VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        closed: false,
        chain: None,
        problem: None,
    };

    let seqs: Vec<Option<u64>> = parsed
        .iter()
        .map(|(_, v)| v.get("seq").and_then(Value::as_u64))
        .collect();
    let mut prev: Option<(u64, String)> = None;
    for (i, (line, v)) in parsed.iter().enumerate() {
        let line = *line;
        let Some(seq) = seqs[i] else {
            report.problem = Some(ChainProblem::Malformed {
                line,
                reason: "missing seq".into(),
            });
            return report;
        };
        let stored = v.get("hash").and_then(Value::as_str).unwrap_or_default();
        let prev_hash = v
            .get("prevHash")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expected = match &prev {
            Some((s, _)) => s + 1,
            None if options.allow_partial => seq,
            None => 1,
        };
        if seq != expected {
            let problem = if prev.is_none() {
                ChainProblem::NoGenesis { seq }
            } else if seq < expected || seqs[i + 1..].contains(&Some(expected)) {
                ChainProblem::Reordered {
                    line,
                    expected,
                    found: seq,
                }
            } else {
                ChainProblem::Missing {
                    line,
                    expected,
                    found: seq,
                }
            };
            report.problem = Some(problem);
            return report;
        }
        if record_hash(v) != stored {
            report.problem = Some(ChainProblem::Modified { line, seq });
            return report;
        }
        let links = match &prev {
            Some((_, h)) => prev_hash == h,
            None if options.allow_partial => true,
            None => prev_hash == GENESIS_HASH,
        };
        if !links {
            report.problem = Some(ChainProblem::Forged { line, seq });
            return report;
        }
        report.records += 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
        report.last_hash = Some(stored.to_string());
        report.closed = v.get("event").and_then(Value::as_str) == Some("audit.stop");
        report.chain = v.get("chain").and_then(Value::as_str).map(str::to_string);
        for a in options.anchors.iter().filter(|a| a.seq == seq) {
            if a.hash != stored {
                report.problem = Some(ChainProblem::AnchorMismatch {
                    seq,
                    reason: format!(
                        "the log's record has hash {stored}, the anchor says {}: the log was rewritten from here or earlier",
                        a.hash
                    ),
                });
                return report;
            }
        }
        prev = Some((seq, stored.to_string()));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{RuleAction, StatementClass};

    fn sealed_canonical(r: &AuditRecord) -> Vec<u8> {
        serde_json::to_vec(&canonical::Record(r)).unwrap()
    }

    fn generic_canonical(r: &AuditRecord) -> Vec<u8> {
        canonical_bytes(&serde_json::to_value(r).unwrap())
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// Every field set, with characters JSON must escape.
    fn full() -> AuditRecord {
        let origin = Origin {
            component: "sidecar".into(),
            namespace: s("payments"),
            pod: s("agent-7d9f"),
            pod_uid: s("5c3e1f0a"),
            service_account: s("agent"),
            node: s("node-1"),
            host: s("vm"),
            client: s("127.0.0.1:50512"),
            session: s("s-1"),
        };
        let mut r = AuditRecord::new(EventKind::ApprovalExecuted, Outcome::Failure, origin);
        r.seq = 42;
        r.chain = s("0f3a\"c");
        r.prev_hash = GENESIS_HASH.into();
        r.hash = "ignored".into();
        r.actor = Some(Actor {
            subject: "alice \"the\" admin".into(),
            issuer: s("https://issuer"),
            groups: vec!["a".into(), "b\\c".into()],
        });
        r.resource = Some(Resource {
            target: s("db"),
            database: s("payments"),
            reads: vec!["public.cards".into()],
            writes: vec!["public.orders".into()],
            object: s("ApprovalRequest/x"),
        });
        r.policy = s("payments/p");
        r.statement = Some(StatementDetails {
            text: "SELECT 'é\n\t' FROM cards".into(),
            class: StatementClass::Write,
            decision: RuleAction::RequireApproval,
            rule: "rule 3 (w)".into(),
            protocol: s("simple"),
            rows: Some(1),
            bytes: Some(2),
            duration_us: Some(3),
            masked_values: Some(4),
            sqlstate: s("42501"),
            approval: s("req-1"),
        });
        r.approval = Some(ApprovalDetails {
            name: "req-1".into(),
            decision: s("Approved"),
            reviewer: s("bob"),
            reason: s("ticket \u{1} 7"),
            fingerprint: s("abc"),
        });
        r.message = s("a message");
        r
    }

    #[test]
    fn the_sealing_fast_path_writes_exactly_the_canonical_form() {
        let full = full();
        assert_eq!(
            String::from_utf8(sealed_canonical(&full)).unwrap(),
            String::from_utf8(generic_canonical(&full)).unwrap()
        );
        let sparse = AuditRecord::new(EventKind::AuditStart, Outcome::Success, Origin::default());
        assert_eq!(sealed_canonical(&sparse), generic_canonical(&sparse));
        let mut partial = full.clone();
        partial.actor.as_mut().unwrap().groups.clear();
        partial.actor.as_mut().unwrap().issuer = None;
        partial.resource.as_mut().unwrap().reads.clear();
        partial.statement.as_mut().unwrap().rows = None;
        partial.approval = None;
        partial.origin.pod_uid = None;
        partial.chain = None;
        assert_eq!(sealed_canonical(&partial), generic_canonical(&partial));
    }

    #[test]
    fn a_sealed_line_hashes_to_its_own_hash() {
        let mut chain = Chain::default();
        let mut r = full();
        let line = chain.seal(&mut r);
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["hash"], r.hash.as_str());
        assert_eq!(record_hash(&value), r.hash);
        assert_eq!(value["seq"], 1);
        assert_eq!(value["chain"], chain.id());
    }

    #[test]
    fn a_resumed_chain_keeps_its_id_and_new_chains_get_new_ones() {
        let mut first = Chain::default();
        let mut r = full();
        first.seal(&mut r);
        let mut resumed = Chain::resume(1, r.hash.clone(), r.chain.clone());
        let mut next = full();
        resumed.seal(&mut next);
        assert_eq!(next.chain.as_deref(), Some(first.id()));
        assert_eq!((next.seq, next.prev_hash.as_str()), (2, r.hash.as_str()));
        assert_ne!(Chain::default().id(), first.id());
        assert_eq!(first.id().len(), 32);
    }
}
