//! The compiled route table: the `routes.json` key of the `detour-routes` ConfigMap.
//!
//! Contract between the operator (writer) and the sidecar (reader):
//! - every policy is fully resolved: no optional knob, durations in milliseconds;
//! - credentials are file paths (or, standalone only, environment variable names), never
//!   values;
//! - routes are sorted by model id, so equal inputs give byte-equal files and equal hashes;
//! - routes or targets that could not be compiled are listed in `excluded` with the reason,
//!   so a reader sees what is missing instead of guessing;
//! - readers reject unknown fields and report the JSON path of any bad value
//!   ([`RouteTable::from_json`]); `version` changes when a reader must be upgraded.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use crate::crd::{
    Capability, MockBehavior, Op, Provider, Quality, ResponseModel, RetryOn, Scorer, Strategy,
    VertexPublisher,
};

/// The format version this crate writes and reads (2: stream-idle and probe timeouts,
/// same-target retry classes, the rate-limit wait, `responseModel`, `streaming`).
pub const FORMAT_VERSION: u32 = 2;

/// The whole table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// `sha256:<hex>` of the routes and exclusions; equal content, equal hash.
    pub hash: String,
    /// Routes sorted by model id.
    pub routes: Vec<Route>,
    /// What the compiler left out, and why.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
}

/// One model id and how to serve it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// The id clients send as `model`.
    pub model: String,
    /// The ModelRoute it came from.
    pub source: ObjectRef,
    /// The resolved policy.
    pub policy: Policy,
    /// In the route's order; at least one.
    pub targets: Vec<Target>,
    /// Route-local rules first, then the policy's.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A namespaced object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A policy with every knob resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// `namespace/name`, or `builtin` for the built-in defaults.
    pub source: String,
    pub strategy: Strategy,
    pub retry: Retry,
    pub timeouts: Timeouts,
    pub health: Health,
    pub overrides: Overrides,
    pub scoring: Scoring,
    /// What the `model` of answers and chunks names.
    pub response_model: ResponseModel,
    pub streaming: Streaming,
}

/// Streaming behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Streaming {
    /// Non-streaming requests go to streaming-capable targets as streams and are assembled.
    pub assemble: bool,
    /// A committed chat stream that breaks before its `finish_reason` is finished by the next
    /// eligible target. Written only when true, so tables without it stay readable by
    /// sidecars that predate it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub continue_on_failure: bool,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
const fn is_false(b: &bool) -> bool {
    !*b
}

/// Retries on the same target and the budget that bounds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts per target, at least 1.
    pub attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// 0..1.
    pub jitter: f64,
    /// What fails an attempt over to the next try; sorted, unique.
    pub on: Vec<RetryOn>,
    /// Retries as a share of requests, 0..1.
    pub budget_ratio: f64,
    /// Retries per second always allowed.
    pub budget_min_per_second: u32,
    /// The classes retried on the same target; sorted, unique, a subset of `5xx`,
    /// `connect-error`, `timeout`.
    pub same_target: Vec<RetryOn>,
    /// Longest total wait for `Retry-After` when no other target can serve (0: never wait).
    pub rate_limit_max_wait_ms: u64,
}

/// Deadlines in milliseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    pub per_attempt_ms: u64,
    pub first_byte_ms: u64,
    pub stream_idle_ms: u64,
    pub total_ms: u64,
}

/// Circuit-breaker parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    pub failure_threshold: u32,
    /// 0..1.
    pub error_rate_threshold: f64,
    pub error_rate_window_ms: u64,
    pub error_rate_min_requests: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    pub half_open_probes: u32,
    /// First-byte bound of a half-open probe.
    pub probe_first_byte_ms: u64,
    /// `None`: latency never marks a target degraded.
    pub latency_threshold_ms: Option<u64>,
}

/// What a request may override.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    pub allow_target: bool,
    pub allow_disable_fallback: bool,
}

