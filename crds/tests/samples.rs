//! The shipped samples are valid (against the generated CRD schemas, their
//! CEL rules and the shared validators) and the invalid samples are rejected
//! with the message a user would need to fix them.

mod support;

use cardgate_crds::config::SidecarConfig;
use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use serde_json::Value;
use support::{api_errors, root, yaml_file};

fn plural(kind: &str) -> &'static str {
    match kind {
        "AccessPolicy" => "accesspolicies",
        "MaskingRule" => "maskingrules",
        "ApprovalRequest" => "approvalrequests",
        other => panic!("unexpected kind {other}"),
    }
}

/// Problems from the API server (schema + CEL) and from the shared
/// `validate()` the operator runs.
fn all_problems(obj: &Value) -> Vec<String> {
    let kind = obj["kind"].as_str().expect("kind");
    let mut problems = api_errors(plural(kind), obj, None);
    if !problems.is_empty() {
        return problems;
    }
    let typed = match kind {
        "AccessPolicy" => serde_json::from_value::<AccessPolicy>(obj.clone())
            .map(|p| p.spec.validate().map_err(|e| e.to_string())),
        "MaskingRule" => serde_json::from_value::<MaskingRule>(obj.clone())
            .map(|m| m.spec.validate().map_err(|e| e.to_string())),
        _ => Ok(Ok(())),
    };
    match typed {
        Err(e) => problems.push(format!("does not deserialize: {e}")),
        Ok(Err(e)) => problems.push(e),
        Ok(Ok(())) => {}
    }
    problems
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .expect("dir exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .map(|n| format!("{dir}/{n}"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_sample_is_valid() {
    let files = yaml_files("config/samples");
    assert!(files.len() >= 4, "samples missing: {files:?}");
    for f in files {
        let obj = yaml_file(&f);
        let problems = all_problems(&obj);
        assert!(problems.is_empty(), "{f}: {problems:#?}");
    }
}

#[test]
fn sample_policy_references_sample_masking_rules() {
    let policy: AccessPolicy =
        serde_json::from_value(yaml_file("config/samples/accesspolicy.yaml")).unwrap();
    for name in &policy.spec.masking_rules {
        let found = yaml_files("config/samples").iter().any(|f| {
            let v = yaml_file(f);
            v["kind"] == "MaskingRule" && v["metadata"]["name"] == name.as_str()
        });
        assert!(
            found,
            "the sample policy names MaskingRule {name}, which has no sample"
        );
    }
}

#[test]
fn every_invalid_sample_is_rejected_with_its_message() {
    let files = yaml_files("crds/tests/invalid");
    assert!(files.len() >= 10);
    for f in files {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{f}: first line must be `# expect: MESSAGE`"));
        let problems = all_problems(&yaml_file(&f));
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{f}: expected a problem containing {expect:?}, got {problems:#?}"
        );
    }
}

#[test]
fn the_digest_is_of_the_bytes_loaded() {
    use sha2::{Digest, Sha256};
    let path = root().join("config/standalone/cardgate.yaml");
    let (config, digest) = SidecarConfig::load_with_digest(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config, SidecarConfig::load(&path).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
}

#[test]
fn standalone_config_loads_and_summarizes() {
    let path = root().join("config/standalone/cardgate.yaml");
    let config = SidecarConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // Relative paths resolve next to the file.
    let jwks = config.identity.issuers[0].jwks_file.as_deref().unwrap();
    assert!(
        jwks.ends_with("config/standalone/state/dev-jwks.json"),
        "{jwks}"
    );
    let text = cardgate_crds::summary::summarize(&config);
    for needle in [
        "Policy standalone-demo",
        "read only on public.customers, public.orders, public.cards",
        "ALLOW",
        "HOLD FOR APPROVAL by user alice or group payments-oncall",
        "ddl, dangerous, unparseable",
        "DENY",
        "otherwise: DENY",
        "card numbers: first 6 and last 4 digits shown",
        "columns *.cvv, *.cvc: returned as NULL",
        "more than 1000 rows",
    ] {
        assert!(text.contains(needle), "summary lacks {needle:?}:\n{text}");
    }
}
