//! The load generator: WebSocket handshakes, frames over open WebSockets, plain HTTP requests,
//! a connection storm and idle connections, all over loopback with tokio-tungstenite.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wscap_e2e::client::{self, Outcome, WsClient};

/// What a timed phase did.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    /// Operations completed (handshakes, echoed frames, HTTP responses).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time spent.
    pub elapsed: Duration,
    /// Per-operation latencies in µs (handshakes only).
    pub lat_us: Vec<u32>,
    /// First error seen, for the report.
    pub first_error: Option<String>,
    /// Rate of each merged round (ops/s).
    pub rounds: Vec<f64>,
}

/// Median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

impl Phase {
    /// Add another phase's results.
    pub fn merge(&mut self, o: Phase) {
        self.rounds
            .push(o.ops as f64 / o.elapsed.as_secs_f64().max(1e-9));
        self.ops += o.ops;
        self.errors += o.errors;
        self.elapsed += o.elapsed;
        self.lat_us.extend(o.lat_us);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Operations per second: the median of the merged rounds' rates (robust to a round that
    /// other work on the machine slowed down), or the overall rate if nothing was merged.
    pub fn rate(&self) -> f64 {
        if self.rounds.is_empty() {
            self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
        } else {
            median(&self.rounds)
        }
    }
}

/// `conns` loops, each opening a WebSocket (TCP connect + upgrade, timed until the 101 is read)
/// and closing it with a close handshake, for `dur`.
pub async fn handshakes(port: u16, conns: usize, dur: Duration) -> Phase {
    let out = Rc::new(RefCell::new(Phase::default()));
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let out = out.clone();
        tasks.push(tokio::task::spawn_local(async move {
            while Instant::now() < end {
                let t0 = Instant::now();
                match client::connect(port, "/ws").await {
                    Outcome::Open(c) => {
                        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        {
                            let mut o = out.borrow_mut();
                            o.ops += 1;
                            o.lat_us.push(us);
                        }
                        c.close().await;
                    }
                    other => {
                        {
                            let mut o = out.borrow_mut();
                            o.errors += 1;
                            o.first_error.get_or_insert_with(|| describe(&other));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut p = out.take();
    p.elapsed = start.elapsed();
    p
}

/// What an outcome was, in a few words.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Open(_) => "101".into(),
        Outcome::Refused(r) => format!("HTTP {}: {}", r.status, r.text().trim()),
        Outcome::Failed(e) => e.clone(),
    }
}

/// `conns` WebSockets, each sending `window` binary frames of `size` bytes then reading their
/// `window` echoes, over and over, for `dur`. Counts echoed frames (each crosses Envoy twice).
pub async fn messages(port: u16, conns: usize, window: usize, size: usize, dur: Duration) -> Phase {
    let out = Rc::new(RefCell::new(Phase::default()));
    // Open every connection first, so the timed part only moves frames.
    let mut wss = Vec::new();
    for _ in 0..conns {
        let sock = match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(e) => {
                let mut o = out.borrow_mut();
                o.errors += 1;
                o.first_error.get_or_insert(format!("connect: {e}"));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        match tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws"), sock).await {
            Ok((ws, _)) => wss.push(ws),
            Err(e) => {
                let mut o = out.borrow_mut();
                o.errors += 1;
                o.first_error.get_or_insert(format!("handshake: {e}"));
            }
        }
    }
    let start = Instant::now();
    let end = start + dur;
    let payload = vec![0x5au8; size];
    let mut tasks = Vec::new();
    for mut ws in wss {
        let out = out.clone();
        let payload = payload.clone();
        tasks.push(tokio::task::spawn_local(async move {
            'outer: while Instant::now() < end {
                for _ in 0..window {
                    if let Err(e) = ws.feed(Message::Binary(payload.clone().into())).await {
                        let mut o = out.borrow_mut();
                        o.errors += 1;
                        o.first_error.get_or_insert(format!("send: {e}"));
                        break 'outer;
                    }
                }
                if let Err(e) = ws.flush().await {
                    let mut o = out.borrow_mut();
                    o.errors += 1;
                    o.first_error.get_or_insert(format!("flush: {e}"));
                    break;
                }
                let mut got = 0;
                while got < window {
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if b.len() == size => got += 1,
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        other => {
                            let mut o = out.borrow_mut();
                            o.errors += 1;
                            o.first_error
                                .get_or_insert(format!("echo: unexpected {other:?}"));
                            break 'outer;
                        }
                    }
                }
                out.borrow_mut().ops += window as u64;
            }
            ws
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        if let Ok(ws) = t.await {
            done.push(ws);
        }
    }
    let elapsed = start.elapsed();
    // Close outside the timed part.
    for mut ws in done {
        let _ = ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    let mut p = out.take();
    p.elapsed = elapsed;
    p
}

/// `conns` keep-alive HTTP/1.1 connections to the listener, each sending `GET /plain` and reading
/// the whole response, over and over, for `dur`.
pub async fn plain(port: u16, conns: usize, dur: Duration) -> Phase {
    let out = Rc::new(RefCell::new(Phase::default()));
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let out = out.clone();
        tasks.push(tokio::task::spawn_local(async move {
            while Instant::now() < end {
                if let Err(e) = plain_conn(port, end, &out).await {
                    {
                        let mut o = out.borrow_mut();
                        o.errors += 1;
                        o.first_error.get_or_insert(e);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut p = out.take();
    p.elapsed = start.elapsed();
    p
}

async fn plain_conn(port: u16, end: Instant, out: &Rc<RefCell<Phase>>) -> Result<(), String> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut s = BufReader::new(s);
    let req = format!("GET /plain HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n");
    let mut line = String::new();
    while Instant::now() < end {
        s.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut status = 0u16;
        let mut len = 0usize;
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line))
                .await
                .map_err(|_| "read timed out".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("eof in response head".into());
            }
            if first {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                first = false;
                continue;
            }
            if line == "\r\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if l.starts_with("connection:") && l.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)
            .await
            .map_err(|e| format!("body: {e}"))?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        out.borrow_mut().ops += 1;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// What a storm of simultaneous clients got.
#[derive(Default)]
pub struct Storm {
    /// Got 101 (held open).
    pub opened: usize,
    /// Got another HTTP status, by status.
    pub refused: BTreeMap<u16, usize>,
    /// Got no response within the wait (queued in Envoy, or reset).
    pub no_answer: usize,
    /// The open connections, to be closed by the caller once the pods were read.
    pub held: Vec<WsClient>,
}

/// `n` clients connect at once; each waits up to `wait` for an answer.
pub async fn storm(port: u16, n: usize, wait: Duration) -> Storm {
    // A watch keeps its value: a task first polled after the start signal still sees it.
    let (go, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut rx = rx.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let _ = rx.wait_for(|v| *v).await;
            tokio::time::timeout(wait, client::connect(port, "/ws"))
                .await
                .ok()
        }));
    }
    tokio::task::yield_now().await;
    let _ = go.send(true);
    let mut s = Storm::default();
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Outcome::Open(c)) => {
                s.opened += 1;
                s.held.push(c);
            }
            Some(Outcome::Refused(r)) => *s.refused.entry(r.status).or_default() += 1,
            Some(Outcome::Failed(_)) | None => s.no_answer += 1,
        }
    }
    s
}

/// Open `n` WebSockets, `parallel` handshakes at a time, and keep them open (idle).
pub async fn idle(port: u16, n: usize, parallel: usize) -> (Vec<WsClient>, usize, Option<String>) {
    let held = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let failed = Rc::new(RefCell::new((0usize, None::<String>)));
    let next = Rc::new(RefCell::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (held, failed, next) = (held.clone(), failed.clone(), next.clone());
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                {
                    let mut i = next.borrow_mut();
                    if *i >= n {
                        break;
                    }
                    *i += 1;
                }
                match client::connect(port, "/ws").await {
                    Outcome::Open(c) => held.borrow_mut().push(c),
                    other => {
                        let mut f = failed.borrow_mut();
                        f.0 += 1;
                        f.1.get_or_insert(describe(&other));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let held = held.take();
    let (nf, e) = failed.take();
    (held, nf, e)
}
