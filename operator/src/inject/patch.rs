//! The JSON Patch a mutating webhook returns.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// Why no trustworthy patch could be made.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A pod did not serialize (never expected for typed pods).
    #[error("cardgate: cannot serialize the pod: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The patch does not apply to the object the API server sent.
    #[error("cardgate: the injection patch does not apply to the submitted pod: {0}")]
    Apply(#[from] json_patch::PatchError),
    /// Applied to the submitted object, the patch gives something other than
    /// the injected pod, e.g. because the pod has fields this operator version
    /// does not know. Failing beats admitting a half-injected pod.
    #[error(
        "cardgate: the submitted pod has fields this operator version does not know, so the injection patch cannot be trusted; upgrade cardgate-operator"
    )]
    Mismatch,
}

/// The JSON Patch from `before` to `after`, computed as a diff of the typed
/// pods, and checked against `submitted` (the object exactly as the API server
/// sent it): the patch must turn it into `after`.
pub fn json_patch_between(
    submitted: &Value,
    before: &Pod,
    after: &Pod,
) -> Result<json_patch::Patch, PatchError> {
    let after = serde_json::to_value(after)?;
    let patch = json_patch::diff(&serde_json::to_value(before)?, &after);
    let mut applied = submitted.clone();
    json_patch::patch(&mut applied, &patch.0)?;
    if without_nulls(applied) != after {
        return Err(PatchError::Mismatch);
    }
    Ok(patch)
}

/// `value` without object members that are null: the API server writes
/// `"creationTimestamp": null` where typed objects omit the field.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn patch_turns_the_submitted_object_into_the_new_pod() {
        let submitted = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": null},
            "spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                     "containers": [{"name": "app", "image": "app"}]}});
        let before = pod(submitted.clone());
        let mut after = before.clone();
        let spec = after.spec.as_mut().unwrap();
        spec.init_containers.as_mut().unwrap().insert(
            0,
            k8s_openapi::api::core::v1::Container {
                name: "side".into(),
                ..Default::default()
            },
        );
        let patch = json_patch_between(&submitted, &before, &after).unwrap();
        let mut doc = submitted.clone();
        json_patch::patch(&mut doc, &patch.0).unwrap();
        assert_eq!(pod(doc), after);
    }

    #[test]
    fn unknown_fields_in_the_submitted_pod_are_refused() {
        let submitted = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "init", "image": "busybox", "futureField": 1}],
                     "containers": [{"name": "app", "image": "app"}]}});
        let before = pod(submitted.clone());
        let mut after = before.clone();
        after
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()
            .insert(
                0,
                k8s_openapi::api::core::v1::Container {
                    name: "side".into(),
                    ..Default::default()
                },
            );
        assert!(matches!(
            json_patch_between(&submitted, &before, &after),
            Err(PatchError::Mismatch)
        ));
    }
}
