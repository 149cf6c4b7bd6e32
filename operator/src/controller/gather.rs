//! Phase 1, dereference: everything `compile` reads for one namespace, from the watch
//! caches and one metadata-only GET per referenced Secret.

use std::collections::BTreeSet;

use detour_api::{ModelRoute, RoutingPolicy, SecretIndex, SecretState, defaults};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::{Context, Error};

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

impl Inputs {
    /// Phase 1: reads the caches and the referenced Secrets' metadata.
    pub async fn gather(ctx: &Context, namespace: &str) -> Result<Self, Error> {
        let routes = cached(&ctx.routes, |r| in_namespace(r, namespace));
        let policies = cached(&ctx.policies, |p| in_namespace(p, namespace));
        let cluster_defaults = if namespace == ctx.operator_namespace {
            Vec::new()
        } else {
            cached(&ctx.policies, |p| {
                in_namespace(p, &ctx.operator_namespace) && p.spec.default == Some(true)
            })
        };
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
}

fn in_namespace<K: Resource>(o: &K, namespace: &str) -> bool {
    o.meta().namespace.as_deref() == Some(namespace)
}

/// The cached objects `keep` selects, by name.
fn cached<K>(store: &Store<K>, keep: impl Fn(&K) -> bool) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut out: Vec<K> = store
        .state()
        .iter()
        .filter(|o| keep(o))
        .map(|o| (**o).clone())
        .collect();
    out.sort_by_key(ResourceExt::name_any);
    out
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
