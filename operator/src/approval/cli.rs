//! The approver's side of `kubectl cardgate`: list pending requests, approve
//! or deny one. Reviews are appended with a JSON patch that first tests the
//! current reviews, so two approvers reviewing at once never overwrite each
//! other (the loser re-reads and tries again); the admission webhook stamps
//! the reviewer and time, exactly as for a plain `kubectl patch`.
//!
//! Patch building and output formatting are pure functions; the commands
//! around them use the caller's kubeconfig.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use cardgate_crds::v1alpha1::{ApprovalRequest, ApprovalRequestStatus, Decision, Phase, Review};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::lifecycle::{Reported, evaluate};

/// Attempts at appending a review when other reviews keep arriving.
const ATTEMPTS: usize = 3;
/// How long `approve`/`deny` wait for the operator to take the review in.
const SETTLE: Duration = Duration::from_secs(10);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API server (or an admission webhook) refused.
    #[error("{0}")]
    Refused(String),
    /// The API server could not be reached or answered nonsense.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Other reviews kept arriving.
    #[error("{0} kept changing while the review was being added; try again")]
    Busy(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
    let action = action.into();
    move |source| match source {
        kube::Error::Api(s) => CliError::Refused(refusal(&s.message)),
        source => CliError::Kube { action, source },
    }
}

/// The part of an API message a person needs: a webhook's own words
/// without the API server's wrapper.
fn refusal(message: &str) -> String {
    match message.split_once("denied the request: ") {
        Some((_, reason)) => reason.to_string(),
        None => message.to_string(),
    }
}

/// The JSON patch that appends one review to `object` (the request as
/// read, raw): a `test` of the current reviews (absent, or exactly this
/// list), then the `add`. Reviewer, groups and time are left to the
/// admission webhook.
pub fn review_patch(object: &Value, decision: Decision, reason: Option<&str>) -> Value {
    let mut review = json!({"decision": decision});
    if let Some(reason) = reason {
        review["reason"] = json!(reason);
    }
    match object.pointer("/spec/reviews") {
        Some(current) if !current.is_null() => json!([
            {"op": "test", "path": "/spec/reviews", "value": current},
            {"op": "add", "path": "/spec/reviews/-", "value": review},
        ]),
        // JSON patch as the API server applies it: a test for null passes
        // on an absent member.
        _ => json!([
            {"op": "test", "path": "/spec/reviews", "value": null},
            {"op": "add", "path": "/spec/reviews", "value": [review]},
        ]),
    }
}

/// Whether `request` still waits for reviews.
pub fn is_pending(request: &ApprovalRequest) -> bool {
    request
        .status
        .as_ref()
        .is_none_or(|s| s.phase == Phase::Pending)
}

/// Age as kubectl prints it: `45s`, `3m12s`, `25m`, `2h5m`, `30h`, `3d4h`,
/// `12d`.
pub fn age(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if days < 8 => format!("{days}d{}h", h % 24),
        _ => format!("{days}d"),
    }
}

/// `approved/quorum` counting the reviews that count.
fn progress(request: &ApprovalRequest, now: Timestamp) -> String {
    let status = request.status.as_ref();
    let e = evaluate(
        &request.spec,
        Reported {
            uses: status.map_or(0, |s| s.uses),
            withdrawn_at: status.and_then(|s| s.withdrawn_at.as_ref()).map(|t| t.0),
        },
        now,
    );
    format!("{}/{}", e.approvals, request.spec.quorum)
}

/// Lays out `rows` (the first is the header) in columns three spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const HEADER: [&str; 7] = [
    "NAME",
    "REQUESTER",
    "TARGET",
    "RULE",
    "APPROVALS",
    "STATEMENT",
    "AGE",
];

fn row(request: &ApprovalRequest, now: Timestamp) -> Vec<String> {
    let created = request
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    vec![
        request.name_any(),
        request.spec.requester.subject.clone(),
        request.spec.target.clone(),
        request.spec.rule.clone(),
        progress(request, now),
        request.spec.statement.preview.clone(),
        age(now.duration_since(created)),
    ]
}

