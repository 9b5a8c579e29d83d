//! A real WebSocket backend "pod" on a loopback port.
//!
//! Each backend counts its own concurrent WebSocket connections and records the most it ever held;
//! that is the ground truth the tests compare the module's numbers with. It echoes messages, answers a
//! plain HTTP request with a known body, can close its connections with a close frame, refuse the
//! upgrade with a given status, or be "killed" (listener and every connection dropped at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Header the backend adds to its `101` and plain responses: its name.
pub const BACKEND_HEADER: &str = "x-backend";

/// A text message asking the backend to close that connection with a server close frame.
pub const CLOSE_ME: &str = "__wscap_e2e_close_me__";

/// Body of the plain HTTP answer of backend `name`.
pub fn plain_body(name: &str) -> String {
    format!("plain hello from {name}\n")
}

enum Cmd {
    Close,
}

struct Conn {
    cmd: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
    fd: RawFd,
}

#[derive(Default)]
struct Shared {
    active: AtomicUsize,
    max: AtomicUsize,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    plain: AtomicUsize,
    /// 0 = accept upgrades; otherwise the status to refuse them with.
    refuse_with: AtomicU16,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
    /// When each accepted upgrade was accepted.
    opened_at: Mutex<Vec<std::time::Instant>>,
}

/// Decrements the backend's live count when a connection task ends (also when aborted).
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut m) = self.shared.conns.lock() {
            m.remove(&self.id);
        }
    }
}

