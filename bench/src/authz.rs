//! A small counting HTTP authorization service for Envoy's `ext_authz` filter (HTTP service).
//!
//! It answers `200` (allow) while fewer than `limit` requests have been allowed, then `403`. It
//! counts per service (Envoy's check request carries the downstream path and host, not the pod
//! the router will pick), and it never hears when a WebSocket closes: `ext_authz` calls it once,
//! before routing, and never again for that stream. So an allowed slot is never given back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running authorization service. Dropping it stops it.
pub struct Authz {
    /// Loopback port.
    pub port: u16,
    allowed: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Authz {
    /// Start on a free loopback port, allowing at most `limit` requests in total.
    pub async fn start(limit: u64) -> Authz {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind authz");
        let port = l.local_addr().expect("addr").port();
        let allowed = Arc::new(AtomicU64::new(0));
        let checks = Arc::new(AtomicU64::new(0));
        let (a, c) = (allowed.clone(), checks.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s, a.clone(), c.clone(), limit));
            }
        });
        Authz {
            port,
            allowed,
            checks,
            task,
        }
    }

    /// Requests allowed so far.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Check requests received so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

impl Drop for Authz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One keep-alive connection from Envoy: read a request head (and a body by content-length),
/// answer, repeat.
async fn serve(mut s: TcpStream, allowed: Arc<AtomicU64>, checks: Arc<AtomicU64>, limit: u64) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + body_len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + body_len);
        checks.fetch_add(1, Ordering::Relaxed);
        let ok = allowed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        let resp: &[u8] = if ok {
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 403 Forbidden\r\nx-authz-reason: no_capacity\r\ncontent-length: 0\r\n\r\n"
        };
        if s.write_all(resp).await.is_err() {
            return;
        }
    }
}
