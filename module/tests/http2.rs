//! HTTP/2 extended CONNECT (RFC 8441) WebSockets through the real Envoy 1.40 binary: does the
//! filter see them, admit them against the cap, refuse past it, and release on close?
//! Downstream is plaintext HTTP/2 (`allow_connect: true`); upstream is HTTP/1.1, so Envoy
//! turns the CONNECT into an HTTP/1.1 upgrade towards the backend.
//! Build the module first: `cargo build -p wscap-envoy`.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes};
use common::{eventually, free_port, Backend, Envoy, Setup};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request};
use serde_json::Value;
use tokio::net::TcpStream;
use wscap_testkit::envoy_log::check_release_after_upstream_close;

async fn connect(port: u16) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    // The server announces SETTINGS_ENABLE_CONNECT_PROTOCOL in its first SETTINGS frame.
    for _ in 0..100 {
        if send.is_extended_connect_protocol_enabled() {
            return send;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.expect("ready");
    }
    panic!("Envoy did not enable the extended CONNECT protocol");
}

/// Opens a WebSocket stream; `Err((status, x-wscap-reason))` when refused.
async fn open(
    send: &mut SendRequest<Bytes>,
    port: u16,
) -> Result<(SendStream<Bytes>, RecvStream), (u16, Option<String>)> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://127.0.0.1:{port}/ws"))
        .header("sec-websocket-version", "13")
        // RFC 8441 has no key; Envoy forwards headers as they are when it rewrites the CONNECT
        // into an HTTP/1.1 upgrade, and the HTTP/1.1 backend insists on one.
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, stream) = send.send_request(req, false).expect("send CONNECT");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("response timed out")
        .expect("response");
    if resp.status() == 200 {
        Ok((stream, resp.into_body()))
    } else {
        let reason = resp
            .headers()
            .get("x-wscap-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        Err((resp.status().as_u16(), reason))
    }
}

/// A masked client text frame (RFC 6455 §5.2), payload < 126 bytes.
fn text_frame(payload: &str) -> Bytes {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(f)
}

/// Sends `whoami` and reads the backend's unmasked text reply.
async fn whoami(tx: &mut SendStream<Bytes>, rx: &mut RecvStream) -> String {
    tx.send_data(text_frame("whoami"), false)
        .expect("send frame");
    let mut buf = Vec::new();
    loop {
        if buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7f) {
            return String::from_utf8_lossy(&buf[2..2 + usize::from(buf[1] & 0x7f)]).into_owned();
        }
        let mut chunk = tokio::time::timeout(Duration::from_secs(10), rx.data())
            .await
            .expect("frame timed out")
            .expect("stream ended")
            .expect("data");
        let _ = rx.flow_control().release_capacity(chunk.len());
        while chunk.has_remaining() {
            let n = chunk.chunk().len();
            buf.extend_from_slice(chunk.chunk());
            chunk.advance(n);
        }
    }
}

fn active(json: &Value, addr: &str) -> u64 {
    json["clusters"][0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == addr)
        .and_then(|h| h["active"].as_u64())
        .unwrap_or_else(|| panic!("no host {addr} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_websockets_are_capped_and_released() {
    let backend = Backend::start().await;
    let port = free_port();
    let backends = [(backend.addr, None)];
    let mut setup = Setup::new(port, &backends, 1);
    setup.http2 = true;
    let envoy = Envoy::start(&setup.bootstrap(), &[]).await;
    let addr = backend.addr.to_string();
    let json =
        || async { serde_json::from_str::<Value>(&envoy.admin_get("/wscap").await.body).unwrap() };

    let mut send = connect(port).await;
    let (mut tx, mut rx) = open(&mut send, port).await.expect("first is admitted");
    assert_eq!(
        whoami(&mut tx, &mut rx).await,
        addr,
        "the tunnel reaches the backend"
    );
    assert_eq!(
        active(&json().await, &addr),
        1,
        "the filter counted the HTTP/2 WebSocket"
    );

    let refused = open(&mut send, port).await.expect_err("limit 1");
    assert_eq!(refused, (503, Some("no_capacity".to_owned())));

    // Closing the HTTP/2 stream releases the slot.
    tx.send_data(Bytes::new(), true).expect("end stream");
    drop((tx, rx));
    eventually(
        "released after the stream ended",
        Duration::from_secs(5),
        || async { (active(&json().await, &addr) == 0).then_some(()) },
    )
    .await;
    let (_tx, _rx) = open(&mut send, port).await.expect("room again");
    assert_eq!(active(&json().await, &addr), 1);
}

/// A client that resets (RST_STREAM) its HTTP/2 WebSocket stream while the HTTP/2 connection
/// stays up: the slot is released only after Envoy closed the HTTP/1.1 upstream socket to the
/// pod (order read from Envoy's debug log on the stream's worker), and it is reusable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_is_released_after_the_upstream_socket_closes() {
    const ROUNDS: usize = 10;
    let backend = Backend::start().await;
    let port = free_port();
    let backends = [(backend.addr, None)];
    let mut setup = Setup::new(port, &backends, 1);
    setup.http2 = true;
    let envoy = Envoy::start(
        &setup.bootstrap(),
        &[
            "--component-log-level",
            "connection:debug,dynamic_modules:debug",
        ],
    )
    .await;
    let addr = backend.addr.to_string();
    let json =
        || async { serde_json::from_str::<Value>(&envoy.admin_get("/wscap").await.body).unwrap() };
    let send = connect(port).await;
    for round in 0..ROUNDS {
        let (mut tx, mut rx) = eventually(
            &format!("round {round}: admitted on the freed slot"),
            Duration::from_secs(5),
            || async { open(&mut send.clone(), port).await.ok() },
        )
        .await;
        assert_eq!(whoami(&mut tx, &mut rx).await, addr);
        tx.send_reset(h2::Reason::CANCEL);
        drop((tx, rx));
    }
    eventually("the last slot released", Duration::from_secs(5), || async {
        (active(&json().await, &addr) == 0).then_some(())
    })
    .await;
    let log = envoy.log();
    let released = check_release_after_upstream_close(&log, "wscap: cluster pods: released")
        .unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(released >= ROUNDS, "{released} releases logged");
}