/// A running backend. Dropping it kills it.
pub struct Backend {
    /// Name, sent back in the `x-backend` header.
    pub name: String,
    /// Address it listens on (`127.0.0.1:port`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// Start a backend on a free loopback port. Needs a tokio runtime.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    /// Start a backend on a given loopback port (the demo uses the example config's ports).
    pub async fn start_on(name: &str, port: u16) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        Ok(Self::serve(name, listener))
    }

    /// Start a backend on a given loopback address, e.g. `127.0.0.3:port`: several "pods" on one
    /// port at distinct addresses, as a DNS-discovered Kubernetes Service sees them.
    pub async fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(name, listener))
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().expect("backend addr");
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let nm = name.to_string();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let sh = sh.clone();
                let nm = nm.clone();
                tokio::spawn(handle(sock, sh, nm));
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            shared,
            accept_task: Mutex::new(Some(accept_task)),
        }
    }

    /// `ip:port` as the module reports hosts.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// WebSocket connections open right now, as this backend sees them.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Most WebSocket connections this backend ever held at once, counted when each new one is
    /// accepted. A connection the proxy has already closed or reset (the kernel reports
    /// POLLRDHUP on it) but whose end this backend has not processed yet is not counted: the pod
    /// cannot tell when Envoy frees a slot except by that hang-up, so counting it would measure
    /// this backend's own scheduling, not the proxy.
    pub fn max_seen(&self) -> usize {
        self.shared.max.load(Ordering::SeqCst)
    }

    /// WebSocket upgrades this backend accepted in total.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// The most upgrades this backend accepted within any one-second window, as its own clock
    /// measured them (sliding window over the accept times).
    pub fn max_opens_per_second(&self) -> usize {
        let mut t = self
            .shared
            .opened_at
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        t.sort();
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..t.len() {
            while t[hi].duration_since(t[lo]) >= std::time::Duration::from_secs(1) {
                lo += 1;
            }
            best = best.max(hi + 1 - lo);
        }
        best
    }

    /// Time from this backend's first accepted upgrade to its last.
    pub fn opens_span(&self) -> std::time::Duration {
        let t = self
            .shared
            .opened_at
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        match (t.iter().min(), t.iter().max()) {
            (Some(a), Some(b)) => b.duration_since(*a),
            _ => std::time::Duration::ZERO,
        }
    }

    /// Upgrades this backend refused (while in refuse mode).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Plain (non-WebSocket) HTTP requests answered.
    pub fn plain_requests(&self) -> usize {
        self.shared.plain.load(Ordering::SeqCst)
    }

    /// Refuse WebSocket upgrades with `status` (e.g. 403, 404); `None` accepts again.
    pub fn refuse_upgrades(&self, status: Option<u16>) {
        self.shared
            .refuse_with
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Ask every open connection to close with a server close frame. Returns how many were asked.
    pub fn close_all(&self) -> usize {
        self.close_some(usize::MAX)
    }

    /// Ask up to `n` open connections to close with a server close frame. Returns how many.
    pub fn close_some(&self, n: usize) -> usize {
        let m = self.shared.conns.lock().expect("conns lock");
        let mut asked = 0;
        for c in m.values() {
            if asked == n {
                break;
            }
            if c.cmd.send(Cmd::Close).is_ok() {
                asked += 1;
            }
        }
        asked
    }

    /// Kill the backend: stop listening and drop every connection at once, no close frames.
    pub fn kill(&self) {
        if let Some(t) = self.accept_task.lock().expect("lock").take() {
            t.abort();
        }
        let tasks: Vec<JoinHandle<()>> = {
            let mut m = self.shared.conns.lock().expect("conns lock");
            m.values_mut().filter_map(|c| c.task.take()).collect()
        };
        for t in tasks {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn handle(sock: TcpStream, sh: Arc<Shared>, name: String) {
    // Look at the request head without consuming it, to route plain HTTP vs WebSocket upgrade.
    let mut buf = vec![0u8; 16 * 1024];
    let head = loop {
        let n = match tokio::time::timeout(Duration::from_secs(10), sock.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        };
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        }
        if n == buf.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let is_upgrade = head
        .lines()
        .any(|l| l.starts_with("upgrade:") && l.contains("websocket"));
    if is_upgrade {
        websocket(sock, sh, name).await;
    } else {
        plain(sock, sh, name, head.len() + 4).await;
    }
}

async fn plain(mut sock: TcpStream, sh: Arc<Shared>, name: String, head_len: usize) {
    let mut head = vec![0u8; head_len];
    if sock.read_exact(&mut head).await.is_err() {
        return;
    }
    sh.plain.fetch_add(1, Ordering::SeqCst);
    let body = plain_body(&name);
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{BACKEND_HEADER}: {name}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

// The callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn websocket(sock: TcpStream, sh: Arc<Shared>, name: String) {
    let refuse = sh.refuse_with.load(Ordering::SeqCst);
    let nm = name.clone();
    let cb = move |_req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if refuse != 0 {
            let mut e = ErrorResponse::new(Some(format!("refused by {nm}\n")));
            *e.status_mut() = StatusCode::from_u16(refuse).unwrap_or(StatusCode::FORBIDDEN);
            e.headers_mut()
                .insert(BACKEND_HEADER, HeaderValue::from_str(&nm).expect("name"));
            return Err(e);
        }
        resp.headers_mut()
            .insert(BACKEND_HEADER, HeaderValue::from_str(&nm).expect("name"));
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(sock, cb).await {
        Ok(ws) => ws,
        Err(_) => {
            if refuse != 0 {
                sh.refused.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    };
    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
    let fd = ws.get_ref().as_raw_fd();
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        // Count and register under the lock, so that close_all()/kill() see every counted
        // connection and the peak only counts connections the proxy has not already closed.
        let mut m = sh.conns.lock().expect("conns lock");
        let still_open = m.values().filter(|c| !peer_hung_up(c.fd)).count();
        sh.max.fetch_max(still_open + 1, Ordering::SeqCst);
        sh.active.fetch_add(1, Ordering::SeqCst);
        sh.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut t) = sh.opened_at.lock() {
            t.push(std::time::Instant::now());
        }
        m.insert(
            id,
            Conn {
                cmd: tx,
                task: None,
                fd,
            },
        );
    }
    let state = ConnState {
        _guard: LiveGuard {
            shared: sh.clone(),
            id,
        },
        ws,
    };
    // The connection runs in its own task so that kill() can abort it.
    let task = tokio::spawn(async move {
        let mut state = state;
        let ws = &mut state.ws;
        let mut closing = false;
        // Once we sent a close frame, give the peer a few seconds to answer, then drop the socket.
        let close_deadline = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(close_deadline);
        loop {
            tokio::select! {
                _ = &mut close_deadline, if closing => break,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) if t.as_str() == CLOSE_ME => {
                        closing = true;
                        close_deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                        let _ = ws.close(None).await;
                    }
                    Some(Ok(Message::Text(t))) => {
                        if ws.send(Message::Text(t)).await.is_err() { break; }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if ws.send(Message::Binary(b)).await.is_err() { break; }
                    }
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queues the close reply; flush it and wait for the end.
                        let _ = ws.flush().await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                cmd = rx.recv(), if !closing => match cmd {
                    Some(Cmd::Close) => {
                        closing = true;
                        close_deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                        let _ = ws.close(None).await;
                    }
                    None => closing = true,
                },
            }
        }
    });
    // If the task already ended, its guard removed the entry and the handle is simply dropped.
    if let Some(c) = sh.conns.lock().expect("conns lock").get_mut(&id) {
        c.task = Some(task);
    }
}

/// A live connection's state. Fields drop in order: the guard unregisters the connection (under
/// the conns lock) before the socket is closed, so a registered fd is always an open socket.
struct ConnState {
    _guard: LiveGuard,
    ws: WebSocketStream<TcpStream>,
}

/// True when the peer of socket `fd` has closed or reset the connection (POLLRDHUP/HUP/ERR),
/// even if this backend has not read that yet.
fn peer_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY:
    // - `p` is a valid, initialised pollfd that lives across the call, and nfds is 1;
    // - timeout 0: poll(2) never blocks;
    // - `fd` is open: connections are unregistered (under the lock the caller holds) before their
    //   socket is closed, see `ConnState`.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && (p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR)) != 0
}
