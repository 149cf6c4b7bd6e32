//! The operator's two HTTP servers (hyper, HTTP/1.1):
//! - admin, plain HTTP: `/metrics`, `/healthz` (the process runs), `/readyz` (the webhook has
//!   a certificate, so the Service may send it reviews);
//! - webhook, TLS: `POST /mutate`.
//!
//! Each connection is a task in a `JoinSet` owned by its server; on shutdown the server stops
//! accepting and gives open connections a grace period before dropping them.
//!
//! What one client can hold is bounded ([`Limits`]): open connections (more are closed at
//! once), the TLS handshake, the request head and the request body each have a deadline, so
//! a slow or silent client cannot pin connections, memory or the webhook's tasks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::certs::Reloadable;
use crate::metrics::Metrics;
use crate::webhook::Injector;

/// Largest AdmissionReview accepted (the apiserver caps requests at 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long open connections may finish after shutdown.
const GRACE: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on what clients can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From the connection (or the previous response) to a complete request head.
    pub header_timeout: Duration,
}

impl Default for Limits {
    /// The apiserver keeps a few connections per replica; 256 leaves room for many
    /// apiservers and scrapers while bounding tasks and TLS state.
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a server answers.
#[derive(Clone, Debug)]
pub enum App {
    Admin {
        metrics: Metrics,
        tls: Arc<Reloadable>,
        /// Set on SIGTERM: `/readyz` fails so the Service stops sending reviews before the
        /// listeners close.
        draining: Arc<AtomicBool>,
    },
    Webhook {
        injector: Arc<Injector>,
    },
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl App {
    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let route = (req.method().clone(), req.uri().path().to_owned());
        let response = match (self, route.0, route.1.as_str()) {
            (App::Admin { metrics, .. }, Method::GET, "/metrics") => {
                let mut r = text(StatusCode::OK, metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (App::Admin { .. }, Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (App::Admin { draining, .. }, Method::GET, "/readyz") if draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            (App::Admin { tls, .. }, Method::GET, "/readyz") => {
                if tls.is_loaded() {
                    text(StatusCode::OK, "ok\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no webhook certificate loaded yet\n",
                    )
                }
            }
            (App::Webhook { injector }, Method::POST, "/mutate") => {
                let body =
                    tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect());
                match body.await {
                    Err(_) => text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request body did not arrive within {}s\n",
                            BODY_TIMEOUT.as_secs()
                        ),
                    ),
                    Ok(Ok(body)) => {
                        let answer = injector.handle(&body.to_bytes()).await;
                        let mut r = text(StatusCode::OK, answer);
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Ok(Err(e)) => text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}\n"),
                    ),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        Ok(response)
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` changes, with the
/// default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: App,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, tls, app, Limits::default(), shutdown).await;
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` changes.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: App,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let local = listener.local_addr().ok();
    info!(addr = ?local, tls = tls.is_some(), "serving");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!(%peer, max = limits.max_connections, "too many connections; closing this one");
                    drop(stream);
                    continue;
                };
                let app = app.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let service = service_fn(move |req| app.clone().handle(req));
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(Some(limits.header_timeout));
                    let result = match tls {
                        Some(acceptor) => match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).await,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        None => builder.serve_connection(TokioIo::new(stream), service).await,
                    };
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(GRACE, drain).await.is_err() {
        connections.abort_all();
    }
    info!(addr = ?local, "stopped serving");
}

/// A TLS acceptor whose certificate comes from `resolver` (swappable at run time).
pub fn tls_acceptor(resolver: Arc<Reloadable>) -> TlsAcceptor {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(resolver.clone()))
            .unwrap_or_else(|_| {
                // The ring provider supports the default versions; this branch is unreachable in
                // practice, but must not panic.
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(resolver)
            });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Plan, Validity, dns_names, issue};
    use crate::verifier::mock_client;
    use crate::webhook::Settings;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The admin server answers probes and metrics; readiness follows the certificate.
    #[tokio::test]
    async fn admin_probes_and_metrics() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = Arc::new(Reloadable::default());
        let draining = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::new().unwrap();
        metrics.reconciles.inc();
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(
            listener,
            None,
            App::Admin {
                metrics,
                tls: tls.clone(),
                draining: draining.clone(),
            },
            shutdown,
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        let (b, _) = issue(
            Plan::RenewAll,
            None,
            None,
            &dns_names("s", "n"),
            k8s_openapi::jiff::Timestamp::now(),
            &Validity::default(),
        )
        .unwrap()
        .unwrap();
        tls.load(b.cert.as_bytes(), b.key.as_bytes()).unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("detour_operator_reconciles_total 1"),
            "{metrics}"
        );
        stop.send_replace(true);
        tasks.join_next().await.unwrap().unwrap();
    }

    /// A client that opens a connection and never completes its request head is
    /// disconnected after the header timeout; one more connection than the limit is closed
    /// at once while the others stay open.
    #[tokio::test]
    async fn silent_clients_time_out_and_connections_are_capped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 2,
            handshake_timeout: Duration::from_millis(300),
            header_timeout: Duration::from_millis(300),
        };
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_with(
            listener,
            None,
            App::Admin {
                metrics: Metrics::new().unwrap(),
                tls: Arc::new(Reloadable::default()),
                draining: Arc::new(AtomicBool::new(false)),
            },
            limits,
            shutdown,
        ));
        let started = tokio::time::Instant::now();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The third connection is over the limit: closed without an answer.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf))
            .await
            .expect("the connection over the limit is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
        // The silent ones are cut after the header timeout, well before a test timeout.
        for stream in [&mut slow, &mut second] {
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
                .await
                .expect("a silent client is disconnected")
                .ok();
            assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Capacity is back: a well-behaved client is served.
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        stop.send_replace(true);
        tasks.join_next().await.unwrap().unwrap();
    }

    /// A TLS client that connects and never says hello is disconnected after the handshake
    /// timeout.
    #[tokio::test]
    async fn silent_tls_clients_time_out() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _verifier) = mock_client();
        let limits = Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_with(
            listener,
            Some(tls_acceptor(Arc::new(Reloadable::default()))),
            App::Webhook {
                injector: Arc::new(Injector {
                    client,
                    settings: Settings::default(),
                    metrics: Metrics::new().unwrap(),
                }),
            },
            limits,
            shutdown,
        ));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
            .await
            .expect("a client silent during the handshake is disconnected")
            .ok();
        assert!(out.is_empty());
        stop.send_replace(true);
        tasks.join_next().await.unwrap().unwrap();
    }

    /// The webhook serves over TLS with a certificate *renewed* from the stored CA, which a
    /// client trusting only the original `caBundle` verifies under the Service's DNS name;
    /// a malformed review gets a denial.
    #[tokio::test]
    async fn webhook_serves_tls_with_the_issued_certificate() {
        let dns = dns_names("detour-webhook", "detour-system");
        let now = k8s_openapi::jiff::Timestamp::now();
        let (b, ca_key) = issue(Plan::RenewAll, None, None, &dns, now, &Validity::default())
            .unwrap()
            .unwrap();
        let (renewed, _) = issue(
            Plan::RenewCert,
            Some(&b),
            Some(&ca_key),
            &dns,
            now,
            &Validity::default(),
        )
        .unwrap()
        .unwrap();
        assert_ne!(renewed.cert, b.cert);
        let resolver = Arc::new(Reloadable::default());
        resolver
            .load(renewed.cert.as_bytes(), renewed.key.as_bytes())
            .unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _verifier) = mock_client();
        let injector = Injector {
            client,
            settings: Settings::default(),
            metrics: Metrics::new().unwrap(),
        };
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(
            listener,
            Some(tls_acceptor(resolver)),
            App::Webhook {
                injector: Arc::new(injector),
            },
            shutdown,
        ));

        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(b.ca_bundle.as_bytes()).unwrap())
            .unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(dns[0].clone()).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let body = "{\"kind\": \"nonsense\"}";
        let request = format!(
            "POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\"allowed\":false"), "{out}");
        assert!(out.contains("malformed AdmissionReview"), "{out}");
        stop.send_replace(true);
        tasks.join_next().await.unwrap().unwrap();
    }
}
