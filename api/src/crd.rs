//! The custom resources, `ModelRoute` and `RoutingPolicy` (`detour.dev/v1alpha1`).
//!
//! Contract: every knob is optional except what names a route (`model`, `targets`); `compile`
//! resolves the rest from the referenced policy and then from the built-in defaults in
//! [`crate::defaults`]. The schema carries every check the apiserver can make on one object
//! (types, ranges, patterns, enums, CEL for cross-field rules); what needs several objects
//! (a policy that exists, a Secret that exists, a rule naming a route's target) is checked by
//! `compile` and reported in `status`.

use std::fmt;

#[cfg(feature = "k8s")]
use kube::{CustomResource, KubeSchema};
#[cfg(feature = "k8s")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration as users write it: `80ms`, `30s`, `2m`, `1h`, or compounds such as `1m30s`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// Names of targets and rules: a DNS label, because they become metric label values and
/// header values.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// One model id that clients send, and the ordered providers that may serve it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "k8s", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "k8s",
    kube(
        group = "detour.dev",
        version = "v1alpha1",
        kind = "ModelRoute",
        plural = "modelroutes",
        shortname = "mr",
        category = "detour",
        namespaced,
        status = "ModelRouteStatus",
        derive = "PartialEq",
        printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
        printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".spec.targets[0].name"}"#,
        printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.targetCount"}"#,
        printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.policy"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
        printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthy"}"#,
        printcolumn = r#"{"name":"Primary State","type":"string","jsonPath":".status.targets[0].state"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("self.targets.all(t, self.targets.filter(u, u.name == t.name).size() == 1)")
        .message("spec.targets: target names must be unique within a route").reason(Reason::FieldValueDuplicate),
    validation = Rule::new("!has(self.rules) || self.rules.all(r, !has(r.then.targets) || r.then.targets.all(n, self.targets.exists(t, t.name == n)))")
        .message("spec.rules[].then.targets: every name must be one of spec.targets[].name"),
))]
pub struct ModelRouteSpec {
    /// The id clients send in the request body's `model` field, e.g. `smart/balanced`.
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 256)))]
    pub model: String,
    /// The providers that may serve this model, in order: the first is the primary.
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub targets: Vec<TargetSpec>,
    /// The RoutingPolicy (same namespace) that says how to choose and when to fail over.
    /// When absent, the namespace's default policy, then the cluster's, then built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,
    /// Tag rules that apply to this route only, evaluated before the policy's rules. Kept here
    /// so the apiserver can check that they name this route's targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 32)))]
    pub rules: Option<Vec<RuleSpec>>,
}

/// A reference to a RoutingPolicy in the route's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRef {
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 253)))]
    pub name: String,
}

