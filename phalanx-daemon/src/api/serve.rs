//! The API server's connections, bounded in number and in time.
//!
//! A node agent's port must not be a way to exhaust it: each connection
//! must send a request head within `header_timeout` (idle keep-alive
//! connections and slow senders alike are closed then), a body within
//! `body_timeout` and of at most [`MAX_BODY_BYTES`] (a longer
//! `Content-Length` is answered 413 before any wait); at most
//! `max_connections` are served at once, and beyond that a new connection
//! is closed at once and counted, so the daemon's file descriptors never
//! run out. With `[http] tls_cert` the server speaks TLS ([`Tls`]); its
//! handshake must end within `header_timeout` too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
    task::JoinSet,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
    },
    TlsAcceptor,
};
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

/// The TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing of the kind.
    #[error("http.{key} {path}: {message}")]
    File {
        /// The setting.
        key: &'static str,
        /// Its file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("http TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CAs could not make a verifier.
    #[error("http.client_ca: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The server side of TLS (`[http] tls_cert`, `tls_key`, `client_ca`).
#[derive(Clone)]
pub struct Tls(TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// The TLS `[http]` sets up, or `None` for plain HTTP; the files are
    /// read now, and any trouble names the setting and its file.
    pub fn from_config(http: &crate::config::HttpConfig) -> Result<Option<Self>, TlsError> {
        if !http.tls() {
            return Ok(None);
        }
        let certs = pem_all::<CertificateDer>("tls_cert", &http.tls_cert)?;
        let key = PrivateKeyDer::from_pem_file(&http.tls_key).map_err(|e| TlsError::File {
            key: "tls_key",
            path: http.tls_key.display().to_string(),
            message: format!("no usable PEM private key ({e})"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if http.mutual_tls() {
            let mut roots = rustls::RootCertStore::empty();
            for ca in pem_all::<CertificateDer>("client_ca", &http.client_ca)? {
                roots.add(ca)?;
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?,
            )
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Self(TlsAcceptor::from(Arc::new(config)))))
    }
}

/// Every PEM object of kind `T` in the file of setting `key`; at least one.
fn pem_all<T: PemObject>(key: &'static str, path: &std::path::Path) -> Result<Vec<T>, TlsError> {
    let err = |message: String| TlsError::File {
        key,
        path: path.display().to_string(),
        message,
    };
    let all = T::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if all.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(all)
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
    /// TLS, or plain HTTP.
    pub tls: Option<Tls>,
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
            tls,
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
            let tls = tls.clone();
            connections.spawn(async move {
                open.inc();
                let served = match tls {
                    None => serve(stream, service, limits).await,
                    Some(Tls(acceptor)) => {
                        // The handshake counts as the first request's head.
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => serve(stream, service, limits).await,
                            Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    }
                };
                if let Err(e) = served {
                    debug!("API connection: {e}");
                }
                open.dec();
                drop(slot);
            });
        }
    }
}

/// Serves one connection's requests within the header timeout.
async fn serve<IO>(
    io: IO,
    service: hyper_util::service::TowerToHyperService<Router>,
    limits: Limits,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
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
        start_with(limits, None).await
    }

    async fn start_with(limits: Limits, tls: Option<Tls>) -> (std::net::SocketAddr, ServeMetrics) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = ServeMetrics::default();
        let app = Router::new().route("/echo", post(|b: Bytes| async move { b.len().to_string() }));
        let server = Server {
            listener,
            limits,
            metrics: metrics.clone(),
            tls,
        };
        tokio::spawn(server.run(app));
        (addr, metrics)
    }

    /// Runs openssl in `dir`.
    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA `NAME-ca.pem`, and `NAME-server.pem`/`.key` (127.0.0.1) and
    /// `NAME-client.pem`/`.key` signed by it, in `dir`.
    fn certificates(dir: &std::path::Path, name: &str) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca = format!("{name}-ca");
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={ca}"),
                ],
            ]
            .concat(),
        );
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let base = format!("{name}-{who}");
            std::fs::write(dir.join(format!("{base}.ext")), ext).expect("ext file");
            openssl(
                dir,
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{base}.key"),
                        "-out",
                        &format!("{base}.csr"),
                        "-subj",
                        &format!("/CN={base}"),
                    ],
                ]
                .concat(),
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{base}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-out",
                    &format!("{base}.pem"),
                    "-extfile",
                    &format!("{base}.ext"),
                ],
            );
        }
    }

    /// `[http]` serving `NAME-server` in `dir`, asking for clients of `NAME-ca` if `mutual`.
    fn tls_config(dir: &std::path::Path, name: &str, mutual: bool) -> crate::config::HttpConfig {
        crate::config::HttpConfig {
            tls_cert: dir.join(format!("{name}-server.pem")),
            tls_key: dir.join(format!("{name}-server.key")),
            client_ca: if mutual {
                dir.join(format!("{name}-ca.pem"))
            } else {
                Default::default()
            },
            ..Default::default()
        }
    }

    /// POSTs to `/echo` over HTTPS trusting `NAME-ca`, as `client` if given.
    async fn echo_https(
        dir: &std::path::Path,
        addr: std::net::SocketAddr,
        ca: &str,
        client: Option<&str>,
    ) -> reqwest::Result<String> {
        let pem = std::fs::read(dir.join(format!("{ca}-ca.pem"))).expect("ca");
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        if let Some(c) = client {
            let mut id = std::fs::read(dir.join(format!("{c}-client.pem"))).expect("cert");
            id.extend(std::fs::read(dir.join(format!("{c}-client.key"))).expect("key"));
            b = b.identity(reqwest::Identity::from_pem(&id)?);
        }
        b.build()?
            .post(format!("https://{addr}/echo"))
            .body("four")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    #[tokio::test]
    async fn https_and_mutual_tls_admit_only_what_they_should() {
        let dir = tempfile::tempdir().expect("tempdir");
        certificates(dir.path(), "ours");
        certificates(dir.path(), "other");
        let (d, sec) = (dir.path(), Duration::from_secs(1));
        let tls = Tls::from_config(&tls_config(d, "ours", false))
            .expect("tls")
            .expect("on");
        let (addr, _) = start_with(LIMITS, Some(tls)).await;
        assert_eq!(echo_https(d, addr, "ours", None).await.expect("https"), "4");
        assert!(
            echo_https(d, addr, "other", None).await.is_err(),
            "a server the client does not trust"
        );
        let plain = reqwest::Client::new()
            .post(format!("http://{addr}/echo"))
            .body("x")
            .send()
            .await;
        assert!(
            plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
            "plain HTTP on the TLS port"
        );
        // A client that never starts the handshake is closed like a slow one.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(
            closed_after(&mut idle, 3 * sec).await.is_some(),
            "handshake timeout"
        );

        let tls = Tls::from_config(&tls_config(d, "ours", true))
            .expect("tls")
            .expect("on");
        let (addr, _) = start_with(LIMITS, Some(tls)).await;
        assert_eq!(
            echo_https(d, addr, "ours", Some("ours"))
                .await
                .expect("mTLS"),
            "4"
        );
        assert!(
            echo_https(d, addr, "ours", None).await.is_err(),
            "no client certificate"
        );
        assert!(
            echo_https(d, addr, "ours", Some("other")).await.is_err(),
            "a client of another CA"
        );
    }

    #[test]
    fn unusable_tls_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        certificates(dir.path(), "ours");
        let mut cfg = tls_config(dir.path(), "ours", true);
        cfg.tls_key = dir.path().join("ours-server.pem");
        let e = Tls::from_config(&cfg)
            .expect_err("a certificate is no key")
            .to_string();
        assert!(
            e.starts_with("http.tls_key ") && e.contains("ours-server.pem"),
            "{e}"
        );
        let mut cfg = tls_config(dir.path(), "ours", true);
        cfg.client_ca = dir.path().join("ours-server.key");
        let e = Tls::from_config(&cfg)
            .expect_err("a key is no CA")
            .to_string();
        assert!(e.starts_with("http.client_ca "), "{e}");
        let mut cfg = tls_config(dir.path(), "ours", false);
        cfg.tls_cert = dir.path().join("missing.pem");
        let e = Tls::from_config(&cfg).expect_err("missing").to_string();
        assert!(
            e.starts_with("http.tls_cert ") && e.contains("missing.pem"),
            "{e}"
        );
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
