//! The injection itself, pure: a Pod, the injector's settings and the Secrets of the routes
//! the pod selects → skip, a JSON patch, or a denial that says why (linkerd's proxy-injector
//! shape: skip reasons → patch from small helpers → respond).
//!
//! Which Secrets: only those of the ModelRoutes the pod selects (annotation
//! `detour.dev/routes: "chat,embed"`, `"*"` for all; without it the operator's
//! `--default-routes`, `none` unless the platform chose `all`), and of those only the ones
//! `compile` accepts with the same rules as the operator (opted-in Secret, allowed
//! destination). The webhook computes this from the ModelRoutes and the Secrets' metadata
//! itself, never from the `detour-routes` ConfigMap, which tenants may be able to write.
//!
//! What a patch adds (DESIGN.md, "Injection"):
//! - the sidecar as a *native* sidecar: the first init container, `restartPolicy: Always`,
//!   so it starts before the app and stops after it, and Jobs still complete;
//! - volume `detour-routes` (the ConfigMap) mounted at `/etc/detour`;
//! - one read-only Secret volume per Secret of the selected routes, at
//!   `/var/run/detour/credentials/<secret>` in the sidecar only;
//! - `DETOUR_ALLOWED_HOSTS` on the sidecar: the operator's allowlist, which the sidecar
//!   enforces again on every table it loads;
//! - `OPENAI_BASE_URL=http://127.0.0.1:<port>/v1` on every app container that does not set
//!   it already, unless `detour.dev/inject-env: "false"`;
//! - with `detour.dev/upstream-ca-configmap: <name>`, that ConfigMap's `ca.crt` mounted in the
//!   sidecar and passed as `--upstream-ca-file` (a private CA of in-cluster model servers);
//! - annotation `detour.dev/injected` naming the image, for people and for idempotence.
//!
//! Idempotent: a pod that already has the sidecar gets no patch.

use std::collections::{BTreeMap, BTreeSet};

use detour_api::egress::AllowedHosts;
use detour_api::{Input, ModelRoute, SecretIndex, compile, defaults};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction, KeyToPath, Pod,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

/// The label that opts a pod in (the webhook's object selector matches it too).
pub const INJECT_LABEL: &str = "detour.dev/inject";
/// Annotation overrides.
pub const IMAGE_ANNOTATION: &str = "detour.dev/sidecar-image";
pub const CPU_ANNOTATION: &str = "detour.dev/sidecar-cpu";
pub const MEMORY_ANNOTATION: &str = "detour.dev/sidecar-memory";
pub const PORT_ANNOTATION: &str = "detour.dev/proxy-port";
pub const ENV_ANNOTATION: &str = "detour.dev/inject-env";
/// A ConfigMap whose `ca.crt` the sidecar trusts for HTTPS upstreams.
pub const UPSTREAM_CA_ANNOTATION: &str = "detour.dev/upstream-ca-configmap";
/// The upstream CA volume, where it is mounted and the key read from the ConfigMap (the key
/// `kube-root-ca.crt` and cert-manager's trust bundles use).
pub const UPSTREAM_CA_VOLUME: &str = "detour-upstream-ca";
pub const UPSTREAM_CA_DIR: &str = "/etc/detour-upstream-ca";
pub const UPSTREAM_CA_KEY: &str = "ca.crt";
/// The ModelRoutes (by name, comma-separated, `*` for all) whose Secrets the pod mounts.
pub const ROUTES_ANNOTATION: &str = "detour.dev/routes";
/// The sidecar's environment variable carrying the operator's allowlist of endpoint hosts.
pub const ALLOWED_HOSTS_ENV: &str = "DETOUR_ALLOWED_HOSTS";
/// Set on injected pods, to the sidecar image.
pub const INJECTED_ANNOTATION: &str = "detour.dev/injected";
/// The sidecar container's name.
pub const SIDECAR: &str = "detour-sidecar";
/// The route table volume.
pub const ROUTES_VOLUME: &str = "detour-routes";
/// Where the route table is mounted.
pub const ROUTES_DIR: &str = "/etc/detour";
/// The sidecar's metrics port and its name (the PodMonitor selects it by name).
pub const METRICS_PORT: u16 = 9090;
pub const METRICS_PORT_NAME: &str = "detour-metrics";
/// The sidecar's environment variable carrying its key for the fleet's view: the operator
/// reads it from the pod (its pod watch) and presents it when it sends the view.
pub const FLEET_KEY_ENV: &str = "DETOUR_FLEET_KEY";
/// The env var that points OpenAI clients at the sidecar.
pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";

