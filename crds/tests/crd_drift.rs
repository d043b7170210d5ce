//! The CRD manifests on disk are exactly what the types generate; edit the
//! types and run `make crds`, never the YAML.

use cardgate_crds::v1alpha1::crd_files;

#[test]
fn crd_yaml_on_disk_matches_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (rel, generated) in crd_files().expect("CRDs serialize") {
        let on_disk = std::fs::read_to_string(root.join(&rel)).unwrap_or_default();
        if on_disk != generated {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "these files differ from the types; run `make crds`: {stale:?}"
    );
}

#[test]
fn crds_carry_names_columns_and_categories() {
    for crd in cardgate_crds::v1alpha1::crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["cardgate".to_string()][..])
        );
        assert_eq!(names.short_names.as_ref().map(Vec::len), Some(1));
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let expected: &[&str] = match names.kind.as_str() {
            "AccessPolicy" => &["Ready", "Targets", "Agents", "Age"],
            "MaskingRule" => &["Ready", "Detectors", "Action", "Age"],
            "ApprovalRequest" => &["Phase", "Requester", "Target", "Statement", "Age"],
            k => panic!("unexpected kind {k}"),
        };
        assert_eq!(columns, expected, "{}", names.kind);
    }
}