/// The pending requests among `requests`, oldest first, as a table; with
/// `namespaces`, a NAMESPACE column first.
pub fn pending_table(requests: &[ApprovalRequest], now: Timestamp, namespaces: bool) -> String {
    let mut pending: Vec<&ApprovalRequest> = requests.iter().filter(|r| is_pending(r)).collect();
    if pending.is_empty() {
        return "No pending approval requests.\n".into();
    }
    pending.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.namespace(),
            r.name_any(),
        )
    });
    let mut rows = vec![header(namespaces, false)];
    for r in pending {
        let mut cells = row(r, now);
        if namespaces {
            cells.insert(0, r.namespace().unwrap_or_default());
        }
        rows.push(cells);
    }
    columns(&rows)
}

fn header(namespaces: bool, phase: bool) -> Vec<String> {
    let mut h: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    if phase {
        h.insert(1, "PHASE".into());
    }
    if namespaces {
        h.insert(0, "NAMESPACE".into());
    }
    h
}

/// One line of `--watch` output: the request with its phase, in fixed-width
/// columns (the widths of a table cannot be known ahead of time).
pub fn watch_line(request: &ApprovalRequest, now: Timestamp, namespaces: bool) -> String {
    let phase = request.status.as_ref().map_or(Phase::Pending, |s| s.phase);
    let mut cells = row(request, now);
    cells.insert(1, phase.to_string());
    if namespaces {
        cells.insert(0, request.namespace().unwrap_or_default());
    }
    watch_cells(&cells)
}

/// The header of `--watch` output.
pub fn watch_header(namespaces: bool) -> String {
    watch_cells(&header(namespaces, true))
}

