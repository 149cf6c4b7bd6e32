//! `detour-operator`: the route controller (leader only), the injection webhook and the
//! admin server (every replica).
//!
//! Tasks, all owned by one `JoinSet` and stopped together on SIGTERM/SIGINT:
//! admin server, webhook server, certificate manager, leader election, and — once this
//! replica leads — the route controller. Losing the Lease stops the process (non-zero), so
//! the pod restarts as a follower instead of reconciling beside the new leader.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use detour_api::egress::AllowedHosts;
use detour_operator::certs::{self, Manager, Reloadable, Source};
use detour_operator::metrics::Metrics;
use detour_operator::server::{self, App};
use detour_operator::webhook::{Injector, Selection, Settings};
use detour_operator::{controller, fleet_gather, leader};
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Reconciles ModelRoutes and RoutingPolicies into `detour-routes` ConfigMaps and injects the
/// Detour sidecar into pods labelled `detour.dev/inject: "true"`.
#[derive(Debug, Parser)]
#[command(name = "detour-operator", version)]
struct Args {
    /// The operator's namespace: its default RoutingPolicies apply cluster-wide, and its Lease
    /// and certificate Secret live there.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// This replica's identity in the leader Lease.
    #[arg(long, env = "POD_NAME", default_value = "detour-operator")]
    pod_name: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// The webhook's TLS listener.
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// The webhook's Service name (the serving certificate's DNS names).
    #[arg(long, default_value = "detour-webhook")]
    webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "detour-injector")]
    webhook_config: String,
    /// The Secret the operator keeps its CA and serving certificate in.
    #[arg(long, default_value = "detour-webhook-tls")]
    webhook_secret: String,
    /// `self` (the operator issues certificates) or `files` (cert-manager mounts them).
    #[arg(long, default_value = "self", value_parser = ["self", "files"])]
    cert_source: String,
    /// With `--cert-source files`: the directory holding `tls.crt` and `tls.key`.
    #[arg(long, default_value = "/var/run/detour/tls")]
    tls_dir: String,
    /// Run leader election (disable only for a single replica in development).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The leader Lease's name.
    #[arg(long, default_value = "detour-operator")]
    lease_name: String,
    /// The sidecar image injected (annotation `detour.dev/sidecar-image` overrides).
    #[arg(
        long,
        env = "DETOUR_SIDECAR_IMAGE",
        default_value = "ghcr.io/detour-dev/detour-sidecar:0.1.0"
    )]
    sidecar_image: String,
    /// What annotation `detour.dev/sidecar-image` may name besides `--sidecar-image`: a
    /// repository (any tag or digest of it) or an exact reference; repeat the flag for more.
    /// None (the default): pods cannot choose another image.
    #[arg(long = "sidecar-image-allowed", value_name = "IMAGE")]
    sidecar_image_allowed: Vec<String>,
    #[arg(long, default_value = "IfNotPresent")]
    sidecar_image_pull_policy: String,
    /// The sidecar's CPU request (annotation `detour.dev/sidecar-cpu` overrides).
    #[arg(long, default_value = "50m")]
    sidecar_cpu: String,
    /// The sidecar's memory request and limit (annotation `detour.dev/sidecar-memory` overrides).
    #[arg(long, default_value = "64Mi")]
    sidecar_memory: String,
    /// Optional CPU limit of the sidecar.
    #[arg(long)]
    sidecar_cpu_limit: Option<String>,
    /// The sidecar's loopback port (annotation `detour.dev/proxy-port` overrides).
    #[arg(long, default_value_t = 4000)]
    proxy_port: u16,
    /// On SIGTERM, how long to keep serving with `/readyz` failing, so endpoints drop this
    /// pod before its listeners close.
    #[arg(long, default_value_t = 5)]
    shutdown_delay_seconds: u64,
    /// The platform's allowlist of endpoint hosts, comma-separated: the only hosts a route's
    /// targets may send requests and credentials to (`*` stands for exactly one DNS label).
    /// Routes cannot extend it; `openai-compatible` and in-cluster hosts are added here.
    /// Passed to every injected sidecar, which enforces it again.
    #[arg(long, env = "DETOUR_ALLOWED_HOSTS", default_value_t = detour_api::egress::PROVIDER_HOSTS.join(","))]
    allowed_hosts: String,
    /// Which routes' Secrets a pod without annotation `detour.dev/routes` mounts: `none`
    /// (default: a pod names its routes) or `all` (every route of its namespace).
    #[arg(long, env = "DETOUR_DEFAULT_ROUTES", default_value = "none", value_parser = ["none", "all"])]
    default_routes: String,
    /// Fleet health: gather each injected pod's breakers (`/v1/health` on its admin port),
    /// write them into ModelRoute status, and send each namespace's view back to its pods.
    /// `false` turns it off: no pod is polled, sidecars run alone.
    #[arg(long, env = "DETOUR_FLEET", default_value_t = true, action = clap::ArgAction::Set)]
    fleet: bool,
    /// How often each injected pod is asked for its health (milliseconds).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(200..=60_000))]
    fleet_interval_ms: u64,
    /// How long one pod may take to answer (milliseconds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=30_000))]
    fleet_timeout_ms: u64,
    /// Pods asked at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    fleet_concurrency: u64,
    /// Pods holding a target open (on their own observations) that make it open for every pod
    /// of the namespace...
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    fleet_open_pods: u32,
    /// ...or this share of the namespace's reporting pods, whichever comes first.
    #[arg(long, default_value_t = 0.2)]
    fleet_open_share: f64,
    /// `json` (default) or `text`.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(&args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!(error = %message, "detour-operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// How a task ended.
