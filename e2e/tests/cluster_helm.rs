//! The Helm chart against the real API server: `helm lint`, then `helm
//! install`, `helm upgrade` and `helm uninstall` of charts/cardgate with
//! the helm built from helm.sh/helm/v4 (e2e/controlplane).

use cardgate_e2e::controlplane::ControlPlane;

fn helm_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.helm("admin", args);
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn chart_lints_installs_upgrades_and_uninstalls() {
    let Some(cp) = ControlPlane::private() else {
        return;
    };
    helm_ok(&cp, &["lint", "charts/cardgate"]);
    let ns = ["--namespace", "cardgate-system", "--create-namespace"];
    let install = [&["install", "cardgate", "charts/cardgate"][..], &ns[..]].concat();
    helm_ok(&cp, &install);
    let status = helm_ok(
        &cp,
        &["status", "cardgate", "--namespace", "cardgate-system"],
    );
    assert!(status.contains("STATUS: deployed"), "{status}");
    let crds = cp.kubectl("admin", &["get", "crd", "approvalrequests.cardgate.dev"]);
    assert!(
        crds.status.success(),
        "the chart installs its CRDs: {crds:?}"
    );

    let upgrade = [&["upgrade", "cardgate", "charts/cardgate"][..], &ns[..]].concat();
    helm_ok(&cp, &upgrade);
    let history = helm_ok(
        &cp,
        &["history", "cardgate", "--namespace", "cardgate-system"],
    );
    assert!(history.lines().count() >= 3, "two revisions: {history}");

    helm_ok(
        &cp,
        &["uninstall", "cardgate", "--namespace", "cardgate-system"],
    );
    let gone = cp.kubectl(
        "admin",
        &["get", "deployment", "-n", "cardgate-system", "-o", "name"],
    );
    assert!(
        String::from_utf8_lossy(&gone.stdout).trim().is_empty(),
        "uninstall removes the Deployment: {gone:?}"
    );
}