fn watch_cells(cells: &[String]) -> String {
    const WIDTHS: [usize; 9] = [16, 34, 10, 48, 16, 32, 10, 62, 8];
    let offset = WIDTHS.len() - cells.len();
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < cells.len() {
            let pad = WIDTHS[i + offset]
                .saturating_sub(cell.chars().count())
                .max(1);
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    line.trim_end().to_string()
}

/// What `approve`/`deny` print: the stamped review and the phase the
/// operator derived from it (or that it has not caught up yet).
pub fn outcome(
    name: &str,
    review: Option<&Review>,
    status: Option<&ApprovalRequestStatus>,
    caught_up: bool,
) -> String {
    let verb = match review.map(|r| r.decision) {
        Some(Decision::Denied) => "denied",
        _ => "approved",
    };
    let who = review
        .and_then(|r| r.reviewer.as_deref())
        .map(|r| format!(" as {r}"))
        .unwrap_or_default();
    let phase = match (status, caught_up) {
        (Some(s), true) => format!(
            "phase: {:?}{}",
            s.phase,
            s.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
        _ => "phase: not updated yet (the cardgate operator has not processed the review; check with kubectl get approvalrequest)".into(),
    };
    format!("approvalrequest/{name} {verb}{who}\n{phase}\n")
}

/// The API of ApprovalRequests in `namespace`, or all namespaces.
fn api(client: &Client, namespace: Option<&str>) -> Api<ApprovalRequest> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `kubectl cardgate approvals`: the pending requests.
pub async fn list(client: &Client, namespace: Option<&str>) -> Result<String, CliError> {
    let requests = api(client, namespace)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list ApprovalRequests"))?;
    Ok(pending_table(
        &requests.items,
        Timestamp::now(),
        namespace.is_none(),
    ))
}

/// `kubectl cardgate approvals --watch`: a line for every request that
/// appears or changes phase or reviews, until the stream ends.
pub async fn watch(
    client: &Client,
    namespace: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    writeln!(out, "{}", watch_header(namespace.is_none()))?;
    let mut shown: HashMap<String, (Phase, usize)> = HashMap::new();
    let stream = watcher(api(client, namespace), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut started = false;
    while let Some(item) = stream.next().await {
        let request = match item {
            Ok(r) => r,
            // Before anything was listed, an error is a setup problem
            // (permissions, kubeconfig): report it. Later ones are
            // interruptions the watcher recovers from.
            Err(e) if !started => return Err(CliError::Refused(e.to_string())),
            Err(e) => {
                eprintln!("kubectl-cardgate: watch interrupted ({e}); resuming");
                continue;
            }
        };
        started = true;
        let key = request.uid().unwrap_or_else(|| request.name_any());
        let state = (
            request.status.as_ref().map_or(Phase::Pending, |s| s.phase),
            request.spec.reviews.len(),
        );
        if shown.insert(key, state) != Some(state) {
            writeln!(
                out,
                "{}",
                watch_line(&request, Timestamp::now(), namespace.is_none())
            )?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `kubectl cardgate approve|deny`: appends the review and reports the
/// resulting phase.
pub async fn review(
    client: &Client,
    namespace: &str,
    name: &str,
    decision: Decision,
    reason: Option<&str>,
) -> Result<String, CliError> {
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<ApprovalRequest>(&()),
    );
    let typed: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    let what = format!("approvalrequest/{name} in {namespace}");
    let mut patched = None;
    for _ in 0..ATTEMPTS {
        let current = raw
            .get(name)
            .await
            .map_err(kube_err(format!("get {what}")))?;
        let patch = review_patch(&current.data, decision, reason);
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| CliError::Refused(e.to_string()))?;
        match typed
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(obj) => {
                patched = Some(obj);
                break;
            }
            Err(e) => {
                // Someone else's review landed in between: read and retry.
                let now = raw
                    .get(name)
                    .await
                    .map_err(kube_err(format!("get {what}")))?;
                if now.data.pointer("/spec/reviews") == current.data.pointer("/spec/reviews") {
                    return Err(kube_err(format!("patch {what}"))(e));
                }
            }
        }
    }
    let Some(patched) = patched else {
        return Err(CliError::Busy(what));
    };
    let generation = patched.metadata.generation;
    let settled = tokio::time::timeout(
        SETTLE,
        kube::runtime::wait::await_condition(typed, name, move |r: Option<&ApprovalRequest>| {
            r.is_none_or(|r| r.status.as_ref().and_then(|s| s.observed_generation) >= generation)
        }),
    )
    .await;
    let (latest, caught_up) = match settled {
        Ok(Ok(Some(r))) => (r, true),
        _ => (patched, false),
    };
    Ok(outcome(
        name,
        latest.spec.reviews.last(),
        latest.status.as_ref(),
        caught_up,
    ))
}

/// The namespace of the current kubeconfig context (or `default`) and a
/// client for it.
pub async fn connect() -> Result<(Client, String), String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no usable kubeconfig: {e}"))?;
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    Ok((client, namespace))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    const NAME: &str = "support-agent-7f3c9a2e-qwer";

    fn sample() -> Value {
        let mut v: Value = crate::fixtures::yaml(
            &std::fs::read_to_string(
                crate::fixtures::repo().join("config/samples/approvalrequest.yaml"),
            )
            .unwrap(),
        );
        v["metadata"]["name"] = json!(NAME);
        v["metadata"]["creationTimestamp"] = json!("2026-11-22T09:57:30Z");
        v["metadata"]["generation"] = json!(1);
        v["metadata"]["uid"] = json!("ar-uid-1");
        v["spec"]["quorum"] = json!(2);
        v["spec"]["expiresAt"] = json!("2026-11-22T10:15:00Z");
        v
    }

    fn typed(v: &Value) -> ApprovalRequest {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn the_first_review_tests_for_no_reviews_and_creates_the_list() {
        let patch = review_patch(&sample(), Decision::Approved, Some("ticket OPS-7"));
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/reviews", "value": null},
                {"op": "add", "path": "/spec/reviews", "value": [{"decision": "Approved", "reason": "ticket OPS-7"}]},
            ])
        );
    }

    #[test]
    fn later_reviews_test_the_current_list_and_append() {
        let mut doc = sample();
        let alice =
            json!({"decision": "Approved", "reviewer": "alice", "time": "2026-11-22T09:58:00Z"});
        doc["spec"]["reviews"] = json!([alice]);
        let patch = review_patch(&doc, Decision::Denied, Some("not now"));
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/reviews", "value": [alice]},
                {"op": "add", "path": "/spec/reviews/-", "value": {"decision": "Denied", "reason": "not now"}},
            ])
        );
        let ops: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        let mut applied = doc.clone();
        json_patch::patch(&mut applied, &ops.0).unwrap();
        assert_eq!(applied["spec"]["reviews"][1]["decision"], "Denied");
        // A review that landed in between makes the test fail: nothing is
        // overwritten.
        let mut raced = doc.clone();
        raced["spec"]["reviews"]
            .as_array_mut()
            .unwrap()
            .push(json!({"decision": "Approved", "reviewer": "carol"}));
        let before = raced.clone();
        assert!(json_patch::patch(&mut raced, &ops.0).is_err());
        assert_eq!(raced, before);
        // An explicitly empty list is tested as such.
        doc["spec"]["reviews"] = json!([]);
        assert_eq!(
            review_patch(&doc, Decision::Approved, None)[0],
            json!({"op": "test", "path": "/spec/reviews", "value": []})
        );
        assert_eq!(
            review_patch(&doc, Decision::Approved, None)[1]["value"],
            json!({"decision": "Approved"})
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (192, "3m12s"),
            (25 * 60, "25m"),
            (2 * 3600 + 5 * 60, "125m"),
            (5 * 3600 + 5 * 60, "5h5m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (12 * 86_400, "12d"),
            (-5, "0s"),
        ] {
            assert_eq!(age(SignedDuration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn the_pending_table_shows_only_open_requests_oldest_first() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut first = sample();
        first["spec"]["reviews"] =
            json!([{"decision": "Approved", "reviewer": "alice", "time": "2026-11-22T09:58:00Z"}]);
        let mut second = sample();
        second["metadata"]["name"] = json!("fraud-analyst-0a1b2c3d-wxyz");
        second["metadata"]["namespace"] = json!("agents");
        second["metadata"]["creationTimestamp"] = json!("2026-11-22T09:59:15Z");
        second["spec"]["requester"]["subject"] =
            json!("system:serviceaccount:agents:fraud-analyst");
        second["spec"]["target"] = json!("ledger");
        second["spec"]["rule"] = json!("rule 1 (ddl-needs-approval)");
        second["spec"]["quorum"] = json!(1);
        second["spec"]["statement"]["preview"] = json!("ALTER TABLE ledger ADD COLUMN note text");
        let mut decided = sample();
        decided["metadata"]["name"] = json!("support-agent-decided-abcd");
        decided["status"] = json!({"phase": "Denied"});
        let requests = [typed(&second), typed(&decided), typed(&first)];
        assert_eq!(
            pending_table(&requests, now, false),
            "\
NAME                          REQUESTER                                      TARGET        RULE                            APPROVALS   STATEMENT                                               AGE
support-agent-7f3c9a2e-qwer   system:serviceaccount:payments:support-agent   payments-db   rule 3 (writes-need-approval)   1/2         UPDATE orders SET status = 'refunded' WHERE id = 4711   2m30s
fraud-analyst-0a1b2c3d-wxyz   system:serviceaccount:agents:fraud-analyst     ledger        rule 1 (ddl-needs-approval)     0/1         ALTER TABLE ledger ADD COLUMN note text                 45s
"
        );
        let all = pending_table(&requests, now, true);
        assert!(all.starts_with("NAMESPACE   NAME "), "{all}");
        assert!(
            all.contains("\nagents      fraud-analyst-0a1b2c3d-wxyz "),
            "{all}"
        );
        assert_eq!(
            pending_table(&[typed(&decided)], now, false),
            "No pending approval requests.\n"
        );
    }

    #[test]
    fn watch_lines_carry_the_phase() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut v = sample();
        v["status"] = json!({"phase": "Approved"});
        let line = watch_line(&typed(&v), now, false);
        assert!(
            line.starts_with(&format!(
                "{NAME}       Approved  system:serviceaccount:payments:support-agent"
            )),
            "{line}"
        );
        assert!(line.ends_with("2m30s"), "{line}");
        assert!(watch_header(true).starts_with("NAMESPACE       NAME"));
    }

    #[test]
    fn the_outcome_names_the_stamped_reviewer_and_the_phase() {
        let review: Review = serde_json::from_value(json!({"decision": "Approved", "reviewer": "alice@example.com", "time": "2026-11-22T09:58:00Z"})).unwrap();
        let status: ApprovalRequestStatus = serde_json::from_value(json!({"phase": "Pending", "message": "waiting for 1 more approval (1 of 2: alice@example.com); expires at 2026-11-22T10:15:00Z"})).unwrap();
        assert_eq!(
            outcome(NAME, Some(&review), Some(&status), true),
            format!(
                "approvalrequest/{NAME} approved as alice@example.com\nphase: Pending (waiting for 1 more approval (1 of 2: alice@example.com); expires at 2026-11-22T10:15:00Z)\n"
            )
        );
        assert!(
            outcome(NAME, Some(&review), Some(&status), false)
                .ends_with("phase: not updated yet (the cardgate operator has not processed the review; check with kubectl get approvalrequest)\n")
        );
    }

    /// An API server holding one request: GET, JSON patches (applied for
    /// real, the first one refused after another review lands), and the
    /// list behind `await_condition`, where the operator has caught up.
    fn api_server(stored: Value) -> (Client, Arc<Mutex<Vec<Value>>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let patches: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = patches.clone();
        tokio::spawn(async move {
            let mut stored = stored;
            let path =
                format!("/apis/cardgate.dev/v1alpha1/namespaces/payments/approvalrequests/{NAME}");
            while let Some((req, send)) = handle.next_request().await {
                let (method, uri) = (req.method().clone(), req.uri().clone());
                let content_type = req
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string());
                let body = req.into_body().collect_bytes().await.unwrap();
                let reply = |status: u16, v: &Value| {
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(v).unwrap()))
                        .unwrap()
                };
                if method == "GET" && uri.path() == path {
                    send.send_response(reply(200, &stored));
                } else if method == "PATCH" && uri.path() == path {
                    assert_eq!(content_type.as_deref(), Some("application/json-patch+json"));
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    let first = {
                        let mut p = seen.lock().unwrap();
                        p.push(patch.clone());
                        p.len() == 1
                    };
                    if first {
                        // carol's review lands first; the test op fails.
                        stored["spec"]["reviews"] = json!([{"decision": "Approved", "reason": "ok", "reviewer": "carol", "groups": ["payments-oncall"], "time": "2026-11-22T09:58:30Z"}]);
                        stored["metadata"]["generation"] = json!(2);
                        send.send_response(reply(422, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid", "message": "the server rejected our request due to an error in our request"})));
                        continue;
                    }
                    let ops: json_patch::Patch = serde_json::from_value(patch).unwrap();
                    json_patch::patch(&mut stored, &ops.0).unwrap();
                    // What the mutating webhook does.
                    let last = stored["spec"]["reviews"]
                        .as_array_mut()
                        .unwrap()
                        .last_mut()
                        .unwrap();
                    last["reviewer"] = json!("alice@example.com");
                    last["groups"] = json!(["payments-oncall"]);
                    last["time"] = json!("2026-11-22T10:00:01Z");
                    stored["metadata"]["generation"] = json!(3);
                    send.send_response(reply(200, &stored));
                    // The operator reconciles.
                    stored["status"] = json!({"phase": "Approved", "observedGeneration": 3, "message": "approved by carol, alice@example.com", "uses": 0});
                } else if method == "GET" && uri.path() == path.rsplit_once('/').unwrap().0 {
                    if uri.query().is_some_and(|q| q.contains("watch=true")) {
                        drop(send);
                        continue;
                    }
                    send.send_response(reply(200, &json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequestList", "metadata": {"resourceVersion": "900"}, "items": [stored]})));
                } else {
                    panic!("unexpected {method} {uri}");
                }
            }
        });
        (Client::new(service, "payments"), patches)
    }

    #[tokio::test]
    async fn a_review_that_loses_a_race_is_re_read_and_appended() {
        let (client, patches) = api_server(sample());
        let out = review(
            &client,
            "payments",
            NAME,
            Decision::Approved,
            Some("ticket OPS-7"),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            format!(
                "approvalrequest/{NAME} approved as alice@example.com\nphase: Approved (approved by carol, alice@example.com)\n"
            )
        );
        let patches = patches.lock().unwrap();
        assert_eq!(patches.len(), 2);
        assert_eq!(
            patches[0][0],
            json!({"op": "test", "path": "/spec/reviews", "value": null})
        );
        assert_eq!(patches[1][0]["value"][0]["reviewer"], "carol");
        assert_eq!(
            patches[1][1],
            json!({"op": "add", "path": "/spec/reviews/-", "value": {"decision": "Approved", "reason": "ticket OPS-7"}})
        );
    }

    #[tokio::test]
    async fn a_refusal_is_reported_in_the_webhooks_words() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let stored = sample();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let v = if req.method() == "GET" {
                    (200, stored.clone())
                } else {
                    (
                        403,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                        "message": "admission webhook \"stamp.approvalrequests.cardgate.dev\" denied the request: cardgate: alice cannot approve their own request"}),
                    )
                };
                send.send_response(
                    Response::builder()
                        .status(v.0)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&v.1).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "payments");
        let err = review(&client, "payments", NAME, Decision::Approved, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cardgate: alice cannot approve their own request"
        );
    }

    /// A writer the test reads while the watch runs.
    #[derive(Clone, Default)]
    struct CapturedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for CapturedOutput {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn watch_prints_a_line_per_change_of_phase_or_reviews() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let pending = sample();
        let mut approved = sample();
        approved["metadata"]["resourceVersion"] = json!("902");
        approved["status"] = json!({"phase": "Approved"});
        tokio::spawn(async move {
            let mut open = Vec::new();
            let mut watches = 0;
            while let Some((req, send)) = handle.next_request().await {
                let query = req.uri().query().unwrap_or_default().to_string();
                assert_eq!(
                    req.uri().path(),
                    "/apis/cardgate.dev/v1alpha1/namespaces/payments/approvalrequests"
                );
                let body = if !query.contains("watch=true") {
                    serde_json::to_vec(&json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequestList", "metadata": {"resourceVersion": "900"}, "items": [pending]})).unwrap()
                } else if watches == 0 {
                    watches += 1;
                    // A status-only change that repeats what was shown, then
                    // the decision.
                    let mut again = pending.clone();
                    again["metadata"]["resourceVersion"] = json!("901");
                    let mut lines =
                        serde_json::to_vec(&json!({"type": "MODIFIED", "object": again})).unwrap();
                    lines.push(b'\n');
                    lines.extend(
                        serde_json::to_vec(&json!({"type": "MODIFIED", "object": approved}))
                            .unwrap(),
                    );
                    lines.push(b'\n');
                    lines
                } else {
                    open.push(send);
                    continue;
                };
                send.send_response(
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "payments");
        let out = CapturedOutput::default();
        let mut writer = out.clone();
        let task = tokio::spawn(async move { watch(&client, Some("payments"), &mut writer).await });
        let text = || String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        for _ in 0..500 {
            if text().lines().count() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let text = text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("NAME                              PHASE     REQUESTER"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(&format!("{NAME}       Pending   ")),
            "{text}"
        );
        assert!(
            lines[2].starts_with(&format!("{NAME}       Approved  ")),
            "{text}"
        );
    }
}
