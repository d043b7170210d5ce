//! The report as one self-contained HTML page for a person to read and
//! hand on: inline CSS, no scripts, no external assets (links, fonts,
//! images), every value escaped.

use std::fmt::Write;

use super::report::{Report, Requirement, Status};
use super::{RecordRef, Severity};

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#eee}.pass{color:#060}.fail{color:#a00;font-weight:bold}.info{color:#446}\
.banner{padding:.75em;font-size:1.3em;margin-bottom:1em}\
.ok{background:#dfd}.bad{background:#fdd}code{font-size:.9em}";

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the report.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<title>cardgate audit evidence</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>cardgate audit evidence</h1>\n");
    let (class, verdict) = if r.verified {
        ("ok", "VERIFIED: no finding fails verification")
    } else {
        ("bad", "FAILED: see the findings below")
    };
    let _ = writeln!(
        h,
        "<div id=\"verdict\" class=\"banner {class}\">{verdict}</div><p>Generated {}. PCI DSS v4.0.1.</p>",
        escape(&r.generated)
    );
    summary(&mut h, r);
    requirements(&mut h, r);
    findings(&mut h, r);
    chains(&mut h, r);
    approvals(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn refs(list: &[RecordRef]) -> String {
    list.iter()
        .map(|r| format!("<code>{}</code>", escape(&r.to_string())))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn row(h: &mut String, cells: &[String]) {
    h.push_str("<tr>");
    for c in cells {
        let _ = write!(h, "<td>{c}</td>");
    }
    h.push_str("</tr>\n");
}

fn head(h: &mut String, id: &str, title: &str, columns: &[&str]) {
    let _ = write!(h, "<h2 id=\"{id}\">{title}</h2>\n<table><tr>");
    for c in columns {
        let _ = write!(h, "<th>{c}</th>");
    }
    h.push_str("</tr>\n");
}

fn summary(h: &mut String, r: &Report) {
    let s = &r.summary;
    head(h, "summary", "Summary", &["", ""]);
    let opt = |v: &Option<String>| escape(v.as_deref().unwrap_or("-"));
    let items = [
        ("Records", s.records.to_string()),
        ("Chains", s.chains.to_string()),
        (
            "Lines / bytes scanned",
            format!("{} / {}", s.lines, s.bytes),
        ),
        (
            "Time range (UTC)",
            format!("{} to {}", opt(&s.first_time), opt(&s.last_time)),
        ),
        ("Denials", s.denials.to_string()),
        ("Approvals", s.approvals.to_string()),
        ("Masked values", s.masked_values.to_string()),
        ("Other lines (not records)", s.other_lines.to_string()),
    ];
    for (k, v) in items {
        row(h, &[k.to_string(), v]);
    }
    h.push_str("</table>\n");
    head(
        h,
        "identities",
        "Identities",
        &["Subject", "Issuer", "Records"],
    );
    for i in &s.identities {
        row(
            h,
            &[
                escape(&i.subject),
                escape(i.issuer.as_deref().unwrap_or("(cluster user)")),
                i.records.to_string(),
            ],
        );
    }
    h.push_str("</table>\n");
    head(h, "denials", "Denials (first records)", &["Record"]);
    for d in &s.denial_records {
        row(h, &[refs(std::slice::from_ref(d))]);
    }
    h.push_str("</table>\n");
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Pass => "<span class=\"pass\">pass</span>",
        Status::Fail => "<span class=\"fail\">FAIL</span>",
        Status::Info => "<span class=\"info\">info</span>",
    }
}

fn requirements(h: &mut String, r: &Report) {
    head(
        h,
        "requirements",
        "PCI DSS v4.0.1 requirements",
        &[
            "Requirement",
            "Status",
            "What cardgate does",
            "What the export shows",
            "Findings and exceptions",
        ],
    );
    for q in &r.requirements {
        requirement(h, r, q);
    }
    h.push_str("</table>\n");
}

fn requirement(h: &mut String, r: &Report, q: &Requirement) {
    let evidence = q
        .evidence
        .iter()
        .map(|e| escape(e))
        .collect::<Vec<_>>()
        .join("<br>");
    let mut found: Vec<String> = q
        .findings
        .iter()
        .map(|&i| escape(&r.findings[i].message))
        .collect();
    if !q.exceptions.is_empty() {
        found.push(format!("records: {}", refs(&q.exceptions)));
    }
    row(
        h,
        &[
            format!(
                "<span id=\"req-{}\">{}</span><br>{}",
                escape(&q.id.replace([',', ' '], "")),
                escape(q.id),
                escape(q.title)
            ),
            status(q.status).to_string(),
            escape(q.control),
            evidence,
            found.join("<br>"),
        ],
    );
}

fn findings(h: &mut String, r: &Report) {
    head(
        h,
        "findings",
        "Findings",
        &["Severity", "Kind", "Finding", "Records"],
    );
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Failure => "<span class=\"fail\">failure</span>",
            Severity::Warning => "warning",
        };
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        row(
            h,
            &[
                sev.to_string(),
                escape(&kind),
                escape(&f.message),
                refs(&f.records),
            ],
        );
    }
    h.push_str("</table>\n");
}

fn chains(h: &mut String, r: &Report) {
    head(
        h,
        "chains",
        "Chains",
        &[
            "Chain", "Origin", "Records", "Seq", "Time", "Intact", "Closed",
        ],
    );
    for c in &r.chains {
        let seq = format!("{}..{}", c.first_seq.unwrap_or(0), c.last_seq.unwrap_or(0));
        let time = format!(
            "{}<br>{}",
            escape(c.first_time.as_deref().unwrap_or("-")),
            escape(c.last_time.as_deref().unwrap_or("-"))
        );
        row(
            h,
            &[
                format!("<code>{}</code>", escape(&c.id)),
                escape(&super::chains::who(c)),
                c.records.to_string(),
                seq,
                time,
                if c.intact {
                    "yes"
                } else {
                    "<span class=\"fail\">no</span>"
                }
                .into(),
                if c.closed { "yes" } else { "no" }.into(),
            ],
        );
    }
    h.push_str("</table>\n");
}

fn approvals(h: &mut String, r: &Report) {
    head(
        h,
        "approvals",
        "Approvals",
        &[
            "Request",
            "Requester",
            "Reviews (reviewer, decision, groups)",
            "Decisions",
            "Statements run",
        ],
    );
    for a in &r.approvals {
        let reviews = a
            .reviews
            .iter()
            .map(|v| {
                escape(&format!(
                    "{} {}{} [{}]",
                    v.reviewer,
                    v.decision,
                    if v.counted { "" } else { " (not counted)" },
                    v.groups.join(", ")
                ))
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let decisions = a
            .decisions
            .iter()
            .map(|(d, _)| escape(d))
            .collect::<Vec<_>>()
            .join(", ");
        row(
            h,
            &[
                escape(&a.name),
                escape(a.requester.as_deref().unwrap_or("(not recorded)")),
                reviews,
                decisions,
                refs(&a.runs),
            ],
        );
    }
    h.push_str("</table>\n");
}
