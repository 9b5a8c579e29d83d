//! Real WebSocket clients connecting through Envoy.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::backend::BACKEND_HEADER;
use crate::http::Response;

/// An open WebSocket (the client got `101`).
pub struct WsClient {
    ws: Option<WebSocketStream<TcpStream>>,
    /// The backend that accepted it (from the `x-backend` header of the 101).
    pub backend: String,
}

/// How a connection attempt ended.
#[allow(clippy::large_enum_variant)] // a test value, moved a handful of times
pub enum Outcome {
    /// `101 Switching Protocols`.
    Open(WsClient),
    /// Any other HTTP response: status, headers and body as the client got them.
    Refused(Response),
    /// No HTTP response at all (connection reset, timeout...).
    Failed(String),
}

impl Outcome {
    /// The status the client saw (101 when open, 0 when no response).
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Open(_) => 101,
            Outcome::Refused(r) => r.status,
            Outcome::Failed(_) => 0,
        }
    }

    /// Unwrap an open connection, panicking with what happened instead.
    pub fn expect_open(self, what: &str) -> WsClient {
        match self {
            Outcome::Open(c) => c,
            Outcome::Refused(r) => panic!(
                "{what}: expected 101, got {} headers={:?} body={:?}",
                r.status,
                r.headers,
                r.text()
            ),
            Outcome::Failed(e) => panic!("{what}: expected 101, connection failed: {e}"),
        }
    }

    /// Unwrap a refusal, panicking if the connection was opened.
    pub fn expect_refused(self, what: &str) -> Response {
        match self {
            Outcome::Open(c) => panic!("{what}: expected a refusal, got 101 from {}", c.backend),
            Outcome::Refused(r) => r,
            Outcome::Failed(e) => panic!("{what}: expected a refusal, connection failed: {e}"),
        }
    }
}

/// Open a WebSocket to `127.0.0.1:port` at `path` (10 s timeout).
pub async fn connect(port: u16, path: &str) -> Outcome {
    connect_with(port, path, &[]).await
}

/// [`connect`] with extra request headers (e.g. the header a `cluster_header` route reads).
pub async fn connect_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Outcome {
    match tokio::time::timeout(Duration::from_secs(10), connect_inner(port, path, headers)).await {
        Ok(o) => o,
        Err(_) => Outcome::Failed("handshake timed out".into()),
    }
}

async fn connect_inner(port: u16, path: &str, headers: &[(&str, &str)]) -> Outcome {
    use tungstenite::client::IntoClientRequest;
    let sock = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("tcp connect: {e}")),
    };
    let _ = sock.set_nodelay(true);
    let mut request = match format!("ws://127.0.0.1:{port}{path}").into_client_request() {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("request: {e}")),
    };
    for (k, v) in headers {
        match (
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()),
            tungstenite::http::HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                request.headers_mut().insert(k, v);
            }
            _ => return Outcome::Failed(format!("bad header {k}: {v}")),
        }
    }
    match tokio_tungstenite::client_async(request, sock).await {
        Ok((ws, resp)) => {
            let backend = resp
                .headers()
                .get(BACKEND_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Outcome::Open(WsClient {
                ws: Some(ws),
                backend,
            })
        }
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.body().clone().unwrap_or_default();
            Outcome::Refused(Response {
                status,
                headers,
                body,
            })
        }
        Err(e) => Outcome::Failed(format!("handshake: {e}")),
    }
}

impl WsClient {
    fn ws(&mut self) -> &mut WebSocketStream<TcpStream> {
        self.ws.as_mut().expect("websocket already consumed")
    }

    /// Send a text message and expect the backend's echo. Proves the tunnel is alive end to end.
    pub async fn echo(&mut self, text: &str) -> Result<(), String> {
        let ws = self.ws();
        ws.send(Message::Text(text.to_string().into()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let fut = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                    Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("recv: {e}")),
                    None => return Err("stream ended".into()),
                }
            }
        };
        let got = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "echo timed out".to_string())??;
        if got == text {
            Ok(())
        } else {
            Err(format!("echo mismatch: sent {text:?}, got {got:?}"))
        }
    }

    /// Close with a client close frame, wait (up to 10 s) for the peer's close frame, then close
    /// the TCP connection. (Waiting for the server to close TCP first, as RFC 6455 prefers, would
    /// wait out Envoy's `delayed_close_timeout`, 1 s by default, on every close.)
    pub async fn close(mut self) {
        let mut ws = self.ws.take().expect("websocket");
        let _ = ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Drop the TCP connection without a close frame, with an RST (SO_LINGER 0).
    pub fn reset(mut self) {
        let ws = self.ws.take().expect("websocket");
        let sock = ws.into_inner();
        let _ = sock.set_zero_linger();
        drop(sock);
    }

    /// Wait until the other side ends the connection (close frame or EOF) — answering a close frame
    /// as a client does. Returns what ended it, or `Err` if still open after `deadline`.
    pub async fn wait_closed(&mut self, deadline: Duration) -> Result<String, String> {
        let ws = self.ws();
        let fut = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => {
                        // Let tungstenite send the close reply.
                        let _ = ws.flush().await;
                        return format!("close frame {f:?}");
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return format!("error {e}"),
                    None => return "eof".to_string(),
                }
            }
        };
        tokio::time::timeout(deadline, fut)
            .await
            .map_err(|_| format!("still open after {deadline:?}"))
    }
}

impl WsClient {
    /// Ask the backend to close this connection with a server close frame, and wait for the end.
    pub async fn server_close(&mut self) -> Result<String, String> {
        self.ws()
            .send(Message::Text(crate::backend::CLOSE_ME.into()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        self.wait_closed(Duration::from_secs(10)).await
    }
}
