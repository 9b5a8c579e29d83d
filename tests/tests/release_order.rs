//! When does a slot come free, relative to Envoy closing the upstream socket?
//!
//! A client that resets (RST) an upgraded WebSocket ends its stream at once, and Envoy then
//! closes the upstream socket to the pod. If the module released the slot before that close,
//! another stream could reach the pod while the old socket is still open (limit + 1 at the pod,
//! seen under load in the global churn test). This test reads the order from Envoy's own debug
//! log on the real binary: on each worker thread, every "released" line of the module must come
//! after the `closing socket` line of every upstream connection that thread opened. All of one
//! stream's hooks and its upstream connection run on one worker, so the order in the log is
//! the order of events.
//!
//! That order depends on the Envoy version (1.38 and 1.39 run the filter's destroy first); the
//! module declares it per host in its load line (`module/src/abi/host.rs`) and this test holds
//! the real binary to the declaration. It also checks what the peers saw: after each reset, the next client gets its 101 on the
//! freed slot (limit 1) and the pod never held two sockets whose peer was still open.

use wscap_e2e::client::Outcome;
use wscap_e2e::rig::{Rig, RigSpec};
use wscap_testkit::envoy_log::{check_release_after_upstream_close, events, Event};

const ROUNDS: usize = 40;
/// The module's debug line for a release.
const RELEASED: &str = "wscap: cluster pods: released";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_is_released_after_the_upstream_socket_closes() {
    let mut spec = RigSpec::new(2, 1, 1);
    spec.envoy_args = vec![
        "--component-log-level".into(),
        "connection:debug,dynamic_modules:debug".into(),
    ];
    let rig = Rig::start(&spec).await;
    for round in 0..ROUNDS {
        let a = rig.connect().await.expect_open("first");
        a.reset();
        // The slot the reset freed comes back (a connection racing Envoy's processing of
        // the RST may be refused first).
        let b = wscap_e2e::eventually(
            &format!("round {round}: a 101 on the slot the reset freed"),
            wscap_e2e::SETTLE,
            || async {
                match rig.connect().await {
                    Outcome::Open(b) => Ok(b),
                    _ => Err("refused".to_owned()),
                }
            },
        )
        .await;
        b.close().await;
        // The next round starts once this stream was released (its close reply can reach the
        // client before Envoy tears the stream down), so one worker's log never interleaves a
        // new stream's upstream connection with an older stream's teardown.
        let host = rig.backends[0].host();
        wscap_e2e::eventually(
            &format!("round {round}: released after the close"),
            wscap_e2e::SETTLE,
            || async {
                let a = rig.wscap_active(&host).await;
                (a == 0).then_some(()).ok_or(format!("active {a}"))
            },
        )
        .await;
    }
    assert_eq!(
        rig.backends[0].max_seen(),
        1,
        "the pod held two open WebSockets on a limit of 1"
    );
    // The last close may still be in flight.
    let log = wscap_e2e::eventually("every release logged", wscap_e2e::SETTLE, || async {
        let log = rig.envoy.log();
        let n = events(&log, RELEASED)
            .iter()
            .filter(|(_, e)| *e == Event::Release)
            .count();
        (n == 2 * ROUNDS)
            .then(|| log.clone())
            .ok_or(format!("{n} releases logged, want {}", 2 * ROUNDS))
    })
    .await;

    // The order this Envoy gives, as the module's host switch declares it at load
    // (`module/src/abi/host.rs`, `ReleaseOrder`): 1.40 closes the upstream socket first; 1.38 and
    // 1.39 run the filter's destroy first. The real binary must behave as declared.
    let version = wscap_e2e::envoy_version();
    let declared = log
        .lines()
        .find_map(|l| l.split_once("wscap: host Envoy ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once("release order: ").map(|(_, o)| o.trim()))
        .unwrap_or_else(|| panic!("Envoy {version}: no host line with a release order"));
    eprintln!("Envoy {version}: release order declared: {declared}");
    match declared {
        "after the upstream close" => {
            let releases = check_release_after_upstream_close(&log, RELEASED)
                .unwrap_or_else(|e| panic!("Envoy {version}: {e}"));
            assert_eq!(releases, 2 * ROUNDS);
        }
        "before the upstream close" => {
            let seen = check_release_after_upstream_close(&log, RELEASED);
            assert!(
                seen.is_err(),
                "Envoy {version} closed every upstream socket before the release: the host switch should say so"
            );
        }
        other => panic!("Envoy {version}: unknown release order {other:?}"),
    }
}