/// The injector's settings (operator flags); annotations override per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub image: String,
    pub image_pull_policy: String,
    pub proxy_port: u16,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    /// The ConfigMap holding the upstream CA (per pod, from its annotation).
    pub upstream_ca_configmap: Option<String>,
    /// What annotation `detour.dev/sidecar-image` may name besides [`Settings::image`]:
    /// a repository (`registry.example/detour-sidecar`, any tag or digest of it) or an exact
    /// reference (`registry.example/detour-sidecar:1.2`). Empty: only `image`. See
    /// [`image_allowed`].
    pub allowed_images: Vec<String>,
    /// The platform's allowlist of endpoint hosts (`--allowed-hosts`).
    pub allowed_hosts: AllowedHosts,
    /// Which routes a pod without [`ROUTES_ANNOTATION`] selects (`--default-routes`).
    pub default_routes: Selection,
    /// Fleet health is on (`--fleet`): each injected sidecar gets a key of its own.
    pub fleet: bool,
    /// The key of the pod being injected ([`FLEET_KEY_ENV`]), drawn per review when `fleet`.
    pub fleet_key: Option<String>,
}

/// Which routes a pod without [`ROUTES_ANNOTATION`] gets the Secrets of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Selection {
    /// None: a pod names its routes, so a new route never widens a running workload's mounts.
    #[default]
    None,
    /// Every route of the namespace (single-tenant namespaces).
    All,
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            other => Err(format!("{other:?} is not a route selection; use none or all")),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: "ghcr.io/detour-dev/detour-sidecar:0.1.0".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            proxy_port: 4000,
            cpu_request: "50m".to_owned(),
            memory_request: "32Mi".to_owned(),
            cpu_limit: None,
            memory_limit: "128Mi".to_owned(),
            upstream_ca_configmap: None,
            allowed_images: Vec::new(),
            allowed_hosts: AllowedHosts::providers(),
            default_routes: Selection::None,
            fleet: false,
            fleet_key: None,
        }
    }
}

/// A fresh fleet key: 32 random bytes, hex. `None` if the system has no randomness (the pod
/// is then injected without one and runs alone).
pub fn fleet_key() -> Option<String> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotLabelled,
    AlreadyInjected,
}

impl Skip {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotLabelled => "not labelled detour.dev/inject=true",
            Self::AlreadyInjected => "already injected",
        }
    }
}

/// A pod that cannot be injected, and why. The message is what `kubectl` shows the user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Deny {
    #[error(
        "namespace {namespace:?} has no ModelRoute: create a ModelRoute in this namespace (kubectl get modelroutes -n {namespace}) before labelling pods {INJECT_LABEL}=true"
    )]
    NoRoutes { namespace: String },
    #[error(
        "annotation {IMAGE_ANNOTATION}: image {image:?} is not allowed; this cluster's Detour allows {allowed} (operator flag --sidecar-image-allowed, chart value sidecar.image.overrideAllowlist)"
    )]
    ImageNotAllowed { image: String, allowed: String },
    #[error("annotation {annotation}: {value:?} is not valid: {expected}")]
    BadAnnotation {
        annotation: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "hostNetwork pods share the node's loopback, so the sidecar's 127.0.0.1:{port} would clash between pods; remove the {INJECT_LABEL} label or hostNetwork"
    )]
    HostNetwork { port: u16 },
    #[error(
        "container {container:?} already uses port {port}, which the sidecar needs; set annotation {PORT_ANNOTATION} to a free port"
    )]
    PortInUse { container: String, port: u16 },
    #[error("the pod already has a volume named {name:?}, which the injector needs; rename it")]
    VolumeInUse { name: String },
    #[error(
        "annotation {ROUTES_ANNOTATION} names ModelRoute {name:?}, which namespace {namespace:?} does not have (it has: {known}); fix the name or create the route first"
    )]
    UnknownRoute {
        namespace: String,
        name: String,
        known: String,
    },
}