/// Complexity-score thresholds. `None` means the default of whichever cost/quality strategy
/// is in effect for the request ([`crate::defaults::scoring_thresholds`]): a tag rule may
/// switch strategies, and each has its own calibrated defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scoring {
    pub simple_below: Option<f64>,
    pub complex_above: Option<f64>,
    pub disabled: bool,
    /// Absent in tables written before scorers were versioned: those were tuned on `v1`.
    #[serde(default = "scorer_v1")]
    pub scorer: Scorer,
    /// Share of scored requests for cheap targets; the sidecar derives the thresholds from
    /// the route's recent scores, using [`Scoring::thresholds`] until it has seen enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheap_share: Option<f64>,
}

const fn scorer_v1() -> Scorer {
    Scorer::V1
}

impl Scoring {
    /// The thresholds in effect under `strategy`: `(simple_below, complex_above)`, with
    /// `complex_above` never below `simple_below`.
    pub fn thresholds(&self, strategy: Strategy) -> (f64, f64) {
        let (lo, hi) = crate::defaults::scoring_thresholds(strategy, self.scorer);
        let lo = self.simple_below.unwrap_or(lo);
        (lo, self.complex_above.unwrap_or(hi).max(lo))
    }
}

/// One upstream, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub provider: Provider,
    /// Upstream model name.
    pub model: String,
    /// Base URL; `None` means the provider's public default.
    pub endpoint: Option<String>,
    /// The target's opt-in to credentials over plain `http://` (loopback or in-cluster only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http: bool,
    pub region: Option<String>,
    pub api_version: Option<String>,
    pub credentials: Option<Credentials>,
    pub weight: u32,
    pub cost: Option<Cost>,
    pub quality: Option<Quality>,
    pub context_window: Option<u32>,
    /// `None`: assumed to support everything.
    pub capabilities: Option<Vec<Capability>>,
    pub per_attempt_ms: u64,
    pub first_byte_ms: u64,
    pub stream_idle_ms: u64,
    pub mock: Option<Mock>,
    /// Provider `vertex`: the project and the publisher (absent for every other provider,
    /// so tables without a Vertex target are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<Vertex>,
}

/// A Vertex AI target's project and model publisher.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vertex {
    pub project: String,
    pub publisher: VertexPublisher,
}

/// Where a credential is read from. Never the value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialSource {
    /// A file (in a cluster: `/var/run/detour/credentials/<secret>/<key>`).
    File(String),
    /// An environment variable of the sidecar (standalone only).
    Env(String),
}

/// A target's credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// The Secret the files come from, for the injector to mount.
    pub secret: Option<String>,
    pub api_key: Option<CredentialSource>,
    pub access_key_id: Option<CredentialSource>,
    pub secret_access_key: Option<CredentialSource>,
    pub session_token: Option<CredentialSource>,
    pub web_identity: Option<WebIdentity>,
    /// `azure-openai`: Entra ID workload identity (absent from tables that do not use it, so
    /// those stay readable by older sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_workload_identity: Option<AzureWorkloadIdentity>,
}

/// Entra ID workload identity; a field left out is read from the sidecar's environment
/// (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureWorkloadIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// AWS web identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebIdentity {
    pub role_arn: String,
    pub token_file: String,
}

/// USD per million tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cost {
    pub input: f64,
    pub output: f64,
}

/// The `mock` provider's script.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mock {
    pub script: Vec<MockBehavior>,
    pub latency_ms: u64,
    pub reply: Option<String>,
}

/// A tag rule, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub when: Match,
    pub conditions: Vec<Condition>,
    /// Only these targets, in this order; `None`: all the route's targets. May be empty when
    /// every named target was left out (see `excluded`): matching requests then get a 503.
    pub targets: Option<Vec<String>>,
    pub strategy: Option<Strategy>,
    /// Overrides the policy's `streaming.continueOnFailure` for matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_failure: Option<bool>,
}

/// How a rule's conditions combine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Match {
    All,
    Any,
}

