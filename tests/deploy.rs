//! The deployment artefacts (deploy/): the image is built and run as an operator would run it,
//! the Kubernetes manifests render and validate, the compose stack's files are valid, and every
//! metric the alerts and the dashboard use is one Revo exports. Needs podman, runc, debootstrap,
//! kubectl, docker-compose and haproxy, which scripts/test.sh installs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed (scripts/test.sh installs it)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_image_builds_runs_read_only_as_non_root_and_generates_locally() {
    for t in ["podman", "runc", "debootstrap"] {
        need(t);
    }
    // A binary built outside the image (this build's), on a debootstrap base: no registry.
    let out =
        run(Command::new(repo().join("deploy/test-image.sh")).arg(env!("CARGO_BIN_EXE_revo")));
    assert!(out.contains("image ok"), "{out}");
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    need("kubectl");
    need("npm");
    let mut cmd = Command::new(repo().join("deploy/k8s/validate.sh"));
    if let Ok(py) = std::env::var("TEST_PYTHON") {
        cmd.env("PYTHON", py);
    }
    let out = run(&mut cmd);
    for line in [
        "base: 25 core resources valid",
        "production: 25 core resources valid",
        "base: 5 custom resources valid, 0 failed",
        "production: 5 custom resources valid, 0 failed",
    ] {
        assert!(out.contains(line), "expected `{line}` in\n{out}");
    }
}

#[test]
fn the_validator_refuses_a_broken_manifest() {
    // The same checks on a copy with one wrong field type: proof that they can fail.
    need("kubectl");
    let dir = std::env::temp_dir().join(format!("revo-k8s-{}", uuid::Uuid::now_v7().simple()));
    run(Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy/k8s"))
        .arg(&dir));
    let edge = dir.join("base/edge.yaml");
    let text = std::fs::read_to_string(&edge).unwrap();
    std::fs::write(&edge, text.replace("replicas: 3", "replicas: three")).unwrap();
    let mut cmd = Command::new(dir.join("validate.sh"));
    if let Ok(py) = std::env::var("TEST_PYTHON") {
        cmd.env("PYTHON", py);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a string replica count passed validation"
    );
    assert!(
        err.contains("base does not pass kubernetes-validate"),
        "{err}"
    );
}

#[test]
fn the_compose_stack_is_valid() {
    need("docker-compose");
    need("haproxy");
    let deploy = repo().join("deploy");
    let out = run(Command::new("docker-compose")
        .args(["-f", "compose.yaml", "config", "--services"])
        .current_dir(&deploy)
        .env(
            "REVO_JWT_KEYS",
            "k1:0000000000000000000000000000000000000000",
        )
        .env("REVO_ADMIN_PASSWORD", "x")
        .env("GRAFANA_ADMIN_PASSWORD", "x"));
    for service in [
        "postgres",
        "nats",
        "migrate",
        "model-import",
        "edge-1",
        "edge-2",
        "worker",
        "lb",
        "prometheus",
        "grafana",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing:\n{out}"
        );
    }
    run(Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy.join("compose/haproxy.cfg")));
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("compose/grafana/dashboards/revo.json")).unwrap(),
    )
    .unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for what in [
        "Requests",
        "Local share",
        "Spend",
        "breakers",
        "Relay lag",
        "Rooms",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(what)),
            "no `{what}` panel in {titles:?}"
        );
    }
}

/// Every `revo_*` metric an alert or a dashboard panel names is defined in the code.
#[test]
fn alerts_and_dashboards_use_metrics_revo_exports() {
    let deploy = repo().join("deploy");
    let mut used = std::collections::BTreeSet::new();
    for f in [
        "prometheus/alerts.yml",
        "compose/grafana/dashboards/revo.json",
        "k8s/base/monitoring.yaml",
    ] {
        let text = std::fs::read_to_string(deploy.join(f)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("revo_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.clone(), |n, s| {
                    n.strip_suffix(s).map(str::to_owned).unwrap_or(n)
                });
            used.insert(base);
        }
    }
    let mut sources = String::new();
    for dir in ["src", "actors/src"] {
        let out = run(Command::new("grep")
            .args(["-rhoE", "\"revo_[a-z_]+\""])
            .arg(repo().join(dir)));
        sources += &out;
    }
    assert!(used.len() > 10, "{used:?}");
    for name in &used {
        // `revo_load` is no metric (the load tool's name in a comment, say); none is used here.
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{name} is not a metric Revo exports"
        );
    }
}
