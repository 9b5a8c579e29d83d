//! The release package (`scripts/package`) works on its own: unpacked into an empty directory,
//! its checksums verify, and the real Envoy runs the packaged example config with
//! `dynamic_module_config: {module: {local: {filename: <absolute path>}}}` for all three
//! extensions (no search path, no cargo, nothing from the build tree); a WebSocket is admitted
//! up to each pod's cap and the next one is refused.
//!
//! Ignored by `cargo test` (it needs the tarball): `.ci/run` runs it after `scripts/package`.
//! The tarball: `$WSCAP_PACKAGE`, else the only `dist/wscap-*-linux-x86_64.tar.gz`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wscap_e2e::backend::Backend;
use wscap_e2e::client::connect;
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::example::{self, EXAMPLE_CLUSTER, EXAMPLE_LIMITS, EXAMPLE_LISTENER};
use wscap_e2e::{eventually, metrics, SETTLE};

fn tarball() -> PathBuf {
    if let Some(p) = std::env::var_os("WSCAP_PACKAGE") {
        return PathBuf::from(p);
    }
    let dist = wscap_e2e::workspace_root().join("dist");
    let found: Vec<PathBuf> = std::fs::read_dir(&dist)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/package first", dist.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("wscap-") && n.ends_with("-linux-x86_64.tar.gz")
        })
        .collect();
    assert_eq!(found.len(), 1, "one package expected in dist/: {found:?}");
    found.into_iter().next().unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unpacks into a fresh empty directory; returns the package's top directory.
fn unpack(tarball: &Path) -> PathBuf {
    let dir = wscap_e2e::scratch_dir("package");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "not empty");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(&dir));
    let tops: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tops.len(), 1, "one top directory: {tops:?}");
    tops.into_iter().next().unwrap()
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
#[ignore = "needs dist/wscap-*.tar.gz: .ci/run runs it after scripts/package"]
fn package_unpacks_verifies_and_runs_in_envoy() {
    let tarball = tarball();
    let top = unpack(&tarball);
    eprintln!(
        "package {} unpacked in {}",
        tarball.display(),
        top.display()
    );

    // The contents and their checksums: every file is listed, and every sum holds.
    for f in [
        "libwscap.so",
        "libwscap_ffi.so",
        "libwscap_ffi.a",
        "include/wscap.h",
        "examples/envoy/envoy.yaml",
        "README.md",
        "SHA256SUMS",
    ] {
        assert!(top.join(f).is_file(), "{f} missing from the package");
    }
    let sums = std::fs::read_to_string(top.join("SHA256SUMS")).unwrap();
    let mut listed: Vec<String> = sums
        .lines()
        .map(|l| l.split_once("  ").expect("sha256sum line").1.to_owned())
        .collect();
    listed.sort();
    let mut files = Vec::new();
    files_under(&top, &top, &mut files);
    files.retain(|f| f != "SHA256SUMS");
    files.sort();
    assert_eq!(
        listed, files,
        "SHA256SUMS lists exactly the package's files"
    );
    run(Command::new("sha256sum")
        .args(["--check", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(&top));
    let readme = std::fs::read_to_string(top.join("README.md")).unwrap();
    assert!(readme.contains("## Supported Envoy versions"), "{readme}");
    assert!(readme.contains("| 1.38.3 |"), "{readme}");
    assert!(readme.contains("glibc 2."), "{readme}");

    // The packaged example, each extension loading the packaged module by absolute path.
    let module = top.join("libwscap.so");
    let text = std::fs::read_to_string(top.join("examples/envoy/envoy.yaml")).unwrap();
    let by_name = "dynamic_module_config: { name: wscap, do_not_close: true }";
    assert_eq!(
        text.matches(by_name).count(),
        3,
        "three extensions in the example"
    );
    let by_path = format!(
        "dynamic_module_config: {{ module: {{ local: {{ filename: \"{}\" }} }}, do_not_close: true }}",
        module.display()
    );
    let text = text.replace(by_name, &by_path);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut pods = Vec::new();
        for i in 1..=3 {
            pods.push(Backend::start(&format!("pod-{i}")).await);
        }
        let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
        let yaml = example::rewrite(&text, "package envoy.yaml", 0, &addrs, None);
        let dir = wscap_e2e::scratch_dir("package-envoy");
        // Opts::plain: ENVOY_DYNAMIC_MODULES_SEARCH_PATH removed from Envoy's environment.
        let mut envoy = Envoy::try_start_yaml(&dir, &yaml, &Opts::plain(2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        // The module Envoy mapped is the packaged file, and no other libwscap.so.
        let pid = envoy.pid().expect("envoy pid");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mapped: std::collections::BTreeSet<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.ends_with("libwscap.so"))
            .collect();
        assert_eq!(
            mapped.into_iter().collect::<Vec<_>>(),
            vec![module.to_str().unwrap()],
            "Envoy mapped these libwscap.so files"
        );

        eventually("pods listed with their limits", SETTLE, || async {
            let doc = envoy.wscap().await;
            let got: Vec<i64> = pods
                .iter()
                .map(|b| metrics::host(&doc, EXAMPLE_CLUSTER, &b.host()).map_or(-1, |h| h.limit))
                .collect();
            let want: Vec<i64> = EXAMPLE_LIMITS.iter().map(|&n| n as i64).collect();
            (got == want)
                .then_some(())
                .ok_or(format!("limits {got:?}; {doc}"))
        })
        .await;
        let port = envoy.listener_port(EXAMPLE_LISTENER).await;
        let total: usize = EXAMPLE_LIMITS.iter().sum();
        let mut held = Vec::new();
        for i in 0..total {
            held.push(
                connect(port, "/ws")
                    .await
                    .expect_open(&format!("packaged module, connection {i}")),
            );
        }
        let r = connect(port, "/ws")
            .await
            .expect_refused("packaged module, one over the cap");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
        let got: Vec<usize> = pods.iter().map(Backend::active).collect();
        assert_eq!(got, EXAMPLE_LIMITS.to_vec(), "the pods' own counts");
        envoy.assert_running();
        drop(held);
    });
}
