//! `"refuse_with": "close_1013"` on the real Envoy: a refused upgrade gets `101` from the module
//! itself and then a WebSocket close frame 1013 "Try Again Later" with the reason, which a real
//! client (tungstenite, as a browser's `onclose` would) reads. The pod never sees the attempt.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wscap_e2e::rig::{Rig, RigSpec, CLUSTER, PROM_REJECTED};
use wscap_e2e::{eventually, metrics, SETTLE};

async fn refused_close(rig: &Rig) -> (u16, String, Option<String>) {
    let sock = TcpStream::connect(("127.0.0.1", rig.port))
        .await
        .expect("tcp connect");
    let url = format!("ws://127.0.0.1:{}/ws", rig.port);
    let (mut ws, resp) = tokio_tungstenite::client_async(url, sock)
        .await
        .expect("the handshake succeeds (101 with a valid sec-websocket-accept)");
    let reason_header = resp
        .headers()
        .get("x-wscap-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame within 10 s")
    .expect("the close frame has a code");
    // Then the connection ends (tungstenite answers the close frame; Envoy closes the socket).
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return format!("error {e}"),
                None => return "eof".to_owned(),
            }
        }
    })
    .await
    .expect("the connection ends within 10 s after the close frame");
    eprintln!("after the close frame: {end}");
    (
        u16::from(frame.code),
        frame.reason.to_string(),
        reason_header,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_pod_refuses_with_close_1013() {
    let mut spec = RigSpec::new(1, 1, 1);
    spec.filter_extra
        .insert("refuse_with".into(), json!("close_1013"));
    let rig = Rig::start(&spec).await;
    let held = rig.connect().await.expect_open("the one slot");
    rig.expect_active("full", &[1]).await;

    for i in 0..3 {
        let (code, reason, header) = refused_close(&rig).await;
        assert_eq!(code, u16::from(CloseCode::Again), "close code, attempt {i}");
        assert_eq!(code, 1013);
        assert_eq!(reason, "no_capacity", "close reason, attempt {i}");
        assert_eq!(header.as_deref(), Some("no_capacity"));
    }
    // The refused attempts never reached the pod, and are counted as refusals.
    let pod = &rig.backends[0];
    assert_eq!(
        pod.accepted(),
        1,
        "the pod saw only the admitted connection"
    );
    assert!(pod.max_seen() <= 1);
    eventually("3 refusals counted", SETTLE, || async {
        let got = metrics::value(
            &rig.envoy.prometheus().await,
            PROM_REJECTED,
            &[("cluster", CLUSTER), ("reason", "no_capacity")],
        );
        (got == Some(3.0)).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;

    // A freed slot admits normally again.
    held.close().await;
    rig.expect_active("freed", &[0]).await;
    let c = rig.connect().await.expect_open("the freed slot");
    c.close().await;
    rig.expect_active("closed", &[0]).await;
}
