//! Instruction budget of wscap's hooks, counted by valgrind's callgrind (`wscap-hookcost`):
//! deterministic counts, not times, so this holds on a busy machine. Needs valgrind
//! (`scripts/setup`) and the release `libwscap.so` (`cargo build --release -p wscap-envoy`;
//! `scripts/test` builds it).
//!
//! Measured at the commit that added this test (release module, x86-64, rustc 1.95): 2060
//! instructions per WebSocket handshake, 4 per frame (2 body hooks), 433 per plain request. The
//! budgets leave about 2x headroom; a change that needs more should say why and move them.
//!
//! Moved since: the handshake now also reads the routed cluster, the route's settings and looks
//! the cluster up (shared gateways: ~2820), and registers each upgraded stream where a rebalance
//! or drain can close it (a scheduler and an ordered-map insert: ~4280 in all). Callbacks are
//! called through addresses resolved at load (plain request 433 -> ~460). Budget: 5000.
//! The closable streams then moved from one ordered map under one process-wide lock to 16
//! shards by pod, keyed by the pod's socket address and the cluster handle (no string copies):
//! 4232 -> 3890 per handshake.
//!
//! Global mode while the shares suffice (`wscap-hookcost --global`: a real `redis-server`, the
//! bootstrap extension starts the coordinator, the streams run once every pod has a share with
//! room to spare) must cost the hooks no more than local mode, within 3 % per handshake: the
//! coordinator works on its own thread, and an admission under a share is core's ordinary
//! admission under a cap. Also needs `redis-server` (`scripts/setup`).

use std::process::Command;

/// Instructions per WebSocket handshake (filter hooks + the LB's choose_host).
const HANDSHAKE: f64 = 5000.0;
/// Instructions per WebSocket frame (request_body + response_body).
const FRAME: f64 = 8.0;
/// Instructions per plain HTTP request.
const PLAIN: f64 = 900.0;
/// Global mode (shares suffice) per handshake, as a multiple of local mode.
const GLOBAL_HANDSHAKE_RATIO: f64 = 1.03;

#[test]
fn hooks_stay_within_their_instruction_budget() {
    let out = Command::new(env!("CARGO_BIN_EXE_wscap-hookcost"))
        .args(["--global", "--json"])
        .output()
        .expect("run wscap-hookcost");
    assert!(
        out.status.success(),
        "wscap-hookcost failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON from wscap-hookcost");
    let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let (hs, frame, plain) = (get("handshake"), get("frame"), get("plain"));
    eprintln!(
        "instructions per handshake {hs:.1}, per frame {frame:.1}, per plain request {plain:.1}"
    );
    // The hooks ran: an admission reads headers, picks a pod, steers, confirms and releases.
    assert!(
        hs > 200.0,
        "implausibly few instructions per handshake: {hs}"
    );
    assert!(
        plain > 20.0,
        "implausibly few instructions per plain request: {plain}"
    );
    assert!(
        hs <= HANDSHAKE,
        "{hs:.0} instructions per handshake, budget {HANDSHAKE}"
    );
    assert!(
        frame <= FRAME,
        "{frame:.1} instructions per frame, budget {FRAME}"
    );
    assert!(
        plain <= PLAIN,
        "{plain:.0} instructions per plain request, budget {PLAIN}"
    );
    let global = |k: &str| {
        v["global"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("no global.{k} in {v}"))
    };
    let (ghs, gframe, gplain) = (global("handshake"), global("frame"), global("plain"));
    eprintln!(
        "global mode: per handshake {ghs:.1} ({:.4} x local), per frame {gframe:.1}, per plain request {gplain:.1}",
        ghs / hs
    );
    assert!(
        ghs > 200.0,
        "implausibly few instructions per handshake in global mode: {ghs}"
    );
    assert!(
        ghs <= GLOBAL_HANDSHAKE_RATIO * hs,
        "global mode: {ghs:.0} instructions per handshake, {:.4} x local mode's {hs:.0}, budget {GLOBAL_HANDSHAKE_RATIO} x",
        ghs / hs
    );
    assert!(
        gframe <= FRAME,
        "global mode: {gframe:.1} instructions per frame, budget {FRAME}"
    );
    assert!(
        gplain <= PLAIN,
        "global mode: {gplain:.0} instructions per plain request, budget {PLAIN}"
    );
}
