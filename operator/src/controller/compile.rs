//! Phase 2, compile: the pure [`detour_api::compile`] over what was gathered.

use detour_api::egress::AllowedHosts;
use detour_api::{Compiled, Input, Reason, RoutingPolicy, compile};

use super::gather::Inputs;

impl Inputs {
    /// The namespace's routes against its own policies and the cluster's defaults.
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

/// Whether a route waits for a Secret to appear, be labelled or become readable (Secrets are
/// not watched: the namespace is re-read soon instead).
pub fn waits_for_secret(compiled: &Compiled) -> bool {
    compiled.diagnostics.iter().any(|d| {
        matches!(
            d.reason,
            Reason::SecretNotFound | Reason::SecretNotOptedIn | Reason::SecretNotReadable
        )
    })
}
