//! The route controller: one reconcile per namespace, in four phases that pass typed results
//! along, so status only ever describes what was applied.
//!
//! 1. **dereference** ([`Inputs::gather`]): the namespace's ModelRoutes and RoutingPolicies
//!    and the cluster-wide default policies (from the watch caches), and whether each Secret
//!    the routes reference is opted in (one metadata-only GET each, see [`secret_state`]: no
//!    Secret value or key name ever reaches the operator);
//! 2. **compile**: the pure [`detour_api::compile`];
//! 3. **apply**: server-side apply of ConfigMap `detour-routes` (key `routes.json`) with the one
//!    field manager [`MANAGER`]. A namespace whose last route was deleted keeps its ConfigMap
//!    with an *empty* table rather than losing it: pods that were injected mount it, and an
//!    empty table makes their sidecars stop serving the old routes on the next reload, while a
//!    deleted ConfigMap would leave the last files in place in running pods (stale routes)
//!    and block new pods from starting;
//! 4. **status**: the whole status of every route and policy of the namespace, by SSA on the
//!    status subresource, skipped when nothing changed; an Event when `Ready` transitions.
//!
//! Triggers: every namespace (metadata only) is a root object; changes to routes, policies
//! and our ConfigMaps map to the namespace they live in. A change to a default policy in the
//! operator's namespace maps to every namespace that has routes. Secrets are not watched (the
//! operator may not list them): a namespace whose routes wait for a Secret (missing, not
//! opted in, not readable) is re-read every [`SECRET_RECHECK`] instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use detour_api::egress::AllowedHosts;
use detour_api::{
    Compiled, Input, Kind, ModelRoute, Reason, RoutingPolicy, SecretIndex, SecretState, compile, defaults,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use thiserror::Error;
use tracing::{debug, info, instrument, warn};

use crate::metrics::Metrics;
use crate::status;

/// The one field manager of everything the operator writes.
pub const MANAGER: &str = "detour-operator";
/// Label on every object the operator creates, and the selector of the ConfigMap watch.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation with the route table's content hash, for `kubectl get -o yaml` readers.
pub const HASH_ANNOTATION: &str = "detour.dev/routes-hash";
/// Periodic re-reconcile of every namespace, the safety net under missed watch events.
const RESYNC: Duration = Duration::from_secs(600);
/// How long a reconcile waits for the watch caches to fill before backing off.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a namespace is reconciled again while a route waits for a Secret (Secrets are
/// not watched, so labelling one is noticed by this re-read).
pub const SECRET_RECHECK: Duration = Duration::from_secs(30);

/// What a reconcile can fail with. Each variant carries the object and the apiserver's answer.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the watch caches of ModelRoutes, RoutingPolicies and ConfigMaps have not synced yet")]
    NotSynced,
    #[error("reading the metadata of Secret {namespace}/{name}: {source}")]
    SecretRead {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying ConfigMap {namespace}/{}: {source}", defaults::CONFIG_MAP)]
    ConfigMapApply {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    StatusWrite {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A bounded label value for `detour_operator_reconcile_errors_total{kind}`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::NotSynced => "not_synced",
            Self::SecretRead { .. } => "secret_read",
            Self::ConfigMapApply { .. } => "configmap_apply",
            Self::StatusWrite { .. } => "status_write",
        }
    }
}

/// What `run` failed with: only what makes the operator exit.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(
        "the Detour CRDs are not installed ({resource} is not served by the apiserver). Install them with \
         `kubectl apply -f crds/` from a Detour checkout, or `helm install detour charts/detour` \
         (which installs them), then restart the operator"
    )]
    CrdsMissing { resource: &'static str },
    #[error("cannot reach the apiserver to check that the CRDs are installed: {0}")]
    Apiserver(#[source] kube::Error),
}

/// Everything a reconcile needs; built once in [`run`], shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    /// The apiserver.
    pub client: Client,
    /// The operator's namespace: default policies there apply to the whole cluster.
    pub operator_namespace: String,
    /// The platform's allowlist of endpoint hosts (`--allowed-hosts`).
    pub allowed_hosts: AllowedHosts,
    /// Watch cache of every ModelRoute.
    pub routes: Store<ModelRoute>,
    /// Watch cache of every RoutingPolicy.
    pub policies: Store<RoutingPolicy>,
    /// Watch cache of the `detour-routes` ConfigMaps (metadata only), to know where one exists.
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Publishes Events on the objects whose `Ready` changed.
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Per-namespace failure counts for [`error_policy`]'s exponential backoff.
    pub backoff: Arc<Backoff>,
    /// The clock of `lastTransitionTime`; fixed in tests.
    pub now: fn() -> String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.operator_namespace)
            .finish_non_exhaustive()
    }
}

