//! Listeners, the assembled tower stack, config reload and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceBuilder};

use crate::audit::Audit;
use crate::body::{self, Response};
use crate::budget::Budget;
use crate::config::{Change, Loaded, Source, Watcher};
use crate::conn::{self, Limits, Serve};
use crate::layers::body_limit::{BodyLimit, BodyLimitLayer};
use crate::layers::host::{HostCheck, HostLayer};
use crate::layers::request_id::{RequestIdLayer, RequestIdService};
use crate::layers::router::Router;
use crate::metrics::Metrics;
use crate::providers::HttpClient;
use crate::proxy::Shared;
use crate::state::{Registry, Snapshot};

/// How the sidecar runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub source: Source,
    pub reload_interval: Duration,
    pub drain_timeout: Duration,
    /// PEM file of CA certificates trusted for HTTPS upstreams besides the compiled-in roots.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Most idle connections kept per upstream origin.
    pub upstream_max_idle: usize,
    /// Connection cap and timeouts of the API listener.
    pub limits: Limits,
    /// The process-wide budget for buffered request and answer bytes.
    pub max_buffered_bytes: usize,
    /// What every table must respect (allowlist, credentials directory).
    pub guard: crate::egress::Guard,
    /// The key the operator presents with the fleet's view (`None`: no view is taken).
    pub fleet_key: Option<Arc<str>>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("upstream client: {0}")]
    Client(#[from] crate::providers::client::BuildError),
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), stops.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// The serving stack, outermost first, for HTTP/1.1 and HTTP/2 requests alike.
pub fn stack(
    shared: Arc<Shared>,
    max_body_bytes: usize,
    budget: Budget,
) -> RequestIdService<HostCheck<BodyLimit<Router>>> {
    ServiceBuilder::new()
        // Outermost, so that every response — also a 413 from the limit or a 404 from the
        // router — carries `x-detour-request-id` and the other `x-detour-*` headers, and
        // every refusal is counted and audited.
        .layer(RequestIdLayer::new(shared.clone()))
        // Before the body is read: a request without a single valid `Host` is refused.
        .layer(HostLayer)
        // Before anything parses, and the only place the body limit is enforced: bounds the
        // memory one request can take, and hands the proxy the whole body it needs to route
        // by `model` and to replay on failover (a `Bounded` body, which only this layer makes).
        .layer(BodyLimitLayer::new(max_body_bytes, budget))
        // Dispatch by path; the proxy (routing, failover, streaming) sits behind it.
        .service(Router::new(shared))
}

/// Binds both listeners and starts serving. `initial` is the table loaded at start, if any.
pub async fn start(opts: Options, audit: Audit, initial: Option<Loaded>) -> Result<Running, StartError> {
    let metrics = Metrics::new()?;
    let http = HttpClient::with_max_idle(opts.upstream_ca.as_deref(), opts.upstream_max_idle)?;
    let registry = Arc::new(Registry::default());
    let budget = Budget::new(opts.max_buffered_bytes);
    let shared = Arc::new(Shared {
        table: ArcSwapOption::empty(),
        metrics,
        audit,
        budget: budget.clone(),
    });
    if let Some(loaded) = initial {
        install(&shared, &registry, &http, loaded);
    }
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: opts.listen,
            source,
        })?;
    let admin = TcpListener::bind(opts.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: opts.admin_listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: opts.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: opts.admin_listen,
        source,
    })?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut limits = opts.limits;
    limits.max_connections = connection_cap(limits.max_connections, open_files_limit());
    let svc = stack(shared.clone(), opts.max_body_bytes, budget.clone());
    tasks.spawn(accept_loop(
        listener,
        svc,
        limits,
        shared.clone(),
        rx.clone(),
        opts.drain_timeout,
    ));
    // Its own connection cap: probes are answered while the API listener is full.
    let admin_svc = HostLayer.layer(Admin(shared.clone(), budget, opts.fleet_key.clone()));
    tasks.spawn(accept_loop(
        admin,
        admin_svc,
        ADMIN_LIMITS,
        shared.clone(),
        rx.clone(),
        Duration::from_secs(1),
    ));
    tasks.spawn(reload_loop(
        Watcher::with_guard(opts.source.clone(), opts.guard.clone()),
        shared.clone(),
        registry,
        http,
        opts.reload_interval,
        rx,
    ));
    tracing::info!(%addr, %admin_addr, "serving");
    Ok(Running {
        addr,
        admin_addr,
        shared,
        shutdown: tx,
        tasks,
    })
}

