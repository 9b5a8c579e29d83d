//! Probe (local mode, one Envoy): after a client resets (RST) its WebSocket, how soon can the
//! freed slot be used, and does the pod then briefly hold limit + 1? Prints what it saw.
//! `cargo test -p wscap-e2e --test global_rst_probe -- --ignored --nocapture`

use wscap_e2e::client::Outcome;
use wscap_e2e::rig::{Rig, RigSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "probe: run with --ignored --nocapture"]
async fn rst_then_reuse_in_local_mode() {
    let rig = Rig::start(&RigSpec::new(2, 1, 1)).await;
    let (mut reused, mut refused) = (0, 0);
    for _ in 0..300 {
        let a = rig.connect().await.expect_open("first");
        a.reset();
        match rig.connect().await {
            Outcome::Open(b) => {
                reused += 1;
                b.close().await;
            }
            _ => refused += 1,
        }
    }
    println!(
        "local mode, limit 1: after RST the next connection got 101 {reused} times, was refused {refused} times; pod peak {}",
        rig.backends[0].max_seen()
    );
}