/// RFC 3339 now, for `lastTransitionTime`.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The phase-1 result: everything `compile` reads, for one namespace.
#[derive(Debug)]
pub struct Inputs {
    pub namespace: String,
    /// This namespace's routes, by name.
    pub routes: Vec<ModelRoute>,
    /// This namespace's policies, by name.
    pub policies: Vec<RoutingPolicy>,
    /// Default policies of the operator's namespace (cluster scope), when this is not it.
    pub cluster_defaults: Vec<RoutingPolicy>,
    /// The referenced Secrets that exist, and whether they are opted in.
    pub secrets: SecretIndex,
    /// Whether `detour-routes` exists here (then it is kept current even with no routes).
    pub has_config_map: bool,
}

/// Whether Secret `namespace/name` exists and is opted in, from its metadata alone.
///
/// A metadata-only GET (`PartialObjectMetadata`): the apiserver sends neither values nor
/// key names, so nothing of the Secret but its labels reaches the operator. The operator
/// holds no cluster-wide Secret read: a namespace grants this `get` with a RoleBinding to
/// the `detour-credentials-reader` ClusterRole; without it the answer is 403 and the route
/// says so ([`SecretState::Unreadable`]).
pub async fn secret_state(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<SecretState>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_metadata_opt(name).await {
        Ok(None) => Ok(None),
        Ok(Some(meta)) => {
            let opted_in = meta
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(defaults::CREDENTIALS_LABEL))
                .is_some_and(|v| v == "true");
            Ok(Some(if opted_in {
                SecretState::OptedIn
            } else {
                SecretState::NotOptedIn
            }))
        }
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(Some(SecretState::Unreadable)),
        Err(source) => Err(Error::SecretRead {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

/// The states of the Secrets `routes` reference, one metadata GET each.
pub async fn secret_index(
    client: &Client,
    namespace: &str,
    routes: &[ModelRoute],
) -> Result<SecretIndex, Error> {
    let names: BTreeSet<&str> = routes.iter().flat_map(referenced_secrets).collect();
    let mut secrets = SecretIndex::new();
    for name in names {
        if let Some(state) = secret_state(client, namespace, name).await? {
            secrets.insert(namespace, name, state);
        }
    }
    Ok(secrets)
}

/// The Secret names a route's targets reference.
pub fn referenced_secrets(route: &ModelRoute) -> impl Iterator<Item = &str> {
    route
        .spec
        .targets
        .iter()
        .filter_map(|t| t.credentials.as_ref()?.secret_name.as_deref())
}

impl Inputs {
    /// Phase 1: reads the caches and the referenced Secrets' keys.
    pub async fn gather(ctx: &Context, namespace: &str) -> Result<Self, Error> {
        let in_ns = |o: &Option<String>| o.as_deref() == Some(namespace);
        let mut routes: Vec<ModelRoute> = ctx
            .routes
            .state()
            .iter()
            .filter(|r| in_ns(&r.metadata.namespace))
            .map(|r| (**r).clone())
            .collect();
        routes.sort_by_key(ResourceExt::name_any);
        let mut policies: Vec<RoutingPolicy> = ctx
            .policies
            .state()
            .iter()
            .filter(|p| in_ns(&p.metadata.namespace))
            .map(|p| (**p).clone())
            .collect();
        policies.sort_by_key(ResourceExt::name_any);
        let mut cluster_defaults: Vec<RoutingPolicy> = if namespace == ctx.operator_namespace {
            Vec::new()
        } else {
            ctx.policies
                .state()
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(ctx.operator_namespace.as_str())
                        && p.spec.default == Some(true)
                })
                .map(|p| (**p).clone())
                .collect()
        };
        cluster_defaults.sort_by_key(ResourceExt::name_any);
        let has_config_map = ctx
            .config_maps
            .get(&ObjectRef::new(defaults::CONFIG_MAP).within(namespace))
            .is_some();

        let secrets = secret_index(&ctx.client, namespace, &routes).await?;
        Ok(Self {
            namespace: namespace.to_owned(),
            routes,
            policies,
            cluster_defaults,
            secrets,
            has_config_map,
        })
    }

    /// Phase 2: the pure compile.
    pub fn compile(&self, operator_namespace: &str, allowed_hosts: &AllowedHosts) -> Compiled {
        let policies: Vec<RoutingPolicy> = self
            .policies
            .iter()
            .chain(&self.cluster_defaults)
            .cloned()
            .collect();
        compile(
            &Input::cluster(&self.routes, &policies, &self.secrets, operator_namespace)
                .with_allowed_hosts(allowed_hosts),
        )
    }
}

/// The phase-3 result: which ConfigMap the statuses may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// `detour-routes` now holds the compiled table.
    ConfigMap { name: String, hash: String },
    /// Nothing to write: no routes here and no ConfigMap to empty.
    Nothing,
}