fn install(shared: &Shared, registry: &Registry, http: &HttpClient, loaded: Loaded) {
    for note in &loaded.notes {
        if note.error {
            tracing::error!("{}", note.message);
        } else {
            tracing::warn!("{}", note.message);
        }
    }
    for e in &loaded.table.excluded {
        let what = e.target.as_ref().map_or_else(
            || format!("route {:?}", e.model),
            |t| format!("target {t} of route {:?}", e.model),
        );
        tracing::warn!("{what} ({}) is not served: {}", e.source, e.reason);
    }
    let snapshot = registry.build(&loaded.table, http, &shared.metrics);
    shared.metrics.config_info.reset();
    shared
        .metrics
        .config_info
        .with_label_values(&[snapshot.hash.as_str()])
        .set(1);
    shared.metrics.reloads.with_label_values(&["ok"]).inc();
    tracing::info!(hash = %snapshot.hash, routes = snapshot.models.len(), "route table loaded");
    shared.table.store(Some(Arc::new(snapshot)));
}

async fn reload_loop(
    mut watcher: Watcher,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    http: HttpClient,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match watcher.poll() {
            None => {}
            Some(Change::Loaded(loaded)) => {
                let same = shared
                    .table
                    .load()
                    .as_ref()
                    .is_some_and(|s| s.hash == loaded.table.hash);
                if !same {
                    install(&shared, &registry, &http, loaded);
                }
            }
            Some(Change::Invalid(why)) => {
                shared.metrics.reloads.with_label_values(&["error"]).inc();
                if shared.table.load().is_some() {
                    tracing::warn!("route table not reloaded, keeping the previous one: {why}");
                } else {
                    tracing::warn!("no route table yet (not ready): {why}");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The admin listener's connections: few (probes and a scraper), short-lived.
const ADMIN_LIMITS: Limits = Limits {
    max_connections: 256,
    idle: Duration::from_secs(30),
    write: Duration::from_secs(10),
    linger: Duration::from_secs(1),
};

/// The admin listener's service: `/metrics`, `/healthz`, `/readyz`, `/v1/health` (GET; POST
/// with the fleet's view and key).
#[derive(Clone)]
struct Admin(Arc<Shared>, Budget, Option<Arc<str>>);

impl Service<Request<hyper::body::Incoming>> for Admin {
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        if req.method() == http::Method::POST && req.uri().path() == "/v1/health" {
            let (shared, key) = (self.0.clone(), self.2.clone());
            return Box::pin(async move { Ok(take_fleet_view(&shared, key.as_deref(), req).await) });
        }
        let r = admin_route(&self.0, &self.1, &req);
        Box::pin(std::future::ready(Ok(r)))
    }
}

/// `POST /v1/health`: the operator's question, carrying the fleet's view. The view is taken
/// with this pod's key only; the answer is the health document, as for `GET`.
async fn take_fleet_view(
    shared: &Shared,
    key: Option<&str>,
    req: Request<hyper::body::Incoming>,
) -> Response {
    let refuse = |status: StatusCode, why: crate::fleet::ViewRefused| {
        tracing::warn!(%why, "fleet view refused");
        let mut r = http::Response::new(body::full(Bytes::from(format!("{why}\n"))));
        *r.status_mut() = status;
        r
    };
    let Some(key) = key else {
        return refuse(StatusCode::FORBIDDEN, crate::fleet::ViewRefused::NotEnabled);
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !crate::fleet::authorized(authorization, key) {
        return refuse(StatusCode::UNAUTHORIZED, crate::fleet::ViewRefused::BadKey);
    }
    let limited = http_body_util::Limited::new(req.into_body(), crate::fleet::MAX_VIEW_BYTES);
    let body =
        match tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::collect(limited)).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    crate::fleet::ViewRefused::Invalid(format!("unreadable body: {e}")),
                );
            }
            Err(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    crate::fleet::ViewRefused::Invalid("body not sent within 5s".to_owned()),
                );
            }
        };
    let view = match crate::fleet::parse(&body) {
        Ok(v) => v,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let now = tokio::time::Instant::now();
    let table = shared.table.load();
    if let Some(table) = table.as_deref() {
        crate::fleet::apply(table, &view, now);
    }
    health_document(table.as_deref(), now)
}