/// One upstream that may serve a route.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("self.provider != 'bedrock' || has(self.region)")
        .message("region is required for provider bedrock, e.g. region: us-east-1"),
    validation = Rule::new("!(self.provider in ['azure-openai', 'openai-compatible']) || has(self.endpoint)")
        .message("endpoint is required for providers azure-openai and openai-compatible"),
    validation = Rule::new("self.provider != 'vertex' || (has(self.region) && has(self.vertex))")
        .message("region and vertex (project, publisher) are required for provider vertex, e.g. region: us-central1, vertex: {project: my-project}"),
    validation = Rule::new("self.provider == 'mock' || has(self.credentials) || self.provider == 'openai-compatible' || self.provider == 'bedrock' || self.provider == 'vertex'")
        .message("credentials are required for providers openai, azure-openai and anthropic"),
    validation = Rule::new("!has(self.endpoint) || !self.endpoint.startsWith('http://') || !has(self.credentials) || (has(self.allowPlainHttp) && self.allowPlainHttp)")
        .message("allowPlainHttp: credentials go over plain http:// only when the target sets allowPlainHttp: true (loopback or in-cluster Services only); use https://"),
    validation = Rule::new("!has(self.capabilities) || !('responses' in self.capabilities) || self.provider in ['openai', 'azure-openai', 'openai-compatible']")
        .message("capabilities: responses (the Responses API served natively) is only for providers openai, azure-openai and openai-compatible; remove it, Responses requests to this target are translated"),
))]
pub struct TargetSpec {
    /// Unique within the route; used in metrics, headers and `x-detour-target`.
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub name: String,
    pub provider: Provider,
    /// The upstream model name (for `azure-openai`, the deployment name).
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 256)))]
    pub model: String,
    /// Base URL of the provider's API, e.g. `https://api.openai.com/v1`. Defaults per provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))
    )]
    pub endpoint: Option<String>,
    /// Plain `http://` with credentials: allowed only with this set, and only to loopback or
    /// an in-cluster Service (`<name>.<namespace>.svc`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_plain_http: Option<bool>,
    /// Cloud region, required for `bedrock` and `vertex`: the provider's region name —
    /// AWS's for `bedrock` (`us-east-1`), Google's for `vertex` (`us-central1`,
    /// `europe-west4`, or `global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 4, max = 32),
            regex(pattern = r"^([a-z]{2}(-[a-z]+)+-[0-9]{1,2}|[a-z]+-[a-z]+[0-9]{1,2}|global)$")
        )
    )]
    pub region: Option<String>,
    /// API version for providers that version their API in the request (`azure-openai`'s
    /// `api-version`, `anthropic`'s `anthropic-version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 64)))]
    pub api_version: Option<String>,
    /// Where the key comes from: a Secret (never the value itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
    /// Share of traffic under the `weighted` strategy. Default 1; 0 takes it out of rotation
    /// while keeping it as a fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0, max = 1000)))]
    pub weight: Option<u32>,
    /// Price in USD per million tokens, for the cost-aware strategies and the cost metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostSpec>,
    /// Capability tier, for the cost/quality strategies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Largest prompt plus completion, in tokens, the upstream model accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 1)))]
    pub context_window: Option<u32>,
    /// What the upstream model supports. When absent, the target is assumed to support all
    /// but `responses`, which is declared only for an upstream that serves OpenAI's Responses
    /// API itself (and, once the list is given, the list is all the target supports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 8)))]
    pub capabilities: Option<Vec<Capability>>,
    /// Overrides of the policy's per-attempt, first-byte and stream-idle timeouts for this
    /// target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TargetTimeoutsSpec>,
    /// Behaviour of the `mock` provider (demo and tests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSpec>,
    /// Provider `vertex` only: the Google Cloud project and whose model it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexSpec>,
}

/// The upstream API family a target speaks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Openai,
    AzureOpenai,
    Anthropic,
    Bedrock,
    Vertex,
    OpenaiCompatible,
    Mock,
}

impl Provider {
    /// The name used in CRDs, metrics and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::AzureOpenai => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Bedrock => "bedrock",
            Self::Vertex => "vertex",
            Self::OpenaiCompatible => "openai-compatible",
            Self::Mock => "mock",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a target's credentials come from.
///
/// In a cluster, `secretName` names a Secret in the route's namespace that is labelled
/// `detour.dev/credentials: "true"` (the Secret's owner opts it in; a route cannot); the
/// injection webhook mounts it read-only in the pods that select the route and the sidecar
/// reads the files. `apiKeyEnv`/`apiKeyFile` are for the standalone sidecar (laptops, VMs)
/// and are rejected by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("has(self.secretName) || has(self.apiKeyEnv) || has(self.apiKeyFile) || has(self.webIdentity) || has(self.azureWorkloadIdentity)")
        .message("credentials: set secretName, webIdentity (bedrock) or azureWorkloadIdentity (azure-openai) (or, standalone only, apiKeyEnv or apiKeyFile)"),
))]
pub struct CredentialsSpec {
    /// A Secret in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 1, max = 253),
            regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        )
    )]
    pub secret_name: Option<String>,
    /// Which keys of the Secret hold what; each has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<CredentialKeys>,
    /// Standalone only: read the API key from this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))
    )]
    pub api_key_env: Option<String>,
    /// Standalone only: read the API key from this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 4096)))]
    pub api_key_file: Option<String>,
    /// `bedrock` only: assume this role with the pod's projected service-account token (IRSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentitySpec>,
    /// `azure-openai` only: Microsoft Entra ID workload identity. The pod's federated
    /// service-account token (projected by the Azure Workload Identity webhook) is exchanged
    /// for an access token to Azure OpenAI (`https://cognitiveservices.azure.com/.default`),
    /// refreshed before it expires. Each field left out comes from the variable the webhook
    /// sets in the pod (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_workload_identity: Option<AzureWorkloadIdentitySpec>,
}