impl Deny {
    /// A bounded label value for `detour_operator_webhook_denials_total{reason}`.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::NoRoutes { .. } => "no_routes",
            Self::BadAnnotation { .. } => "bad_annotation",
            Self::ImageNotAllowed { .. } => "image_not_allowed",
            Self::HostNetwork { .. } => "host_network",
            Self::PortInUse { .. } => "port_in_use",
            Self::VolumeInUse { .. } => "volume_in_use",
            Self::UnknownRoute { .. } => "unknown_route",
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skip(Skip),
    Patch(Patch),
}

/// The routes `pod` selects among the namespace's `routes`: [`ROUTES_ANNOTATION`]'s names
/// (`*`: all; empty: none), else `settings.default_routes`. A name the namespace does not
/// have is a denial: a typo would otherwise start a pod without its credentials.
pub fn selected<'a>(
    pod: &Pod,
    namespace: &str,
    settings: &Settings,
    routes: &'a [ModelRoute],
) -> Result<Vec<&'a ModelRoute>, Deny> {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROUTES_ANNOTATION));
    let Some(value) = annotation else {
        return Ok(match settings.default_routes {
            Selection::None => Vec::new(),
            Selection::All => routes.iter().collect(),
        });
    };
    let names: BTreeSet<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.contains("*") {
        return Ok(routes.iter().collect());
    }
    let by_name: BTreeMap<String, &ModelRoute> = routes.iter().map(|r| (r.name_any(), r)).collect();
    names
        .into_iter()
        .map(|name| {
            by_name.get(name).copied().ok_or_else(|| Deny::UnknownRoute {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                known: by_name.keys().cloned().collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

/// The Secrets to mount for `routes`: those `compile` accepts with the operator's rules
/// (opted in per `secrets`, destination allowed by `allowed_hosts`). Each route is compiled
/// on its own and without its policy, because only its targets decide what may be mounted.
pub fn mounts(
    routes: &[&ModelRoute],
    secrets: &SecretIndex,
    allowed_hosts: &AllowedHosts,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for route in routes {
        let mut alone = (*route).clone();
        alone.spec.policy_ref = None;
        let compiled = compile(
            &Input::cluster(std::slice::from_ref(&alone), &[], secrets, "").with_allowed_hosts(allowed_hosts),
        );
        out.extend(
            compiled
                .table
                .routes
                .iter()
                .flat_map(|r| &r.targets)
                .filter_map(|t| t.credentials.as_ref()?.secret.clone()),
        );
    }
    out
}

/// Why `pod` is left alone, if it is: checked before anything else (and before the
/// webhook looks the namespace's routes up).
pub fn skip(pod: &Pod) -> Option<Skip> {
    let labels = pod.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(INJECT_LABEL)).map(String::as_str) != Some("true") {
        return Some(Skip::NotLabelled);
    }
    let spec = pod.spec.as_ref()?;
    let init = spec.init_containers.iter().flatten();
    init.chain(&spec.containers)
        .any(|c| c.name == SIDECAR)
        .then_some(Skip::AlreadyInjected)
}

/// Decides and builds the patch for `pod`. `secrets` are the Secrets to mount.
pub fn inject(pod: &Pod, settings: &Settings, secrets: &BTreeSet<String>) -> Result<Outcome, Deny> {
    if let Some(skip) = skip(pod) {
        return Ok(Outcome::Skip(skip));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let settings = overrides(settings, &annotations)?;
    if spec.host_network == Some(true) {
        return Err(Deny::HostNetwork {
            port: settings.proxy_port,
        });
    }
    for c in init.iter().chain(&spec.containers) {
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port).unwrap_or_default();
            if port == settings.proxy_port || port == METRICS_PORT {
                return Err(Deny::PortInUse {
                    container: c.name.clone(),
                    port,
                });
            }
        }
    }
    let volumes = spec.volumes.clone().unwrap_or_default();
    let wanted: Vec<Volume> = std::iter::once(routes_volume())
        .chain(settings.upstream_ca_configmap.as_deref().map(upstream_ca_volume))
        .chain(secrets.iter().map(|s| secret_volume(s)))
        .collect();
    if let Some(v) = volumes.iter().find(|v| wanted.iter().any(|w| w.name == v.name)) {
        return Err(Deny::VolumeInUse { name: v.name.clone() });
    }

    let mut ops = Vec::new();
    if annotations.is_empty() && pod.metadata.annotations.is_none() {
        ops.push(add("/metadata/annotations", serde_json::json!({})));
    }
    ops.push(add(
        &format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)),
        Value::String(settings.image.clone()),
    ));
    let sidecar = sidecar(&settings, secrets);
    if spec.init_containers.is_none() {
        ops.push(add("/spec/initContainers", to_value(&[sidecar])));
    } else {
        ops.push(add("/spec/initContainers/0", to_value(&sidecar)));
    }
    if spec.volumes.is_none() {
        ops.push(add("/spec/volumes", to_value(&wanted)));
    } else {
        ops.extend(wanted.iter().map(|v| add("/spec/volumes/-", to_value(v))));
    }
    if annotations.get(ENV_ANNOTATION).map(String::as_str) != Some("false") {
        let env = EnvVar {
            name: BASE_URL_ENV.to_owned(),
            value: Some(format!("http://127.0.0.1:{}/v1", settings.proxy_port)),
            value_from: None,
        };
        for (i, c) in spec.containers.iter().enumerate() {
            match &c.env {
                None => ops.push(add(&format!("/spec/containers/{i}/env"), to_value(&[&env]))),
                Some(vars) if vars.iter().any(|v| v.name == BASE_URL_ENV) => {}
                Some(_) => ops.push(add(&format!("/spec/containers/{i}/env/-"), to_value(&env))),
            }
        }
    }
    Ok(Outcome::Patch(Patch(ops)))
}