fn health_document(table: Option<&Snapshot>, now: tokio::time::Instant) -> Response {
    match serde_json::to_vec(&crate::health::document(table, now)) {
        Ok(json) => {
            let mut r = http::Response::new(body::full(Bytes::from(json)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(_) => {
            let mut r = http::Response::new(body::full(Bytes::from_static(
                b"cannot encode the health report\n",
            )));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

fn admin_route<B>(shared: &Shared, budget: &Budget, req: &Request<B>) -> Response {
    let text = |status: StatusCode, s: &'static str| {
        let mut r = http::Response::new(body::full(Bytes::from_static(s.as_bytes())));
        *r.status_mut() = status;
        r
    };
    match req.uri().path() {
        "/metrics" => {
            shared
                .metrics
                .buffered_bytes
                .set(i64::try_from(budget.used()).unwrap_or(i64::MAX));
            let mut r = http::Response::new(body::full(shared.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/v1/health" => {
            let table = shared.table.load();
            let doc = crate::health::document(table.as_deref(), tokio::time::Instant::now());
            match serde_json::to_vec(&doc) {
                Ok(json) => {
                    let mut r = http::Response::new(body::full(Bytes::from(json)));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the health report\n",
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match shared.table.load().as_deref() {
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no route table loaded\n"),
            Some(snapshot) => {
                let unready = routes_without_credentials(snapshot);
                if unready.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    let mut r = http::Response::new(body::full(Bytes::from(unready.join("\n") + "\n")));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                }
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The routes none of whose targets has a usable credential, one line each naming every
/// target's problem (`/readyz` fails on them). A route with at least one target that may
/// serve is ready: failover covers the others. Checked on each probe, so a key file that
/// appears later (kubelet mounts a Secret after the container starts) makes the pod ready.
fn routes_without_credentials(snapshot: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for model in &snapshot.models {
        let Some(route) = snapshot.routes.get(model) else {
            continue;
        };
        let mut why = Vec::new();
        for t in &route.targets {
            let problems = crate::credentials::target_problems(&t.cfg);
            if problems.is_empty() {
                why.clear();
                break;
            }
            why.push(format!("{}: {}", t.cfg.name, problems.join(", ")));
        }
        if !why.is_empty() {
            out.push(format!(
                "route {model:?}: no target has a usable credential: {}",
                why.join("; ")
            ));
        }
    }
    out
}

/// File descriptors kept for the admin listener, the route table, logs and the like.
const RESERVED_FDS: usize = 512;

/// The API listener's connection cap: the configured one, lowered so that every app connection
/// can also hold an upstream connection within the open-files limit (when it is known), so
/// the process never runs out of descriptors and its probes keep answering.
fn connection_cap(configured: usize, open_files: Option<usize>) -> usize {
    let Some(limit) = open_files else {
        return configured;
    };
    let fits = (limit.saturating_sub(RESERVED_FDS) / 2).max(1);
    if fits < configured {
        tracing::warn!(
            configured,
            open_files = limit,
            cap = fits,
            "--max-connections lowered to what the open-files limit allows (each app connection may hold an upstream one)"
        );
        return fits;
    }
    configured
}

/// The soft limit on open files (`/proc/self/limits`), where the system says.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn accept_loop<S: Serve>(
    listener: TcpListener,
    svc: S,
    limits: Limits,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // At the cap, nothing is accepted until a connection closes: new ones wait in the
        // kernel's backlog instead of taking file descriptors.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (io, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let serving = conn::serve(io, svc.clone(), limits, shared.clone(), shutdown.clone(), slot);
                let open = shared.metrics.connection_opened();
                conns.spawn(async move {
                    serving.await;
                    drop(open);
                });
            }
            _ = shutdown.changed() => break,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    // Idle connections close at once; those serving a request finish it first.
    tokio::select! {
        () = async { while conns.join_next().await.is_some() {} } => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(open = conns.len(), "drain timeout: closing the remaining connections");
        }
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap leaves room for an upstream connection per app connection and the reserve;
    /// an unknown or generous limit keeps the configured cap.
    #[test]
    fn the_cap_fits_the_open_files_limit() {
        assert_eq!(connection_cap(10_000, None), 10_000);
        assert_eq!(connection_cap(10_000, Some(1_048_576)), 10_000);
        assert_eq!(connection_cap(10_000, Some(1_024)), 256);
        assert_eq!(connection_cap(10_000, Some(100)), 1);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
