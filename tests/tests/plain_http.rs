//! (f) Plain HTTP through the same listener is unaffected, also while every pod is full.

use wscap_e2e::backend::plain_body;
use wscap_e2e::http;
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_passes_untouched() {
    let mut rig = Rig::start(&RigSpec::new(wscap_e2e::concurrency(), 2, 1)).await;
    let addr = format!("127.0.0.1:{}", rig.port).parse().unwrap();
    let names: Vec<String> = rig.backends.iter().map(|b| b.name.clone()).collect();
    let check = |r: &http::Response| {
        assert_eq!(r.status, 200, "plain GET: {:?} {:?}", r.headers, r.text());
        let who = r.header("x-backend").expect("x-backend header").to_string();
        assert!(names.contains(&who), "from {who}");
        assert_eq!(r.text(), plain_body(&who), "body from the backend");
        assert_eq!(r.header("x-wscap-reason"), None);
    };
    for i in 0..4 {
        check(
            &http::get(addr, &format!("/plain/{i}"))
                .await
                .expect("plain GET"),
        );
    }
    // Fill every pod with WebSockets: plain requests still pass.
    let _a = rig.connect().await.expect_open("ws 1");
    let _b = rig.connect().await.expect_open("ws 2");
    assert_wscap_refusal(&rig.connect().await.expect_refused("ws 3"), "no_capacity");
    let rejected_before = rig.prom_rejected().await;
    for i in 0..6 {
        check(
            &http::get(addr, &format!("/plain/full/{i}"))
                .await
                .expect("plain GET while full"),
        );
    }
    // A request with `connection: upgrade` but no websocket upgrade is plain too.
    let r = http::request(addr, "GET", "/plain/h2c", &[("upgrade", "h2c")])
        .await
        .expect("h2c");
    check(&r);
    let served: usize = rig.backends.iter().map(|b| b.plain_requests()).sum();
    assert_eq!(served, 11, "every plain request reached a backend");
    rig.expect_active("plain requests changed nothing", &[1, 1])
        .await;
    assert_eq!(
        rig.prom_rejected().await,
        rejected_before,
        "no plain request was counted as rejected"
    );
    rig.envoy.assert_running();
}

/// A browser-style upgrade (`Connection: keep-alive, Upgrade`, `Upgrade: WebSocket`) is a
/// WebSocket to the module: counted while open, released when the client drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_style_upgrade_headers_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::start(&RigSpec::new(wscap_e2e::concurrency(), 1, 1)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", rig.port))
        .await
        .unwrap();
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        rig.port
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
    rig.expect_active("browser-style upgrade open", &[1]).await;
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("limit 1 taken"),
        "no_capacity",
    );
    drop(s);
    rig.expect_active("browser-style upgrade dropped", &[0])
        .await;
}