/// One tag test; `values` holds one value except for `in` (and none for `exists`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub tag: String,
    pub op: Op,
    pub values: Vec<String>,
}

/// Something the compiler left out of the table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Excluded {
    /// The route's model id.
    pub model: String,
    pub source: ObjectRef,
    /// A target name when only that target was left out; `None` when the whole route was.
    pub target: Option<String>,
    /// The diagnostic that caused it, `field: message`.
    pub reason: String,
}

/// A `routes.json` that could not be read.
#[derive(Debug, Error)]
pub enum TableError {
    #[error("routes.json: {path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "routes.json: format version {found} is not supported by this sidecar (it reads version {supported}); upgrade detour-sidecar to match the operator"
    )]
    Version { found: u32, supported: u32 },
    #[error(
        "routes.json: hash {found} does not match the content ({computed}); the file was edited by hand or truncated"
    )]
    Hash { found: String, computed: String },
    #[error("routes.json: route {model:?} has no targets")]
    NoTargets { model: String },
    #[error("routes.json: model {model:?} appears twice")]
    DuplicateModel { model: String },
}

impl RouteTable {
    /// Builds a table from routes and exclusions, sorting them and computing the hash.
    pub fn new(mut routes: Vec<Route>, mut excluded: Vec<Excluded>) -> Self {
        routes.sort_by(|a, b| a.model.cmp(&b.model).then_with(|| a.source.cmp(&b.source)));
        excluded.sort_by(|a, b| {
            (&a.model, &a.source, &a.target, &a.reason).cmp(&(&b.model, &b.source, &b.target, &b.reason))
        });
        let hash = content_hash(&routes, &excluded);
        Self {
            version: FORMAT_VERSION,
            hash,
            routes,
            excluded,
        }
    }

    /// Looks a route up by model id.
    pub fn route(&self, model: &str) -> Option<&Route> {
        self.routes
            .binary_search_by(|r| r.model.as_str().cmp(model))
            .ok()
            .and_then(|i| self.routes.get(i))
    }

    /// Serialises the table as the ConfigMap stores it (pretty JSON, stable order).
    pub fn to_json(&self) -> String {
        // Serialising these plain data types cannot fail: no maps with non-string keys, no
        // custom serialisers. Fall back to an empty object rather than panic regardless.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Reads a `routes.json`, naming the JSON path of any bad value, and checks the version,
    /// the hash and the invariants `new` establishes.
    pub fn from_json(text: &str) -> Result<Self, TableError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let table: Self = serde_path_to_error::deserialize(de).map_err(|e| TableError::Invalid {
            path: match e.path().to_string() {
                p if p == "." => "(document)".to_owned(),
                p => p,
            },
            message: e.inner().to_string(),
        })?;
        if table.version != FORMAT_VERSION {
            return Err(TableError::Version {
                found: table.version,
                supported: FORMAT_VERSION,
            });
        }
        let computed = content_hash(&table.routes, &table.excluded);
        if computed != table.hash {
            return Err(TableError::Hash {
                found: table.hash,
                computed,
            });
        }
        let mut table = table;
        // Writers sort; a hand-written file need not. Sorting after the hash check keeps the
        // hash about content, and lookups can then binary-search.
        table.routes.sort_by(|a, b| a.model.cmp(&b.model));
        for pair in table.routes.windows(2) {
            if let [a, b] = pair
                && a.model == b.model
            {
                return Err(TableError::DuplicateModel {
                    model: b.model.clone(),
                });
            }
        }
        if let Some(route) = table.routes.iter().find(|r| r.targets.is_empty()) {
            return Err(TableError::NoTargets {
                model: route.model.clone(),
            });
        }
        Ok(table)
    }
}

fn content_hash(routes: &[Route], excluded: &[Excluded]) -> String {
    #[derive(Serialize)]
    struct Content<'a> {
        routes: &'a [Route],
        excluded: &'a [Excluded],
    }
    let bytes = serde_json::to_vec(&Content { routes, excluded }).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}
