//! The chart's alerts: rendered by the real `helm`, checked by Prometheus's own `promtool check
//! rules`, and run by `promtool test rules` against `tests/alerts/rules-test.yaml`, which holds a
//! firing and a not-firing case for every alert. Each alert links a runbook that exists.

mod support;

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;
use support::helm::{chart, documents, find};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `promtool`, which `scripts/test` installs (Debian's `prometheus` package).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "promtool is needed: scripts/test installs it (Debian package prometheus)");
    Command::new("promtool")
}

/// The rule groups of the chart's PrometheusRule, rendered with the values file `values`.
fn rendered_rules(values: &str) -> Value {
    let tools = support::Tools::locate().expect("the test tools");
    let file = tempdir("alert-values").join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let output = Command::new(tools.binary("helm"))
        .args(["template", "dps-operator", &chart("dps-operator"), "--namespace", "dps-operator"])
        .args(["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"])
        .args(["--set", "metrics.prometheusRule.enabled=true", "-f"])
        .arg(&file)
        .output()
        .expect("helm runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let documents = documents(&String::from_utf8_lossy(&output.stdout));
    let rules = find(&documents, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    serde_json::json!({"groups": rules[0]["spec"]["groups"]})
}

fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect()
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("promtool runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn every_alert_passes_promtool_with_a_firing_and_a_quiet_case_and_links_its_runbook() {
    let rules = rendered_rules("");
    let dir = tempdir("alerts");
    let rules_file = dir.join("rules.yaml");
    std::fs::write(&rules_file, serde_yaml_ng::to_string(&rules).unwrap()).unwrap();
    run(promtool().args(["check", "rules"]).arg(&rules_file));

    let tests_text = std::fs::read_to_string(Path::new(ROOT).join("tests/alerts/rules-test.yaml")).unwrap();
    let tests_file = dir.join("rules-test.yaml");
    std::fs::write(&tests_file, &tests_text).unwrap();
    run(promtool().args(["test", "rules"]).arg(&tests_file));

    // Every alert is tested both ways, and its runbook exists where runbook_url points.
    let tests: Value = serde_yaml_ng::from_str(&tests_text).unwrap();
    let cases: Vec<Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .collect();
    let names: BTreeSet<&str> = alerts(&rules).iter().map(|a| a["alert"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in &names {
        let of_alert = || cases.iter().filter(|c| c["alertname"] == *name);
        let fires = of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let quiet = of_alert().any(|c| c["exp_alerts"].as_array().is_none_or(Vec::is_empty));
        assert!(fires && quiet, "{name}: a firing case {fires}, a quiet case {quiet}");
        let alert = alerts(&rules).into_iter().find(|a| a["alert"] == *name).unwrap();
        let url = alert["annotations"]["runbook_url"].as_str().unwrap();
        assert!(url.ends_with(&format!("/docs/runbooks/{name}.md")), "{url}");
        let runbook = std::fs::read_to_string(Path::new(ROOT).join(format!("docs/runbooks/{name}.md")))
            .unwrap_or_else(|_| panic!("docs/runbooks/{name}.md is missing"));
        for part in ["## Meaning", "## Confirm", "## What to do", "kubectl"] {
            assert!(runbook.contains(part), "docs/runbooks/{name}.md lacks {part:?}");
        }
    }
}

#[test]
fn each_alert_can_be_turned_off_and_its_thresholds_set() {
    let rules = rendered_rules(
        r#"
metrics:
  prometheusRule:
    jobSelector: job="dps"
    alerts:
      DpsThrottled: {enabled: false}
      DpsCertificateExpiringSoon: {days: 30}
      DpsOperatorReconcileErrors: {ratio: 0.25}
      DpsKeyRotationOverdue: {for: 2h}
"#,
    );
    let alerts = alerts(&rules);
    let named = |name: &str| alerts.iter().find(|a| a["alert"] == name).copied();
    assert!(named("DpsThrottled").is_none(), "turned off");
    assert_eq!(
        named("DpsCertificateExpiringSoon").unwrap()["expr"],
        "dps_operator_certificate_expiry_seconds < 2592000"
    );
    assert!(
        named("DpsOperatorReconcileErrors").unwrap()["expr"].as_str().unwrap().trim_end().ends_with("> 0.25")
    );
    assert_eq!(named("DpsKeyRotationOverdue").unwrap()["for"], "2h");
    assert_eq!(named("DpsOperatorAbsent").unwrap()["expr"], "absent(up{ job=\"dps\" } == 1)");

    // Off by default, like the ServiceMonitor.
    let tools = support::Tools::locate().expect("the test tools");
    let output = Command::new(tools.binary("helm"))
        .args(["template", "dps-operator", &chart("dps-operator")])
        .args(["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"])
        .output()
        .unwrap();
    assert!(find(&documents(&String::from_utf8_lossy(&output.stdout)), "PrometheusRule").is_empty());
}

/// A new directory of this process's own.
fn tempdir(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dps-operator-{name}-{}-{next}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
