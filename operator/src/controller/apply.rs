//! Phase 3, apply: the compiled table into ConfigMap `detour-routes` (key `routes.json`) by
//! server-side apply with the one field manager [`MANAGER`].
//!
//! A namespace whose last route was deleted keeps its ConfigMap with an *empty* table rather
//! than losing it: pods that were injected mount it, and an empty table makes their sidecars
//! stop serving the old routes on the next reload, while a deleted ConfigMap would leave the
//! last files in place in running pods (stale routes) and block new pods from starting.

use std::collections::BTreeMap;

use detour_api::{Compiled, defaults};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::gather::Inputs;
use super::{Context, Error, HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGER};

/// The phase-3 result: which ConfigMap the statuses may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// `detour-routes` now holds the compiled table.
    ConfigMap { name: String, hash: String },
    /// Nothing to write: no routes here and no ConfigMap to empty.
    Nothing,
}

impl Applied {
    /// The ConfigMap the statuses name.
    pub fn config_map(&self) -> &str {
        match self {
            Self::ConfigMap { name, .. } => name,
            Self::Nothing => defaults::CONFIG_MAP,
        }
    }
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