/// Key names inside the Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialKeys {
    /// Default `api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))
    )]
    pub api_key: Option<String>,
    /// `bedrock`: default `aws-access-key-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))
    )]
    pub access_key_id: Option<String>,
    /// `bedrock`: default `aws-secret-access-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))
    )]
    pub secret_access_key: Option<String>,
    /// `bedrock`: optional, default `aws-session-token` when present in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))
    )]
    pub session_token: Option<String>,
}

/// AWS web identity (IRSA): a role and the projected token that proves the pod's identity.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebIdentitySpec {
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 20, max = 2048),
            regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
        )
    )]
    pub role_arn: String,
    /// Default `/var/run/secrets/eks.amazonaws.com/serviceaccount/token`. In a cluster it must
    /// be a file in that projected-token directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 1, max = 4096),
            regex(
                pattern = r"^/var/run/secrets/eks\.amazonaws\.com/serviceaccount/[A-Za-z0-9_-][A-Za-z0-9._-]*$"
            )
        )
    )]
    pub token_file: Option<String>,
}

/// Microsoft Entra ID workload identity for `azure-openai`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureWorkloadIdentitySpec {
    /// The application (client) id of the managed identity or app registration that trusts
    /// the pod's service account. Default: `AZURE_CLIENT_ID` in the sidecar's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))
    )]
    pub client_id: Option<String>,
    /// The directory (tenant) id. Default: `AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))
    )]
    pub tenant_id: Option<String>,
    /// Default: `AZURE_FEDERATED_TOKEN_FILE`, else
    /// `/var/run/secrets/azure/tokens/azure-identity-token`. In a cluster it must be a file in
    /// that projected-token directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 1, max = 4096),
            regex(pattern = r"^/var/run/secrets/azure/tokens/[A-Za-z0-9_-][A-Za-z0-9._-]*$")
        )
    )]
    pub token_file: Option<String>,
}

/// Price in USD per million tokens.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CostSpec {
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 10000.0)))]
    pub input: f64,
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 10000.0)))]
    pub output: f64,
}

/// A capability tier, lowest first.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Quality {
    Basic,
    Standard,
    Advanced,
    Frontier,
}

/// What a request may need from a model.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Tools,
    JsonSchema,
    Vision,
    Streaming,
    /// Serves OpenAI's Responses API (`POST /v1/responses`) itself: requests to this target
    /// are passed through rather than translated to chat completions, and stateful requests
    /// (`previous_response_id`, `store: true`, `conversation`, `background`) may go to it.
    /// Providers `openai`, `azure-openai` and `openai-compatible` only.
    Responses,
}

/// Per-target timeout overrides.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.firstByte) || !has(self.perAttempt) || duration(self.firstByte) <= duration(self.perAttempt)")
        .message("timeouts.firstByte must not exceed timeouts.perAttempt"),
    validation = Rule::new("!has(self.streamIdle) || duration(self.streamIdle) > duration('0s')")
        .message("timeouts.streamIdle must be greater than 0"),
))]
pub struct TargetTimeoutsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub per_attempt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub first_byte: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub stream_idle: Option<String>,
}

/// A Google Vertex AI target: the project that is billed and the model's publisher.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VertexSpec {
    /// The Google Cloud project id, e.g. `my-project-123`.
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 6, max = 30), regex(pattern = r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$"))
    )]
    pub project: String,
    /// Whose model `model` is: `google` (Gemini, through Vertex's OpenAI-compatible chat
    /// completions; `model` e.g. `google/gemini-2.5-flash`) or `anthropic` (Claude, through
    /// `rawPredict`/`streamRawPredict`; `model` e.g. `claude-sonnet-4@20250514`). Default
    /// `google`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<VertexPublisher>,
}

/// The publisher of a Vertex AI model.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum VertexPublisher {
    #[default]
    Google,
    Anthropic,
}

impl VertexPublisher {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Google => "google",
            Self::Anthropic => "anthropic",
        }
    }
}

