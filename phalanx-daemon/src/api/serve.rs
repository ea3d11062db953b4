//! The API server's connections, bounded in number and in time.
//!
//! A node agent's port must not be a way to exhaust it: each connection
//! must send a request head within `header_timeout` (idle keep-alive
//! connections and slow senders alike are closed then), a body within
//! `body_timeout` and of at most [`MAX_BODY_BYTES`] (a longer
//! `Content-Length` is answered 413 before any wait); at most
//! `max_connections` are served at once, and beyond that a new connection
//! is closed at once and counted, so the daemon's file descriptors never
//! run out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower_http::{limit::RequestBodyLimitLayer, timeout::RequestBodyTimeoutLayer};
use tracing::{debug, warn};

/// Largest request body (bytes): the API takes small JSON queries only.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// How long to wait after a failed accept (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Open files kept for everything but API connections: maps, links, the
/// ring buffer, evidence and spool files, requests to peers and receivers.
pub const FD_RESERVE: u64 = 256;

/// The open-file limit cannot hold the API's connections.
#[derive(Debug, thiserror::Error)]
#[error(
    "http.max_connections {max_connections} needs {needed} open files ({FD_RESERVE} kept for \
     the rest), but the limit is {limit}: raise it (LimitNOFILE, ulimit -n) or lower \
     http.max_connections"
)]
pub struct FdBudgetError {
    /// The setting.
    pub max_connections: usize,
    /// Open files it needs.
    pub needed: u64,
    /// The hard limit (or the kernel's ceiling) that stops it.
    pub limit: u64,
}

/// Makes room for `max_connections` API connections below the open-file
/// limit, raising the soft limit towards the hard one when needed, so a
/// connection flood meets `max_connections`, never "too many open files".
pub fn reserve_descriptors(max_connections: usize) -> Result<(), FdBudgetError> {
    let needed = (max_connections as u64).saturating_add(FD_RESERVE);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= needed {
        return Ok(());
    }
    let err = |limit| FdBudgetError {
        max_connections,
        needed,
        limit,
    };
    if lim.rlim_max < needed {
        return Err(err(lim.rlim_max));
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(err(lim.rlim_cur));
    }
    Ok(())
}

/// Bounds of the server (`[http]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's head, from the connection's start or its
    /// previous response.
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Limits {
    /// The bounds `[http]` sets.
    pub fn from_config(http: &crate::config::HttpConfig) -> Self {
        Self {
            header_timeout: Duration::from_secs(http.header_timeout_secs),
            body_timeout: Duration::from_secs(http.body_timeout_secs),
            max_connections: http.max_connections,
        }
    }
}

/// Connection metrics.
#[derive(Clone, Debug, Default)]
pub struct ServeMetrics {
    open: Gauge,
    refused: Counter,
}

impl ServeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "phalanx_http_connections_open",
            "API connections open now",
            m.open.clone(),
        );
        registry.register(
            "phalanx_http_connections_refused",
            "API connections closed at once because http.max_connections were open",
            m.refused.clone(),
        );
        m
    }
}

/// The API's listening socket with its bounds and metrics.
#[derive(Debug)]
pub struct Server {
    /// The bound socket.
    pub listener: TcpListener,
    /// Its bounds.
    pub limits: Limits,
    /// Its connection metrics.
    pub metrics: ServeMetrics,
}

impl Server {
    /// Serves `app` within the limits until the task is dropped, which
    /// also ends every connection it serves (their tasks hold the API's
    /// state).
    pub async fn run(self, app: Router) -> std::io::Result<()> {
        let Server {
            listener,
            limits,
            metrics,
        } = self;
        let app = app
            .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
            .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut connections = JoinSet::new();
        loop {
            let accepted = listener.accept().await;
            while connections.try_join_next().is_some() {}
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("accepting an API connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.refused.inc();
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let open = metrics.open.clone();
            connections.spawn(async move {
                open.inc();
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    debug!("API connection: {e}");
                }
                open.dec();
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Bytes, routing::post};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// A server of `POST /echo` (answers the body's length) within `limits`.
    async fn start(limits: Limits) -> (std::net::SocketAddr, ServeMetrics) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = ServeMetrics::default();
        let app = Router::new().route("/echo", post(|b: Bytes| async move { b.len().to_string() }));
        let server = Server {
            listener,
            limits,
            metrics: metrics.clone(),
        };
        tokio::spawn(server.run(app));
        (addr, metrics)
    }

    /// Seconds until the server closes `s` (reads to the end), at most `within`.
    async fn closed_after(s: &mut TcpStream, within: Duration) -> Option<f64> {
        let t = Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(within.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed().as_secs_f64()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_connections: 64,
    };

    #[tokio::test]
    async fn slow_idle_and_bodiless_connections_are_closed() {
        let (addr, metrics) = start(LIMITS).await;
        let mut conns = Vec::new();
        for i in 0..50 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // Half idle, half stalled in the middle of a request head.
            if i % 2 == 1 {
                s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("part of a head");
            }
            conns.push(s);
        }
        // A request that claims a huge body and sends none.
        let mut huge = TcpStream::connect(addr).await.expect("connect");
        huge.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
            .await
            .expect("head");
        let within = LIMITS.header_timeout + Duration::from_secs(3);
        for (i, s) in conns.iter_mut().enumerate() {
            let after = closed_after(s, within).await;
            assert!(
                after.is_some(),
                "connection {i} still open after {within:?}"
            );
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(within, huge.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the bodiless request is answered and closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(metrics.open.get(), 0, "every connection ended");
    }

    #[test]
    fn the_open_file_limit_holds_the_connections_or_says_so() {
        assert!(reserve_descriptors(16).is_ok());
        let e = reserve_descriptors(usize::MAX / 2).expect_err("beyond any limit");
        assert!(
            e.to_string().contains("raise it (LimitNOFILE, ulimit -n)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_counted() {
        let (addr, metrics) = start(Limits {
            max_connections: 4,
            ..LIMITS
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Let the server accept the four before the fifth arrives.
        while metrics.open.get() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut fifth = TcpStream::connect(addr).await.expect("connect");
        let after = closed_after(&mut fifth, Duration::from_millis(500)).await;
        assert!(after.is_some(), "the fifth is closed at once");
        assert_eq!(metrics.refused.get(), 1);
        // Once the four time out, requests are served again.
        drop(held);
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await
        .expect("request");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n3"),
            "{answer}"
        );
    }
}
