//! The route controller: one reconcile per namespace, in four phases that pass typed results
//! along, so status only ever describes what was applied. One module a phase:
//!
//! 1. [`gather`] (dereference): the namespace's ModelRoutes and RoutingPolicies and the
//!    cluster-wide default policies (from the watch caches), and whether each Secret the
//!    routes reference is opted in (one metadata-only GET each, see [`gather::secret_state`]:
//!    no Secret value or key name ever reaches the operator);
//! 2. [`compile`]: the pure [`detour_api::compile`];
//! 3. [`apply`]: server-side apply of ConfigMap `detour-routes` (key `routes.json`) with the
//!    one field manager [`MANAGER`], kept (emptied) when the last route goes;
//! 4. [`status`]: the whole status of every route and policy of the namespace, by SSA on the
//!    status subresource, skipped when nothing changed; an Event when `Ready` transitions.
//!
//! Triggers: every namespace (metadata only) is a root object; changes to routes, policies
//! and our ConfigMaps map to the namespace they live in. A change to a default policy in the
//! operator's namespace maps to every namespace that has routes. Secrets are not watched (the
//! operator may not list them): a namespace whose routes wait for a Secret (missing, not
//! opted in, not readable) is re-read every [`SECRET_RECHECK`] instead.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use detour_api::egress::AllowedHosts;
use detour_api::{Kind, ModelRoute, RoutingPolicy, defaults};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing::{debug, info, instrument, warn};

use crate::metrics::Metrics;

pub mod apply;
pub mod compile;
pub mod gather;
pub mod status;

pub use apply::Applied;
pub use compile::waits_for_secret;
pub use gather::{Inputs, referenced_secrets, secret_index, secret_state};

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

/// Reconciles one namespace: dereference → compile → apply → status.
#[instrument(skip_all, fields(namespace = %ns.name_any()))]
pub async fn reconcile(ns: Arc<PartialObjectMeta<Namespace>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    ctx.metrics.reconciles.inc();
    let namespace = ns.name_any();
    ctx.wait_synced().await?;
    let inputs = Inputs::gather(&ctx, &namespace).await?;
    let compiled = inputs.compile(&ctx.operator_namespace, &ctx.allowed_hosts);
    let applied = apply::apply(&ctx, &inputs, &compiled).await?;
    status::write(&ctx, &inputs, &compiled, &applied).await?;
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

    let (routes, route_events) = cache::<ModelRoute>(&client, wc.clone());
    let (policies, policy_events) = cache::<RoutingPolicy>(&client, wc.clone());
    let (config_maps, cm_events) = cache::<PartialObjectMeta<ConfigMap>>(
        &client,
        wc.clone()
            .labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"))
            .fields(&format!("metadata.name={}", defaults::CONFIG_MAP)),
    );
    let (namespaces, ns_events) = cache::<PartialObjectMeta<Namespace>>(&client, wc);

    // Fleet health runs beside the controller, on the leader only: one replica asks the pods,
    // and stops when the controller does.
    let fleet = fleet.map(|config| {
        crate::fleet_gather::start(
            client.clone(),
            config,
            metrics.clone(),
            routes.clone(),
            Recorder::new(client.clone(), reporter.clone()),
        )
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        operator_namespace: operator_namespace.clone(),
        allowed_hosts,
        routes: routes.clone(),
        policies,
        config_maps,
        recorder: Recorder::new(client, reporter),
        metrics,
        backoff: Arc::new(Backoff::default()),
        now: now_rfc3339,
    });

    let in_ns = |ns: Option<String>| ns.map(|n| ObjectRef::<PartialObjectMeta<Namespace>>::new(&n));
    info!(%operator_namespace, "starting the route controller");
    let controller = Controller::for_stream(ns_events, namespaces)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .watches_stream(route_events, move |r: ModelRoute| in_ns(r.namespace()))
        .watches_stream(policy_events, move |p: RoutingPolicy| {
            namespaces_for_policy(&p, &operator_namespace, &routes.state())
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
        Some(fleet) => {
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

/// A watch cache of every `K` that `config` selects, and the stream of the objects it
/// touches: what maps to reconciles.
fn cache<K>(
    client: &Client,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(writer, watcher(Api::<K>::all(client.clone()), config))
        .default_backoff()
        .touched_objects();
    (store, events)
}

#[cfg(test)]
mod tests;