/// The in-process `mock` provider's script: what it answers, in order, cycling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockSpec {
    /// Each entry is one of `ok`, `5xx`, `429`, `hang`, `slow`; the mock cycles through them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 64)))]
    pub script: Option<Vec<MockBehavior>>,
    /// Added latency before answering (also the delay of `slow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub latency: Option<String>,
    /// The text the mock answers with. Default: a sentence naming the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 4096)))]
    pub reply: Option<String>,
}

/// One scripted answer of the `mock` provider.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
pub enum MockBehavior {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "429")]
    RateLimited,
    #[serde(rename = "hang")]
    Hang,
    #[serde(rename = "slow")]
    Slow,
}

/// Status of a ModelRoute, written whole by the operator on every reconcile.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelRouteStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ConfigMap this route was compiled into (`detour-routes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The policy that was resolved: `namespace/name`, or `builtin` for the built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// How many targets are being served (targets left out are named in `Ready`'s message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<u32>,
    /// Live health of each target as the fleet of sidecars sees it, in spec order (fleet
    /// health; absent while no injected pod of the namespace is known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetHealthStatus>,
    /// Healthy targets out of all, such as `2/3` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
}

/// One target's live health across the namespace's pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct TargetHealthStatus {
    pub name: String,
    /// `Healthy`, `Degraded` (open on some pods, or slow), `Open` (open on enough of the fleet
    /// that every pod skips it) or `Unknown` (no pod reports it).
    pub state: String,
    /// Pods holding it open on their own observations, and pods reporting it.
    pub pods_open: u32,
    pub pods_reporting: u32,
    /// Failures / attempts in the reporting pods' error-rate windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Median of the reporting pods' latency (EWMA of successful attempts; TTFT for streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The class of the latest failure any reporting pod saw (`5xx`, `429`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// How to choose a target and when to fail over.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "k8s",
    kube(
        group = "detour.dev",
        version = "v1alpha1",
        kind = "RoutingPolicy",
        plural = "routingpolicies",
        shortname = "rp",
        category = "detour",
        namespaced,
        status = "RoutingPolicyStatus",
        derive = "PartialEq",
        printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
        printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
        printcolumn = r#"{"name":"Routes","type":"integer","jsonPath":".status.routeCount"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.responseModel) || !has(self.exposeUpstreamModel) || (self.responseModel == 'upstream') == self.exposeUpstreamModel")
        .message("responseModel and the deprecated exposeUpstreamModel disagree; remove exposeUpstreamModel"),
))]
pub struct RoutingPolicySpec {
    /// How the first target is chosen. Default `priority` (the route's order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// Tag rules, in order; the first match wins; unmatched requests use the defaults above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 64)))]
    pub rules: Option<Vec<RuleSpec>>,
    /// What a single request may change with `x-detour-*` headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<OverridesSpec>,
    /// Thresholds of the cost/quality strategies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<ScoringSpec>,
    /// What the `model` of answers and stream chunks says: `upstream` (default: the model
    /// the serving provider reported, so accounting is never wrong) or `route` (the route's
    /// id, whichever target served). `x-detour-route` always carries the route's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_model: Option<ResponseModel>,
    /// Deprecated: `true` is `responseModel: upstream`, `false` is `responseModel: route`.
    /// Kept so existing policies still apply; `responseModel` wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_upstream_model: Option<bool>,
    /// How non-streaming requests use streaming-capable targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<StreamingSpec>,
    /// The default policy: for the whole cluster in the operator's namespace, else for its own
    /// namespace. Two defaults in one scope is a `Conflict`, never a silent pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// What the `model` field of an answer names.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ResponseModel {
    /// The model the serving provider reported.
    #[default]
    Upstream,
    /// The route's id (`spec.model`), whichever target served.
    Route,
}

/// Streaming behaviour.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingSpec {
    /// Send non-streaming requests to targets with the `streaming` capability as streams and
    /// assemble the answer, so `firstByte` and `streamIdle` bound them too and a hung provider
    /// is left as fast as for a stream. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assemble: Option<bool>,
    /// When a chat stream that already reached the client breaks before its end (cut, reset,
    /// stall past `streamIdle`, an upstream error event), ask the next eligible target to
    /// finish the answer and splice it into the same stream (see docs/sidecar.md). Never for
    /// `n > 1`, `logprobs`, JSON response formats or an unfinished tool call. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_failure: Option<bool>,
}

