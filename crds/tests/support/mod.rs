//! Helpers shared by the crds integration tests: the generated CRD schemas as
//! the API server sees them, structural (OpenAPI) checks and CEL rules.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Parses a YAML file (first document) into JSON.
pub fn yaml_file(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The openAPIV3Schema of the CRD for `plural`, read from config/crd/bases.
pub fn schema(plural: &str) -> Value {
    let crd = yaml_file(&format!("config/crd/bases/cardgate.dev_{plural}.yaml"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Structural check of an object against a CRD schema, the way the API
/// server rejects wrong types, unknown enum values and missing fields.
pub fn structural_errors(plural: &str, object: &Value) -> Vec<String> {
    let mut s = schema(plural);
    // The API server ignores these keys when checking values.
    strip(&mut s, &["x-kubernetes-validations", "nullable", "format"]);
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&s)
        .expect("CRD schema compiles");
    let mut object = object.clone();
    // metadata is checked by the API server itself, not by the CRD schema.
    if let Some(m) = object.as_object_mut() {
        m.remove("metadata");
    }
    v.iter_errors(&object)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

fn strip(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) => {
            for k in keys {
                m.remove(*k);
            }
            m.values_mut().for_each(|v| strip(v, keys));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| strip(v, keys)),
        _ => {}
    }
}

/// CEL (`x-kubernetes-validations`) messages for an object, optionally as an
/// update of `old`; defaults are applied first, as the API server does.
pub fn cel_errors(plural: &str, object: &Value, old: Option<&Value>) -> Vec<String> {
    let s = schema(plural);
    match kube::core::cel::Validator::new().validate(&s, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Every problem the API server would report: structure, then CEL.
pub fn api_errors(plural: &str, object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut e = structural_errors(plural, object);
    if e.is_empty() {
        e = cel_errors(plural, object, old);
    }
    e
}
