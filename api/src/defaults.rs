//! The built-in defaults: what a route gets for every knob its policy leaves out, and what a
//! route without any policy gets. Documented in `docs/reference.md`; changing one changes
//! behaviour for every user who relied on it.

use crate::crd::{ResponseModel, RetryOn, Scorer, Strategy};
use crate::table::{Health, Overrides, Policy, Retry, Scoring, Streaming, Timeouts};

/// Namespace of objects that name none (standalone files).
pub const NAMESPACE: &str = "default";
/// Where the injection webhook mounts Secrets: `<root>/<secret>/<key>`.
pub const CREDENTIALS_ROOT: &str = "/var/run/detour/credentials";
/// The ConfigMap the operator writes in each namespace with routes.
pub const CONFIG_MAP: &str = "detour-routes";
/// Its key.
pub const CONFIG_MAP_KEY: &str = "routes.json";
/// Default Secret key of an API key.
pub const API_KEY_KEY: &str = "api-key";
/// The Secret key a `vertex` target reads by default: a Google service-account key file
/// (JSON), or an OAuth access token a refresher keeps current.
pub const GOOGLE_KEY_KEY: &str = "key.json";
/// Default Secret keys of AWS credentials.
pub const ACCESS_KEY_ID_KEY: &str = "aws-access-key-id";
pub const SECRET_ACCESS_KEY_KEY: &str = "aws-secret-access-key";
pub const SESSION_TOKEN_KEY: &str = "aws-session-token";
/// Where EKS projects the service-account token for IRSA.
pub const WEB_IDENTITY_TOKEN_FILE: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";
/// The projected-token directory: in a cluster, `webIdentity.tokenFile` must be a file in it.
pub const WEB_IDENTITY_TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
/// Where the Azure Workload Identity webhook projects the federated service-account token
/// (`AZURE_FEDERATED_TOKEN_FILE`), and its directory: in a cluster,
/// `azureWorkloadIdentity.tokenFile` must be a file in it.
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
pub const AZURE_FEDERATED_TOKEN_DIR: &str = "/var/run/secrets/azure/tokens";
/// The label that opts a Secret in to being referenced by ModelRoutes. Only Secrets carrying
/// it with the value `"true"` are read, mounted or named in a route table.
pub const CREDENTIALS_LABEL: &str = "detour.dev/credentials";

/// The built-in policy.
pub fn policy() -> Policy {
    Policy {
        source: "builtin".to_owned(),
        strategy: Strategy::Priority,
        retry: Retry {
            attempts: 1,
            backoff_base_ms: 80,
            backoff_max_ms: 2_000,
            jitter: 0.2,
            on: vec![
                RetryOn::ServerError,
                RetryOn::RateLimited,
                RetryOn::Timeout,
                RetryOn::ConnectError,
            ],
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            // A timeout says the target is slow or silent now: the next target gets the rest
            // of the deadline at once instead of the same target another `firstByte`.
            same_target: vec![RetryOn::ServerError, RetryOn::ConnectError],
            rate_limit_max_wait_ms: 10_000,
        },
        // Sized for LLM calls (see docs/reference.md, "Deadlines"): a silent provider is left
        // after `firstByte`; a stream under way is bounded only by the gap between events; a
        // single non-streaming generation may take up to ten minutes, the official OpenAI
        // clients' own default timeout, so Detour never cuts an answer the client would wait
        // for.
        timeouts: Timeouts {
            per_attempt_ms: 600_000,
            first_byte_ms: 15_000,
            stream_idle_ms: 60_000,
            total_ms: 600_000,
        },
        health: Health {
            failure_threshold: 5,
            error_rate_threshold: 0.5,
            error_rate_window_ms: 30_000,
            error_rate_min_requests: 20,
            cooldown_ms: 30_000,
            // `maxCooldown` unset means `cooldown` (resolved in `compile`).
            max_cooldown_ms: 30_000,
            half_open_probes: 3,
            probe_first_byte_ms: 5_000,
            latency_threshold_ms: None,
        },
        overrides: Overrides {
            allow_target: false,
            allow_disable_fallback: false,
        },
        scoring: Scoring {
            simple_below: None,
            complex_above: None,
            disabled: false,
            scorer: Scorer::V2,
            cheap_share: None,
        },
        response_model: ResponseModel::Upstream,
        streaming: Streaming {
            assemble: true,
            continue_on_failure: false,
        },
    }
}

/// Default complexity thresholds `(simple_below, complex_above)` of each cost/quality strategy
/// and scorer. `v2`'s are calibrated on public prompt sets (`scripts/eval-scorer`, figures in
/// `docs/scoring.md`) so that, on that mix, `cost-optimized` sends about 70 % to cheap
/// targets, `balanced` about half, `quality-first` about 30 %; `length`'s so that the same
/// mix splits as under `v2` (to cheap targets, and above `complexAbove`). Those prompts are
/// short, so `length`'s thresholds are small token counts (`balanced`: about 43 and 74).
/// `v1`'s are those it shipped with, calibrated on
/// `sidecar/tests/data/complexity-prompts.jsonl`. A team's own mix shifts these shares;
/// `spec.scoring.cheapShare` holds a share on it instead. Other strategies do not score.
pub const fn scoring_thresholds(strategy: Strategy, scorer: Scorer) -> (f64, f64) {
    let t = match (scorer, strategy) {
        (Scorer::V1, Strategy::CostOptimized) => COST_OPTIMIZED,
        (Scorer::V1, Strategy::QualityFirst) => QUALITY_FIRST,
        (Scorer::V1, _) => BALANCED,
        (Scorer::V2, Strategy::CostOptimized) => V2_COST_OPTIMIZED,
        (Scorer::V2, Strategy::QualityFirst) => V2_QUALITY_FIRST,
        (Scorer::V2, _) => V2_BALANCED,
        (Scorer::Length, Strategy::CostOptimized) => LENGTH_COST_OPTIMIZED,
        (Scorer::Length, Strategy::QualityFirst) => LENGTH_QUALITY_FIRST,
        (Scorer::Length, _) => LENGTH_BALANCED,
    };
    (t.0, t.1)
}

const V2_COST_OPTIMIZED: (f64, f64) = (0.62, 0.77);
const V2_BALANCED: (f64, f64) = (0.32, 0.66);
const V2_QUALITY_FIRST: (f64, f64) = (0.15, 0.57);
const LENGTH_COST_OPTIMIZED: (f64, f64) = (0.23, 0.29);
const LENGTH_BALANCED: (f64, f64) = (0.19, 0.25);
const LENGTH_QUALITY_FIRST: (f64, f64) = (0.14, 0.22);
const COST_OPTIMIZED: (f64, f64) = (0.85, 0.95);
const BALANCED: (f64, f64) = (0.40, 0.60);
const QUALITY_FIRST: (f64, f64) = (0.15, 0.40);