/// Target selection strategies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Only the first target; no fallback.
    Single,
    /// The route's order.
    #[default]
    Priority,
    /// Lowest observed latency (time to first byte) first.
    LeastLatency,
    /// Cheapest `cost` first.
    LowestCost,
    /// Fewest in-flight requests first.
    LeastBusy,
    /// Random by `weight`, the rest as fallbacks.
    Weighted,
    /// Complexity score picks cheap targets for simple requests.
    CostOptimized,
    /// Complexity score splits evenly between cost and quality.
    Balanced,
    /// Complexity score favours capable targets.
    QualityFirst,
}

/// Retries and backoff.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per target before moving to the next (1 = no retry on the same target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 1, max = 10)))]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// What fails an attempt over. Default `5xx`, `429`, `timeout`, `connect-error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 5)))]
    #[cfg_attr(feature = "k8s", x_kube(validation = Rule::new("self.all(x, self.filter(y, y == x).size() == 1)").message("retry.on: each trigger at most once")))]
    pub on: Option<Vec<RetryOn>>,
    /// Retries on the same target, as a share of requests, so an outage never multiplies load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// Which failure classes are retried on the same target (up to `attempts`) before moving
    /// on; any other class moves to the next target at once. Default `5xx`, `connect-error`.
    /// `timeout` is allowed by explicit opt-in; `429` is governed by `rateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 3)))]
    #[cfg_attr(feature = "k8s", x_kube(
        validation = Rule::new("self.all(x, self.filter(y, y == x).size() == 1)").message("retry.sameTarget: each class at most once"),
        validation = Rule::new("self.all(x, x in ['5xx', 'connect-error', 'timeout'])").message("retry.sameTarget: only 5xx, connect-error and timeout may be retried on the same target"),
    ))]
    pub same_target: Option<Vec<RetryOn>>,
    /// Waiting for a rate-limited provider when no other target can serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// What a request does when every target it may use is rate-limited.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The longest a request waits, in total, for a `Retry-After` when no other target can
    /// serve (the wait must also fit the deadline and the retry budget). `0s` never waits.
    /// Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub max_wait: Option<String>,
}

/// Exponential backoff between attempts on the same target.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)")
        .message("backoff.base must not exceed backoff.max"),
))]
pub struct BackoffSpec {
    /// Default `80ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub base: Option<String>,
    /// Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub max: Option<String>,
    /// Share of each delay that is randomised, 0..1. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub jitter: Option<f64>,
}

/// Failure classes that trigger a retry or a fallback.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "429")]
    RateLimited,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "connect-error")]
    ConnectError,
    #[serde(rename = "content-filter")]
    ContentFilter,
}

/// The retry budget.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetSpec {
    /// Retries allowed as a share of requests over the last 10 s, 0..1. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub ratio: Option<f64>,
    /// Retries per second always allowed, whatever the ratio. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0, max = 100000)))]
    pub min_per_second: Option<u32>,
}

/// Deadlines.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.total) || !has(self.perAttempt) || duration(self.perAttempt) <= duration(self.total)")
        .message("timeouts.perAttempt must not exceed timeouts.total"),
    validation = Rule::new("!has(self.firstByte) || !has(self.perAttempt) || duration(self.firstByte) <= duration(self.perAttempt)")
        .message("timeouts.firstByte must not exceed timeouts.perAttempt"),
    validation = Rule::new("!has(self.streamIdle) || duration(self.streamIdle) > duration('0s')")
        .message("timeouts.streamIdle must be greater than 0"),
))]
pub struct TimeoutsSpec {
    /// One non-streaming attempt, from connect to the last byte. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub per_attempt: Option<String>,
    /// Time to a stream's first event (for a non-streaming request sent as a stream, too).
    /// Default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub first_byte: Option<String>,
    /// The longest gap between two events of a stream once it is under way. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub stream_idle: Option<String>,
    /// Everything until the answer is committed: all attempts and backoffs. A stream already
    /// sending is bounded only by `streamIdle` and the client's `x-detour-timeout-ms`.
    /// Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub total: Option<String>,
}