/// The settings after the pod's annotations, each validated.
fn overrides(settings: &Settings, annotations: &BTreeMap<String, String>) -> Result<Settings, Deny> {
    let mut s = settings.clone();
    if let Some(image) = annotations.get(IMAGE_ANNOTATION) {
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(Deny::BadAnnotation {
                annotation: IMAGE_ANNOTATION,
                value: image.clone(),
                expected: "an image reference such as ghcr.io/detour-dev/detour-sidecar:0.1.0",
            });
        }
        if !image_allowed(image, &settings.image, &settings.allowed_images) {
            let allowed = std::iter::once(settings.image.as_str())
                .chain(settings.allowed_images.iter().map(String::as_str))
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Deny::ImageNotAllowed {
                image: image.clone(),
                allowed: format!("only {allowed}"),
            });
        }
        s.image.clone_from(image);
    }
    if let Some(cpu) = annotations.get(CPU_ANNOTATION) {
        check_quantity(CPU_ANNOTATION, cpu, "a CPU quantity such as 100m or 0.5")?;
        s.cpu_request.clone_from(cpu);
    }
    if let Some(memory) = annotations.get(MEMORY_ANNOTATION) {
        check_quantity(MEMORY_ANNOTATION, memory, "a memory quantity such as 64Mi or 1Gi")?;
        s.memory_request.clone_from(memory);
        s.memory_limit.clone_from(memory);
    }
    if let Some(port) = annotations.get(PORT_ANNOTATION) {
        s.proxy_port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1 && *p != METRICS_PORT)
            .ok_or_else(|| Deny::BadAnnotation {
                annotation: PORT_ANNOTATION,
                value: port.clone(),
                expected: "a port number 1-65535 other than 9090 (the metrics port)",
            })?;
    }
    if let Some(name) = annotations.get(UPSTREAM_CA_ANNOTATION) {
        if !is_dns_subdomain(name) {
            return Err(Deny::BadAnnotation {
                annotation: UPSTREAM_CA_ANNOTATION,
                value: name.clone(),
                expected: "the name of a ConfigMap in the pod's namespace with key ca.crt, such as kube-root-ca.crt",
            });
        }
        s.upstream_ca_configmap = Some(name.clone());
    }
    if let Some(env) = annotations.get(ENV_ANNOTATION)
        && env != "true"
        && env != "false"
    {
        return Err(Deny::BadAnnotation {
            annotation: ENV_ANNOTATION,
            value: env.clone(),
            expected: "\"true\" or \"false\"",
        });
    }
    Ok(s)
}

