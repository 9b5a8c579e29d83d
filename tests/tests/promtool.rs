//! `examples/prometheus/`: the rules and alerts pass `promtool check rules`, and their unit tests
//! (`wscap-rules.test.yml`) pass `promtool test rules` (Debian's `prometheus` package, installed
//! by `scripts/setup`). A broken expectation makes promtool fail: checked too, so this test can
//! fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use wscap_e2e::prometheus::find_on_path;
use wscap_e2e::workspace_root;

fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL_BIN")
        .map(PathBuf::from)
        .or_else(|| find_on_path("promtool"))
        .unwrap_or_else(|| {
            panic!("promtool not found on PATH: run scripts/setup (apt package `prometheus`)")
        })
}

fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run promtool {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn rules_and_alerts_pass_promtool_check_and_their_unit_tests() {
    let dir = workspace_root().join("examples/prometheus");
    let (ok, out) = run(
        &dir,
        &["check", "rules", "wscap-rules.yml", "wscap-alerts.yml"],
    );
    assert!(ok, "promtool check rules failed:\n{out}");
    let (ok, out) = run(&dir, &["test", "rules", "wscap-rules.test.yml"]);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");
}

#[test]
fn a_wrong_expectation_fails_promtool() {
    let src = workspace_root().join("examples/prometheus");
    let dir = wscap_e2e::scratch_dir("promtool");
    for f in ["wscap-rules.yml", "wscap-alerts.yml"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy rules");
    }
    let tests = std::fs::read_to_string(src.join("wscap-rules.test.yml")).expect("read tests");
    // The global-mode fleet limit of pod c is 10 (counted once); claim it is 20 (summed).
    let wrong = tests.replacen(
        "cluster_host:wscap_connection_limit:fleet{cluster=\"chat\",host=\"10.0.1.1:80\"}', value: 10}",
        "cluster_host:wscap_connection_limit:fleet{cluster=\"chat\",host=\"10.0.1.1:80\"}', value: 20}",
        1,
    );
    assert_ne!(wrong, tests, "the expectation to break was not found");
    std::fs::write(dir.join("wscap-rules.test.yml"), wrong).expect("write tests");
    let (ok, out) = run(&dir, &["test", "rules", "wscap-rules.test.yml"]);
    assert!(!ok, "promtool accepted a wrong expectation:\n{out}");
    assert!(out.contains("wscap_connection_limit:fleet"), "{out}");
}