/// Circuit breaking per target.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.cooldown) || !has(self.maxCooldown) || duration(self.cooldown) <= duration(self.maxCooldown)")
        .message("health.cooldown must not exceed health.maxCooldown"),
))]
pub struct HealthSpec {
    /// Consecutive failures that open the circuit. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 1, max = 1000)))]
    pub failure_threshold: Option<u32>,
    /// Error rate over a rolling window that opens the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateSpec>,
    /// How long an open target is skipped. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub cooldown: Option<String>,
    /// Repeated failed probes double the cooldown up to this. Default: `cooldown` (no growth,
    /// so a recovered target serves again within one cooldown and one probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub max_cooldown: Option<String>,
    /// The first-byte bound of a half-open probe (a stream's, or a non-streaming request sent
    /// as a stream), so probing a provider that is still silent costs the probing request
    /// little before it fails over. Default `5s` (never more than the target's `firstByte`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub probe_first_byte: Option<String>,
    /// Live requests let through while half-open; all must succeed to close. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 1, max = 100)))]
    pub half_open_probes: Option<u32>,
    /// Observed latency above this marks a target degraded: tried after healthy ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub latency_threshold: Option<String>,
}

/// Error-rate breaker.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRateSpec {
    /// Share of failed attempts, 0..1, that opens the circuit. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub threshold: Option<f64>,
    /// Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub window: Option<String>,
    /// Attempts in the window before the rate counts. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 1, max = 100000)))]
    pub min_requests: Option<u32>,
}

/// A tag rule: a condition and what to do when it matches.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("has(self.when.all) != has(self.when.any)").message("when: set exactly one of all or any"),
    validation = Rule::new("has(self.then.targets) || has(self.then.strategy) || has(self.then.continueOnFailure)").message("then: set targets, strategy, continueOnFailure, or more than one"),
))]
pub struct RuleSpec {
    #[cfg_attr(
        feature = "k8s",
        schemars(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub name: String,
    pub when: WhenSpec,
    pub then: ThenSpec,
}

/// `all` or `any` of the conditions.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WhenSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub all: Option<Vec<ConditionSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub any: Option<Vec<ConditionSpec>>,
}

/// One test of one request tag.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("self.op == 'exists' || self.op == 'in' || has(self.value)").message("value is required for this op"),
    validation = Rule::new("self.op != 'in' || has(self.values)").message("values is required for op in"),
    validation = Rule::new("!(self.op in ['gt', 'lt']) || !has(self.value) || self.value.matches('^-?[0-9]+(\\\\.[0-9]+)?$')")
        .message("value must be a number for gt and lt"),
))]
pub struct ConditionSpec {
    #[cfg_attr(
        feature = "k8s",
        schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_.-]+$"))
    )]
    pub tag: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 256)))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 64)))]
    pub values: Option<Vec<String>>,
}

/// Comparison operators of tag conditions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    In,
    Contains,
    StartsWith,
    Exists,
}

/// What a matching rule does.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThenSpec {
    /// Only these targets, in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub targets: Option<Vec<String>>,
    /// A different strategy for matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Overrides the policy's `streaming.continueOnFailure` for matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_failure: Option<bool>,
}

/// Per-request overrides a policy allows.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverridesSpec {
    /// Allow `x-detour-target: NAME` to force one target. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_target: Option<bool>,
    /// Allow `x-detour-fallback: off`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_disable_fallback: Option<bool>,
}