/// The repository of an image reference: without `@digest` and without a `:tag` after the
/// last `/` (a `:port` of the registry stays).
fn repository(reference: &str) -> &str {
    let reference = reference.split_once('@').map_or(reference, |(r, _)| r);
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => &reference[..last_slash + colon],
        None => reference,
    }
}

/// Whether a pod may ask for sidecar image `image`: the configured image itself, an exact
/// reference in `allowed`, or any tag or digest of a repository in `allowed` (an entry with
/// neither tag nor digest).
pub fn image_allowed(image: &str, configured: &str, allowed: &[String]) -> bool {
    image == configured
        || allowed.iter().any(|entry| {
            image == entry || (repository(entry) == entry.as_str() && repository(image) == entry.as_str())
        })
}

/// A valid object name (RFC 1123 subdomain): lowercase alphanumerics, `-` and `.`, starting
/// and ending alphanumeric, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// A Kubernetes quantity: digits, an optional fraction, an optional suffix.
fn check_quantity(annotation: &'static str, value: &str, expected: &'static str) -> Result<(), Deny> {
    const SUFFIXES: &[&str] = &["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"];
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let valid =
        !number.is_empty() && number.parse::<f64>().is_ok_and(|n| n > 0.0) && SUFFIXES.contains(&suffix);
    if valid {
        Ok(())
    } else {
        Err(Deny::BadAnnotation {
            annotation,
            value: value.to_owned(),
            expected,
        })
    }
}

