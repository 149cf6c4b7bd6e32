//! Builders of our custom resources for tests (controller-rs `src/fixtures.rs` style).

use detour_api::crd::{CredentialsSpec, PolicyRef, Provider, TargetSpec};
use detour_api::{ModelRoute, ModelRouteSpec, RoutingPolicy, RoutingPolicySpec, SecretIndex};
use kube::api::ObjectMeta;

/// A route with one `openai` target using Secret `openai`, unless told otherwise.
pub fn route(namespace: &str, name: &str, model: &str) -> RouteBuilder {
    RouteBuilder {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        model: model.to_owned(),
        targets: vec![target("primary", "openai")],
        policy: None,
        generation: 1,
        created: "2026-01-01T00:00:00Z".to_owned(),
    }
}

/// An `openai` target reading its key from `secret`.
pub fn target(name: &str, secret: &str) -> TargetSpec {
    TargetSpec {
        name: name.to_owned(),
        provider: Provider::Openai,
        model: "gpt-4o-mini".to_owned(),
        endpoint: None,
        allow_plain_http: None,
        region: None,
        api_version: None,
        credentials: Some(CredentialsSpec {
            secret_name: Some(secret.to_owned()),
            keys: None,
            api_key_env: None,
            api_key_file: None,
            web_identity: None,
            azure_workload_identity: None,
        }),
        weight: None,
        cost: None,
        quality: None,
        context_window: None,
        capabilities: None,
        timeouts: None,
        mock: None,
        vertex: None,
    }
}

#[derive(Debug)]
pub struct RouteBuilder {
    namespace: String,
    name: String,
    model: String,
    targets: Vec<TargetSpec>,
    policy: Option<String>,
    generation: i64,
    created: String,
}

impl RouteBuilder {
    pub fn targets(mut self, targets: Vec<TargetSpec>) -> Self {
        self.targets = targets;
        self
    }
    pub fn policy(mut self, name: &str) -> Self {
        self.policy = Some(name.to_owned());
        self
    }
    pub fn generation(mut self, generation: i64) -> Self {
        self.generation = generation;
        self
    }
    pub fn created(mut self, at: &str) -> Self {
        self.created = at.to_owned();
        self
    }
    pub fn build(self) -> ModelRoute {
        let mut r = ModelRoute::new(
            &self.name,
            ModelRouteSpec {
                model: self.model,
                targets: self.targets,
                policy_ref: self.policy.map(|name| PolicyRef { name }),
                rules: None,
            },
        );
        r.metadata = meta(&self.namespace, &self.name, self.generation, &self.created);
        r
    }
}

/// A policy with the default strategy.
pub fn policy(namespace: &str, name: &str) -> PolicyBuilder {
    PolicyBuilder {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: RoutingPolicySpec::default(),
    }
}

#[derive(Debug)]
pub struct PolicyBuilder {
    namespace: String,
    name: String,
    spec: RoutingPolicySpec,
}

impl PolicyBuilder {
    pub fn default_policy(mut self) -> Self {
        self.spec.default = Some(true);
        self
    }
    pub fn build(self) -> RoutingPolicy {
        let mut p = RoutingPolicy::new(&self.name, self.spec);
        p.metadata = meta(&self.namespace, &self.name, 1, "2026-01-01T00:00:00Z");
        p
    }
}

fn meta(namespace: &str, name: &str, generation: i64, created: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        generation: Some(generation),
        uid: Some(format!("uid-{namespace}-{name}")),
        resource_version: Some("1".to_owned()),
        creation_timestamp: created
            .parse()
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        ..ObjectMeta::default()
    }
}

/// A Secret index holding one opted-in Secret.
pub fn opted_in(namespace: &str, name: &str) -> SecretIndex {
    let mut index = SecretIndex::new();
    index.opted_in(namespace, name);
    index
}