/// Thresholds on the complexity score for `cost-optimized`, `balanced`, `quality-first`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "k8s", x_kube(
    validation = Rule::new("!has(self.simpleBelow) || !has(self.complexAbove) || self.simpleBelow <= self.complexAbove")
        .message("scoring.simpleBelow must not exceed scoring.complexAbove"),
    validation = Rule::new("!has(self.cheapShare) || (!has(self.simpleBelow) && !has(self.complexAbove))")
        .message("scoring.cheapShare replaces simpleBelow and complexAbove: set the share or the thresholds"),
))]
pub struct ScoringSpec {
    /// The complexity scorer: `v2` (default) or `v1`, kept for policies tuned on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer: Option<Scorer>,
    /// Share of scored requests to send to cheap targets first, instead of thresholds: each
    /// sidecar sets `simpleBelow` at that quantile of the route's recent scores (and
    /// `complexAbove` halfway through the rest), so the share holds whatever the traffic mix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub cheap_share: Option<f64>,
    /// Scores below this are simple requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub simple_below: Option<f64>,
    /// Scores above this are complex requests; between the two, the more capable target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(range(min = 0.0, max = 1.0)))]
    pub complex_above: Option<f64>,
    /// Turn the scorer off: the most capable healthy target serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// Versions of the complexity scorer (see `docs/scoring.md`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "k8s", derive(JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scorer {
    /// Keywords and characters over all user and system text.
    V1,
    /// The latest instruction apart from pasted material, in estimated tokens.
    #[default]
    V2,
    /// The user's text in estimated tokens, nothing else: for traffic of one kind of task,
    /// where size is what tells hard requests from easy ones.
    Length,
}

impl Scorer {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::Length => "length",
        }
    }
}

/// Status of a RoutingPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct RoutingPolicyStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many routes use this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_count: Option<u32>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Conflict`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What [`crate::compile()`] reads of an object's metadata, in either build of this crate.
pub trait ObjectMeta {
    /// `metadata.name` (empty when absent).
    fn object_name(&self) -> String;
    /// `metadata.namespace`, when set.
    fn object_namespace(&self) -> Option<String>;
    /// `metadata.creationTimestamp` as RFC 3339, when set.
    fn created_at(&self) -> Option<String>;
}

#[cfg(feature = "k8s")]
macro_rules! object_meta_from_kube {
    ($($t:ty),*) => {$(
        impl ObjectMeta for $t {
            fn object_name(&self) -> String {
                kube::ResourceExt::name_any(self)
            }
            fn object_namespace(&self) -> Option<String> {
                kube::ResourceExt::namespace(self)
            }
            fn created_at(&self) -> Option<String> {
                self.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string())
            }
        }
    )*};
}
#[cfg(feature = "k8s")]
object_meta_from_kube!(ModelRoute, RoutingPolicy);

#[cfg(not(feature = "k8s"))]
pub use plain::{Metadata, ModelRoute, RoutingPolicy};

/// The two resources as a routes file holds them, for builds without the `k8s` feature (the
/// sidecar): the same serde shape as the derived custom resources (`metadata`, `spec`,
/// `status`; `apiVersion` and `kind` are checked by [`crate::load`]), without linking the
/// Kubernetes crates.
#[cfg(not(feature = "k8s"))]
mod plain {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{ModelRouteSpec, ModelRouteStatus, ObjectMeta, RoutingPolicySpec, RoutingPolicyStatus};

    /// The part of `metadata` a routes file may carry; other fields are accepted and ignored.
    #[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Metadata {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub namespace: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub creation_timestamp: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub generation: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub labels: Option<BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub annotations: Option<BTreeMap<String, String>>,
    }

    macro_rules! object {
        ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty) => {
            $(#[$doc])*
            #[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
            pub struct $name {
                #[serde(default)]
                pub metadata: Metadata,
                pub spec: $spec,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub status: Option<$status>,
            }

            impl $name {
                /// An object named `name` (no namespace) with `spec`.
                pub fn new(name: &str, spec: $spec) -> Self {
                    Self {
                        metadata: Metadata {
                            name: Some(name.to_owned()),
                            ..Metadata::default()
                        },
                        spec,
                        status: None,
                    }
                }
            }

            impl ObjectMeta for $name {
                fn object_name(&self) -> String {
                    self.metadata.name.clone().unwrap_or_default()
                }
                fn object_namespace(&self) -> Option<String> {
                    self.metadata.namespace.clone()
                }
                fn created_at(&self) -> Option<String> {
                    self.metadata.creation_timestamp.clone()
                }
            }
        };
    }

    object!(
        /// One model id that clients send, and the ordered providers that may serve it.
        ModelRoute,
        ModelRouteSpec,
        ModelRouteStatus
    );
    object!(
        /// How to choose a target and when to fail over.
        RoutingPolicy,
        RoutingPolicySpec,
        RoutingPolicyStatus
    );
}