/// The sidecar container.
pub fn sidecar(settings: &Settings, secrets: &BTreeSet<String>) -> Container {
    let mut limits = BTreeMap::from([("memory".to_owned(), Quantity(settings.memory_limit.clone()))]);
    if let Some(cpu) = &settings.cpu_limit {
        limits.insert("cpu".to_owned(), Quantity(cpu.clone()));
    }
    let mounts = std::iter::once(VolumeMount {
        name: ROUTES_VOLUME.to_owned(),
        mount_path: ROUTES_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    })
    .chain(settings.upstream_ca_configmap.as_ref().map(|_| VolumeMount {
        name: UPSTREAM_CA_VOLUME.to_owned(),
        mount_path: UPSTREAM_CA_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }))
    .chain(secrets.iter().map(|s| VolumeMount {
        name: secret_volume_name(s),
        mount_path: format!("{}/{s}", defaults::CREDENTIALS_ROOT),
        read_only: Some(true),
        ..VolumeMount::default()
    }))
    .collect();
    Container {
        name: SIDECAR.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        restart_policy: Some("Always".to_owned()),
        args: Some(sidecar_args(settings)),
        env: Some(
            std::iter::once(EnvVar {
                name: ALLOWED_HOSTS_ENV.to_owned(),
                value: Some(settings.allowed_hosts.to_list()),
                value_from: None,
            })
            .chain(settings.fleet_key.as_ref().map(|key| EnvVar {
                name: FLEET_KEY_ENV.to_owned(),
                value: Some(key.clone()),
                value_from: None,
            }))
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.to_owned()),
            container_port: i32::from(METRICS_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 2)),
        startup_probe: Some(Probe {
            failure_threshold: Some(30),
            ..probe("/healthz", 1)
        }),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(settings.cpu_request.clone())),
                ("memory".to_owned(), Quantity(settings.memory_request.clone())),
            ])),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn sidecar_args(settings: &Settings) -> Vec<String> {
    let mut args = vec![
        "--config".to_owned(),
        format!("{ROUTES_DIR}/{}", defaults::CONFIG_MAP_KEY),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", settings.proxy_port),
        "--admin-listen".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ];
    if settings.upstream_ca_configmap.is_some() {
        args.push("--upstream-ca-file".to_owned());
        args.push(format!("{UPSTREAM_CA_DIR}/{UPSTREAM_CA_KEY}"));
    }
    args
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(METRICS_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn routes_volume() -> Volume {
    Volume {
        name: ROUTES_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: defaults::CONFIG_MAP.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Only `ca.crt`, so nothing else in the ConfigMap reaches the sidecar.
fn upstream_ca_volume(configmap: &str) -> Volume {
    Volume {
        name: UPSTREAM_CA_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.to_owned(),
            items: Some(vec![KeyToPath {
                key: UPSTREAM_CA_KEY.to_owned(),
                path: UPSTREAM_CA_KEY.to_owned(),
                mode: None,
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn secret_volume(secret: &str) -> Volume {
    Volume {
        name: secret_volume_name(secret),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            // World-readable inside the sidecar's own mount: the sidecar runs as 65532, which a
            // root-owned 0440 file would lock out in pods without an fsGroup.
            default_mode: Some(0o444),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A volume name (a DNS label, at most 63 characters) unique per Secret name (which may be
/// 253 characters with dots): `detour-cred-<name>`, shortened with a hash when needed.
pub fn secret_volume_name(secret: &str) -> String {
    let plain = format!("detour-cred-{secret}");
    if plain.len() <= 63 && !secret.contains('.') {
        return plain;
    }
    // FNV-1a: stable across releases (unlike std's hasher), enough to tell names apart.
    let hash = secret.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = secret
        .chars()
        .take(40)
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    format!("detour-cred-{}-{:08x}", head.trim_end_matches('-'), hash as u32)
}

fn add(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::parse(path).unwrap_or_default(),
        value,
    })
}

/// JSON-pointer escaping of one path segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(image: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(IMAGE_ANNOTATION.to_owned(), image.to_owned())])
    }

    /// The image annotation names the configured image, an exact allowed reference, or a tag
    /// or digest of an allowed repository; a look-alike repository (longer name, other
    /// registry port, path below) is not one.
    #[test]
    fn image_allowlist_matches_repositories_and_references() {
        let configured = "ghcr.io/detour-dev/detour-sidecar:0.1.0";
        let allowed = vec![
            "registry.local:5000/detour-sidecar".to_owned(),
            "mirror.example/detour/sidecar:1.2".to_owned(),
        ];
        let ok = |i: &str| image_allowed(i, configured, &allowed);
        assert!(ok(configured));
        assert!(ok("registry.local:5000/detour-sidecar:dev"));
        assert!(ok(&format!(
            "registry.local:5000/detour-sidecar@sha256:{}",
            "a".repeat(64)
        )));
        assert!(ok("registry.local:5000/detour-sidecar"));
        assert!(ok("mirror.example/detour/sidecar:1.2"));
        assert!(!ok("mirror.example/detour/sidecar:1.3"), "exact entry");
        assert!(!ok("registry.local:5000/detour-sidecar-evil:dev"));
        assert!(!ok("registry.local:5001/detour-sidecar:dev"));
        assert!(!ok("registry.local:5000/detour-sidecar/x:dev"));
        assert!(
            !ok("ghcr.io/detour-dev/detour-sidecar:0.2.0"),
            "only the configured tag"
        );
        assert!(!image_allowed("evil.example/x:1", configured, &[]));
    }

    /// With no allowlist, an annotation naming another image is refused with a message that
    /// names the image, what is allowed and the setting that changes it; an allowed one is
    /// used.
    #[test]
    fn image_override_outside_the_allowlist_is_refused() {
        let settings = Settings::default();
        let deny = overrides(&settings, &annotated("evil.example/miner:latest")).unwrap_err();
        assert_eq!(deny.reason(), "image_not_allowed");
        let message = deny.to_string();
        assert!(
            message.contains("\"evil.example/miner:latest\" is not allowed"),
            "{message}"
        );
        assert!(
            message.contains("only \"ghcr.io/detour-dev/detour-sidecar:0.1.0\""),
            "{message}"
        );
        assert!(message.contains("sidecar.image.overrideAllowlist"), "{message}");

        let settings = Settings {
            allowed_images: vec!["registry.local/detour-sidecar".to_owned()],
            ..Settings::default()
        };
        let s = overrides(&settings, &annotated("registry.local/detour-sidecar:dev")).unwrap();
        assert_eq!(s.image, "registry.local/detour-sidecar:dev");
    }
}
