//! Command-line flags (each also readable from a `DETOUR_*` environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Detour's sidecar: an OpenAI-compatible proxy that fails over between LLM providers.
#[derive(Debug, Parser)]
#[command(name = "detour-sidecar", version)]
pub struct Cli {
    /// The compiled route table the operator writes (ConfigMap `detour-routes`, key
    /// `routes.json`). Reloaded when it changes.
    #[arg(long, env = "DETOUR_CONFIG", default_value = "/etc/detour/routes.json")]
    pub config: PathBuf,

    /// Standalone: ModelRoute/RoutingPolicy YAML compiled by the sidecar itself; replaces
    /// `--config`. Reloaded when it changes.
    #[arg(long, env = "DETOUR_ROUTES")]
    pub routes: Option<PathBuf>,

    /// Where credential files are: standalone, `secretName: X` reads `<dir>/X/<key>` and a
    /// relative `apiKeyFile` is read from here; in every mode the sidecar reads no credential
    /// file outside it.
    #[arg(long, env = "DETOUR_CREDENTIALS_DIR", default_value = detour_api::defaults::CREDENTIALS_ROOT)]
    pub credentials_dir: PathBuf,

    /// The hosts targets may send requests and credentials to, comma-separated (`*` stands
    /// for exactly one DNS label). Default: the providers' public API hosts and loopback (a
    /// local model server). In a pod the injector sets it to the operator's allowlist.
    #[arg(long, env = "DETOUR_ALLOWED_HOSTS", default_value_t = default_allowed_hosts())]
    pub allowed_hosts: String,

    /// Standalone (`--routes`) and testing only: send the requests of every target named
    /// TARGET to URL instead of the endpoint in the YAML, so the YAML a cluster uses runs
    /// unchanged against local fakes or a local model server. Repeatable; the environment
    /// variable takes a comma-separated list. Plain `http://` is allowed to loopback only (the
    /// override is the opt-in); the other destination rules apply as to any endpoint.
    #[arg(
        long = "endpoint-override",
        env = "DETOUR_ENDPOINT_OVERRIDES",
        value_name = "TARGET=URL",
        value_delimiter = ','
    )]
    pub endpoint_overrides: Vec<String>,

    /// The OpenAI-compatible API (HTTP/1.1 and h2c).
    #[arg(long, env = "DETOUR_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// `/metrics`, `/healthz`, `/readyz`. Default: `127.0.0.1:9090` standalone (`--routes`),
    /// where nothing else needs it; `0.0.0.0:9090` with `--config` (a pod, where Prometheus
    /// and the kubelet's probes reach it from outside the pod; the injector also passes it).
    #[arg(long, env = "DETOUR_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "DETOUR_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// One budget for the request bodies and answers the sidecar holds in memory at once;
    /// a request that would go over it gets 503 `buffer_budget_exhausted`.
    #[arg(long, env = "DETOUR_MAX_BUFFERED_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// Most connections open at once on `--listen`; beyond it, new connections wait in the
    /// kernel's backlog until one closes (the admin listener has its own cap).
    #[arg(long, env = "DETOUR_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection with no request in flight for this long is closed; also the longest a
    /// request head may take to arrive.
    #[arg(long, env = "DETOUR_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub idle_timeout_ms: u64,

    /// A client that reads nothing of its answer for this long is disconnected, and its
    /// request (with its upstream call) dropped.
    #[arg(long, env = "DETOUR_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u64,

    /// How often the route table's file is checked for changes.
    #[arg(long, env = "DETOUR_RELOAD_INTERVAL_MS", default_value_t = 250)]
    pub reload_interval_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "DETOUR_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Runtime worker threads. 1 (the default) runs everything on one thread, like nginx's
    /// single worker: a sidecar shares its pod's CPU with the app, and one thread avoids
    /// cross-thread wake-ups on the request path. 0 means one per CPU.
    #[arg(long, env = "DETOUR_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// A PEM file of CA certificates to trust for HTTPS upstreams in addition to the
    /// Mozilla roots compiled in: an in-cluster model server behind a private CA.
    #[arg(long = "upstream-ca-file", env = "DETOUR_UPSTREAM_CA_FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Idle keep-alive connections kept per upstream origin (scheme, host, port); they are
    /// closed after 90 s unused.
    #[arg(long, env = "DETOUR_UPSTREAM_MAX_IDLE", default_value_t = crate::providers::client::MAX_IDLE_PER_ORIGIN)]
    pub upstream_max_idle: usize,

    /// The key the operator presents when it sends the fleet's view (set by the injector;
    /// from the environment, so it is not on the command line). Without it the sidecar takes
    /// no view and runs alone.
    #[arg(long, env = "DETOUR_FLEET_KEY", hide_env_values = true)]
    pub fleet_key: Option<String>,

    /// Log format on stderr: `text` or `json`.
    #[arg(long, env = "DETOUR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Send a scripted burst of requests through this sidecar, print what served each and
    /// why, then keep serving.
    #[arg(long)]
    pub demo: bool,
}

/// The admin port when `--admin-listen` is not given.
pub const ADMIN_PORT: u16 = 9090;

impl Cli {
    /// `--admin-listen`, or its default for the mode: loopback standalone, every interface
    /// when serving an operator's table.
    pub fn admin_listen(&self) -> SocketAddr {
        self.admin_listen.unwrap_or_else(|| {
            let ip = if self.routes.is_some() {
                std::net::Ipv4Addr::LOCALHOST
            } else {
                std::net::Ipv4Addr::UNSPECIFIED
            };
            SocketAddr::from((ip, ADMIN_PORT))
        })
    }
}

/// `--allowed-hosts`' default, for laptops: the providers' hosts and loopback.
pub fn default_allowed_hosts() -> String {
    detour_api::egress::AllowedHosts::standalone().to_list()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("detour-sidecar").chain(args.iter().copied())).unwrap()
    }

    /// Standalone, the admin listener stays on loopback unless asked; serving an operator's
    /// table (a pod) it listens on every interface, so Prometheus and the probes reach it; an
    /// explicit address wins in both modes.
    #[test]
    fn admin_listener_defaults_by_mode() {
        assert_eq!(
            parse(&["--routes", "r.yaml"]).admin_listen().to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(parse(&[]).admin_listen().to_string(), "0.0.0.0:9090");
        assert_eq!(
            parse(&["--routes", "r.yaml", "--admin-listen", "0.0.0.0:9191"])
                .admin_listen()
                .to_string(),
            "0.0.0.0:9191"
        );
    }
}