enum Ended {
    Ok(&'static str),
    Failed(String),
}

async fn run(args: Args) -> Result<(), String> {
    let allowed_hosts =
        AllowedHosts::parse_list(&args.allowed_hosts).map_err(|e| format!("--allowed-hosts: {e}"))?;
    if allowed_hosts.patterns().is_empty() {
        return Err("--allowed-hosts must name at least one host".to_owned());
    }
    let default_routes: Selection = args.default_routes.parse()?;
    if !(args.fleet_open_share > 0.0 && args.fleet_open_share <= 1.0) {
        return Err(format!(
            "--fleet-open-share must be a share in (0, 1], such as 0.2; got {}",
            args.fleet_open_share
        ));
    }
    let fleet = args.fleet.then(|| {
        let mut config = fleet_gather::Config {
            interval: Duration::from_millis(args.fleet_interval_ms),
            timeout: Duration::from_millis(args.fleet_timeout_ms.min(args.fleet_interval_ms)),
            concurrency: usize::try_from(args.fleet_concurrency).unwrap_or(64),
            ..fleet_gather::Config::default()
        };
        config.params.open_pods = args.fleet_open_pods;
        config.params.open_share = args.fleet_open_share;
        // A report counts for a few rounds: one missed poll does not make a pod unknown.
        config.params.stale_after = (config.interval * 3 + config.timeout).max(Duration::from_secs(5));
        config
    });
    let metrics = Metrics::new().map_err(|e| format!("registering metrics: {e}"))?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot configure the Kubernetes client: {e}"))?;
    controller::check_crds(&client).await.map_err(|e| e.to_string())?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (leading_tx, mut leading) = watch::channel(!args.leader_election);
    let resolver = Arc::new(Reloadable::default());
    let draining = Arc::new(AtomicBool::new(false));
    let mut tasks: JoinSet<Ended> = JoinSet::new();

    let admin = server::bind(args.admin_addr).await.map_err(|e| e.to_string())?;
    let webhook = server::bind(args.webhook_addr).await.map_err(|e| e.to_string())?;
    tasks.spawn(server_task(
        "admin server",
        server::serve(
            admin,
            None,
            App::Admin {
                metrics: metrics.clone(),
                tls: resolver.clone(),
                draining: draining.clone(),
            },
            shutdown.clone(),
        ),
    ));
    let settings = Settings {
        image: args.sidecar_image.clone(),
        image_pull_policy: args.sidecar_image_pull_policy.clone(),
        proxy_port: args.proxy_port,
        cpu_request: args.sidecar_cpu.clone(),
        memory_request: args.sidecar_memory.clone(),
        cpu_limit: args.sidecar_cpu_limit.clone(),
        memory_limit: args.sidecar_memory.clone(),
        // Per pod, from its annotation.
        upstream_ca_configmap: None,
        allowed_images: args.sidecar_image_allowed.clone(),
        allowed_hosts: allowed_hosts.clone(),
        default_routes,
        fleet: args.fleet,
        fleet_key: None,
    };
    tasks.spawn(server_task(
        "webhook server",
        server::serve(
            webhook,
            Some(server::tls_acceptor(resolver.clone())),
            App::Webhook {
                injector: Arc::new(Injector {
                    client: client.clone(),
                    settings,
                    metrics: metrics.clone(),
                }),
            },
            shutdown.clone(),
        ),
    ));

    let source = if args.cert_source == "files" {
        Source::Files {
            dir: args.tls_dir.clone(),
        }
    } else {
        Source::SelfIssued {
            secret: args.webhook_secret.clone(),
            namespace: args.namespace.clone(),
            service: args.webhook_service.clone(),
            webhook_config: args.webhook_config.clone(),
        }
    };
    let manager = Manager {
        client: client.clone(),
        source,
        resolver: resolver.clone(),
        validity: certs::Validity::default(),
        metrics: metrics.clone(),
        ca_key: Arc::default(),
    };
    {
        let mut shutdown = shutdown.clone();
        let leading = leading.clone();
        tasks.spawn(async move {
            loop {
                let is_leader = *leading.borrow();
                if let Err(e) = manager.tick(is_leader).await {
                    warn!(error = %e, "webhook certificate check failed; retrying");
                }
                let wait = if resolver.is_loaded() {
                    certs::CHECK_EVERY
                } else {
                    Duration::from_secs(2)
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ended::Ok("certificate manager"),
                }
            }
        });
    }

    let lease = leader::Config {
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.pod_name.clone(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    let led = leading.clone();
    if args.leader_election {
        let config = lease.clone();
        let client = client.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match leader::run(client, config, leading_tx, shutdown).await {
                Ok(()) => Ended::Ok("leader election"),
                Err(e) => Ended::Failed(e.to_string()),
            }
        });
    }

    {
        let client = client.clone();
        let namespace = args.namespace.clone();
        let reporter = Reporter {
            controller: controller::MANAGER.to_owned(),
            instance: Some(args.pod_name.clone()),
        };
        let mut shutdown_rx = shutdown.clone();
        tasks.spawn(async move {
            // Followers wait here; the controller starts once this replica leads.
            tokio::select! {
                r = leading.wait_for(|l| *l) => if r.is_err() { return Ended::Ok("route controller"); },
                _ = shutdown_rx.changed() => return Ended::Ok("route controller"),
            }
            let mut stop = shutdown_rx.clone();
            let stopped = async move {
                let _ = stop.changed().await;
            };
            match controller::run(
                client,
                namespace,
                allowed_hosts,
                reporter,
                metrics,
                fleet,
                stopped,
            )
            .await
            {
                Ok(()) => Ended::Ok("route controller"),
                Err(e) => Ended::Failed(e.to_string()),
            }
        });
    }

    info!(namespace = %args.namespace, identity = %args.pod_name, "detour-operator started");
    let mut failure = None;
    tokio::select! {
        () = signal() => {
            info!(delay_s = args.shutdown_delay_seconds, "shutting down: not ready, draining");
            draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(args.shutdown_delay_seconds)).await;
        }
        Some(ended) = tasks.join_next() => {
            failure = Some(match ended {
                Ok(Ended::Failed(e)) => e,
                Ok(Ended::Ok(name)) => format!("{name} stopped unexpectedly"),
                Err(e) => format!("a task panicked: {e}"),
            });
        }
    }
    shutdown_tx.send_replace(true);
    let drain = async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Ended::Failed(e)) = ended {
                warn!(error = %e, "task failed during shutdown");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        warn!("tasks did not stop within 20s; exiting anyway");
    }
    // The controller has stopped: hand the Lease over now rather than after it expires.
    if args.leader_election && *led.borrow() {
        match tokio::time::timeout(Duration::from_secs(5), leader::release(client, &lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot release the leader Lease; it expires on its own"),
            Err(_) => warn!("releasing the leader Lease timed out; it expires on its own"),
        }
    }
    failure.map_or(Ok(()), Err)
}

async fn server_task(name: &'static str, serve: impl Future<Output = ()>) -> Ended {
    serve.await;
    Ended::Ok(name)
}
