//! The example configs under `examples/envoy/`, with their fixed ports rewritten to real ones.
//!
//! The examples use 127.0.0.1:10000 (listener), :9901 (admin) and pods on :8081, :8082, :8083; the
//! EDS variant reads `/tmp/wscap-eds/pods.yaml`. Tests and the demo run them as they are, with only
//! those numbers and that path replaced, so the files people read are the files that are tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Pod ports used in the example files, in order.
pub const EXAMPLE_POD_PORTS: [u16; 3] = [8081, 8082, 8083];
/// The per-pod limits the examples configure, in pod order (default 5; pod 3 has metadata 3).
pub const EXAMPLE_LIMITS: [usize; 3] = [5, 5, 3];
/// `retry_after_seconds` in the examples.
pub const EXAMPLE_RETRY_AFTER: &str = "5";
/// Cluster name in the examples.
pub const EXAMPLE_CLUSTER: &str = "pods";
/// Listener name in the examples.
pub const EXAMPLE_LISTENER: &str = "ingress";
/// The EDS directory the EDS example names.
pub const EXAMPLE_EDS_DIR: &str = "/tmp/wscap-eds";

/// `examples/envoy/<rel>`.
pub fn example_path(rel: &str) -> PathBuf {
    crate::workspace_root().join("examples/envoy").join(rel)
}

fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    let n = text.matches(from).count();
    assert!(
        n >= 1,
        "{file}: expected {from:?} in the example, found none"
    );
    text.replace(from, to)
}

/// Rewrite an example's ports: listener → `listener_port` (0 = Envoy picks), admin → 0 (the
/// launcher reads it back), pods → `pods` (none for a file without endpoints); and with
/// `eds_dir`, the EDS directory.
pub fn rewrite(
    text: &str,
    file: &str,
    listener_port: u16,
    pods: &[SocketAddr],
    eds_dir: Option<&Path>,
) -> String {
    let mut t = replace_once(
        text,
        "port_value: 10000",
        &format!("port_value: {listener_port}"),
        file,
    );
    if t.contains("port_value: 9901") {
        t = t.replace("port_value: 9901", "port_value: 0");
    }
    if !pods.is_empty() {
        t = rewrite_pods(&t, file, pods);
    }
    if let Some(d) = eds_dir {
        t = replace_once(&t, EXAMPLE_EDS_DIR, &d.to_string_lossy(), file);
    }
    t
}

/// Rewrite the pod ports (`8081`, `8082`, `8083`) of an example file to `pods`' ports.
pub fn rewrite_pods(text: &str, file: &str, pods: &[SocketAddr]) -> String {
    assert_eq!(
        pods.len(),
        EXAMPLE_POD_PORTS.len(),
        "the examples have three pods"
    );
    let mut t = text.to_string();
    for (from, to) in EXAMPLE_POD_PORTS.iter().zip(pods) {
        t = replace_once(
            &t,
            &format!("port_value: {from}"),
            &format!("port_value: {}", to.port()),
            file,
        );
    }
    t
}

/// Read an example file.
pub fn read(rel: &str) -> String {
    let p = example_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}