/// The ConfigMap holding `compiled`'s table.
pub fn config_map(namespace: &str, compiled: &Compiled) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(defaults::CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "detour".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_owned(),
                compiled.table.hash.clone(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            defaults::CONFIG_MAP_KEY.to_owned(),
            compiled.table.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// Phase 3: server-side apply of the route table.
pub async fn apply(ctx: &Context, inputs: &Inputs, compiled: &Compiled) -> Result<Applied, Error> {
    if inputs.routes.is_empty() && !inputs.has_config_map {
        return Ok(Applied::Nothing);
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &inputs.namespace);
    api.patch(
        defaults::CONFIG_MAP,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(config_map(&inputs.namespace, compiled)),
    )
    .await
    .map_err(|source| Error::ConfigMapApply {
        namespace: inputs.namespace.clone(),
        source,
    })?;
    Ok(Applied::ConfigMap {
        name: defaults::CONFIG_MAP.to_owned(),
        hash: compiled.table.hash.clone(),
    })
}

/// Phase 4: the whole status of every object in the namespace, and Events on transitions.
pub async fn write_statuses(
    ctx: &Context,
    inputs: &Inputs,
    compiled: &Compiled,
    applied: &Applied,
) -> Result<(), Error> {
    let now = (ctx.now)();
    let config_map = match applied {
        Applied::ConfigMap { name, .. } => name.as_str(),
        Applied::Nothing => defaults::CONFIG_MAP,
    };
    let params = PatchParams::apply(MANAGER).force();
    for route in &inputs.routes {
        let next = status::route_status(compiled, route, config_map, &now);
        if route.status.as_ref() == Some(&next) {
            continue;
        }
        let previous = route
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let api: Api<ModelRoute> = Api::namespaced(ctx.client.clone(), &inputs.namespace);
        let body = serde_json::json!({
            "apiVersion": ModelRoute::api_version(&()),
            "kind": ModelRoute::kind(&()),
            "status": next,
        });
        api.patch_status(&route.name_any(), &params, &Patch::Apply(&body))
            .await
            .map_err(|source| Error::StatusWrite {
                kind: Kind::ModelRoute,
                namespace: inputs.namespace.clone(),
                name: route.name_any(),
                source,
            })?;
        publish_transition(ctx, route, &previous, &next.conditions).await;
    }
    for policy in &inputs.policies {
        let next = status::policy_status(compiled, policy, &now);
        if policy.status.as_ref() == Some(&next) {
            continue;
        }
        let previous = policy
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let api: Api<RoutingPolicy> = Api::namespaced(ctx.client.clone(), &inputs.namespace);
        let body = serde_json::json!({
            "apiVersion": RoutingPolicy::api_version(&()),
            "kind": RoutingPolicy::kind(&()),
            "status": next,
        });
        api.patch_status(&policy.name_any(), &params, &Patch::Apply(&body))
            .await
            .map_err(|source| Error::StatusWrite {
                kind: Kind::RoutingPolicy,
                namespace: inputs.namespace.clone(),
                name: policy.name_any(),
                source,
            })?;
        publish_transition(ctx, policy, &previous, &next.conditions).await;
    }
    Ok(())
}

/// An Event when `Ready` changed. A failure to publish is logged, not fatal: the status
/// already says the same thing.
async fn publish_transition<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    previous: &[detour_api::crd::Condition],
    next: &[detour_api::crd::Condition],
) {
    let Some(ready) = status::transition(previous, next) else {
        return;
    };
    let event = Event {
        type_: if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: ready.reason.clone(),
        note: Some(truncate(&ready.message, 1024)),
        action: "Compile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason = %ready.reason, "cannot publish Event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Reconciles one namespace: dereference → compile → apply → status.
#[instrument(skip_all, fields(namespace = %ns.name_any()))]
pub async fn reconcile(ns: Arc<PartialObjectMeta<Namespace>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    ctx.metrics.reconciles.inc();
    let namespace = ns.name_any();
    ctx.wait_synced().await?;
    let inputs = Inputs::gather(&ctx, &namespace).await?;
    let compiled = inputs.compile(&ctx.operator_namespace, &ctx.allowed_hosts);
    let applied = apply(&ctx, &inputs, &compiled).await?;
    write_statuses(&ctx, &inputs, &compiled, &applied).await?;
    if let Applied::ConfigMap { hash, .. } = &applied {
        debug!(routes = compiled.table.routes.len(), excluded = compiled.table.excluded.len(), %hash, "applied");
    }
    ctx.backoff.reset(&namespace);
    Ok(Action::requeue(if waits_for_secret(&compiled) {
        SECRET_RECHECK
    } else {
        RESYNC
    }))
}

/// Whether a route waits for a Secret to appear, be labelled or become readable.
pub fn waits_for_secret(compiled: &Compiled) -> bool {
    compiled.diagnostics.iter().any(|d| {
        matches!(
            d.reason,
            Reason::SecretNotFound | Reason::SecretNotOptedIn | Reason::SecretNotReadable
        )
    })
}

/// Requeues a failed namespace with exponential backoff (1 s doubling to 5 min), per
/// namespace, so one broken namespace neither spins nor slows the others.
pub fn error_policy(ns: Arc<PartialObjectMeta<Namespace>>, error: &Error, ctx: Arc<Context>) -> Action {
    let namespace = ns.name_any();
    let delay = ctx.backoff.next(&namespace);
    warn!(%namespace, error = %error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.kind()])
        .inc();
    Action::requeue(delay)
}

impl Context {
    async fn wait_synced(&self) -> Result<(), Error> {
        let synced = async {
            self.routes.wait_until_ready().await.ok();
            self.policies.wait_until_ready().await.ok();
            self.config_maps.wait_until_ready().await.ok();
        };
        tokio::time::timeout(SYNC_TIMEOUT, synced)
            .await
            .map_err(|_| Error::NotSynced)
    }
}

/// Per-key exponential backoff: `base * 2^(failures-1)`, capped.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failure of `key` and returns how long to wait.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Forgets `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// Exits early, naming the install command, when the CRDs are not served.
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    let check = |e: kube::Error, resource| match e {
        kube::Error::Api(s) if s.is_not_found() => RunError::CrdsMissing { resource },
        e => RunError::Apiserver(e),
    };
    let lp = ListParams::default().limit(1);
    Api::<ModelRoute>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| check(e, "modelroutes.detour.dev"))?;
    Api::<RoutingPolicy>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| check(e, "routingpolicies.detour.dev"))?;
    Ok(())
}

/// The namespaces a change to `policy` affects: its own, and when it lives in the operator's
/// namespace (a possible cluster default), every namespace that has routes.
pub fn namespaces_for_policy(
    policy: &RoutingPolicy,
    operator_namespace: &str,
    routes: &[Arc<ModelRoute>],
) -> BTreeSet<String> {
    let ns = policy.namespace().unwrap_or_default();
    let mut out = BTreeSet::from([ns.clone()]);
    if ns == operator_namespace {
        out.extend(routes.iter().filter_map(|r| r.namespace()));
    }
    out
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    operator_namespace: String,
    allowed_hosts: AllowedHosts,
    reporter: Reporter,
    metrics: Metrics,
    fleet: Option<crate::fleet_gather::Config>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    check_crds(&client).await?;
    let wc = watcher::Config::default().any_semantic();

    let (routes, routes_writer) = reflector::store::<ModelRoute>();
    let route_events = reflector::reflector(
        routes_writer,
        watcher(Api::<ModelRoute>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .touched_objects();
    let (policies, policies_writer) = reflector::store::<RoutingPolicy>();
    let policy_events = reflector::reflector(
        policies_writer,
        watcher(Api::<RoutingPolicy>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .touched_objects();
    let (config_maps, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let cm_events = reflector::reflector(
        cm_writer,
        watcher(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            wc.clone()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"))
                .fields(&format!("metadata.name={}", defaults::CONFIG_MAP)),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (namespaces, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let ns_events = reflector::reflector(
        ns_writer,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            wc.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();

    let fleet_client = client.clone();
    let fleet_metrics = metrics.clone();
    let fleet_routes = routes.clone();
    let fleet_recorder = Recorder::new(client.clone(), reporter.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        operator_namespace: operator_namespace.clone(),
        allowed_hosts,
        routes: routes.clone(),
        policies: policies.clone(),
        config_maps,
        recorder: Recorder::new(client, reporter),
        metrics,
        backoff: Arc::new(Backoff::default()),
        now: now_rfc3339,
    });

    let in_ns = |ns: Option<String>| ns.map(|n| ObjectRef::<PartialObjectMeta<Namespace>>::new(&n));
    let routes_for_policies = routes;
    info!(%operator_namespace, "starting the route controller");
    let controller = Controller::for_stream(ns_events, namespaces)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .watches_stream(route_events, move |r: ModelRoute| in_ns(r.namespace()))
        .watches_stream(policy_events, move |p: RoutingPolicy| {
            namespaces_for_policy(&p, &operator_namespace, &routes_for_policies.state())
                .into_iter()
                .map(|n| ObjectRef::<PartialObjectMeta<Namespace>>::new(&n))
                .collect::<Vec<_>>()
        })
        .watches_stream(cm_events, move |cm: PartialObjectMeta<ConfigMap>| {
            in_ns(cm.namespace())
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((ns, _)) => debug!(namespace = %ns.name, "reconciled"),
                Err(e) => debug!(error = %e, "controller event"),
            }
            std::future::ready(())
        });
    match fleet {
        // Fleet health runs beside the controller, on the leader only: one replica asks the
        // pods, and stops when the controller does.
        Some(config) => {
            let fleet =
                crate::fleet_gather::start(fleet_client, config, fleet_metrics, fleet_routes, fleet_recorder);
            tokio::select! {
                () = controller => {}
                () = fleet => warn!("fleet health stopped"),
            }
        }
        None => controller.await,
    }
    info!("route controller stopped");
    Ok(())
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
