//! Fleet health, the pure part: what a sidecar reports, how the reports of a namespace's pods
//! add up to one state per target, and the view sent back to the sidecars.
//!
//! Contract (DESIGN.md "Fleet health"):
//! - a pod's report counts only while it is fresh ([`Params::stale_after`]); a pod that does
//!   not answer, answers garbage, or vanished from the pod list is not *reporting* — a target
//!   no pod reports is [`TargetState::Unknown`], never healthy;
//! - a target is **open on the fleet** when at least [`Params::open_pods`] reporting pods, or
//!   at least [`Params::open_share`] of them, hold it open *on their own observations* (a pod
//!   that holds it open only because the fleet said so says `fleet: true` and is not counted,
//!   so the fleet's view never feeds itself);
//! - open on some pods but below that: [`TargetState::Degraded`], as is a target that some pod
//!   finds slower than its latency threshold;
//! - everything here is per namespace: a pod's report is attributed to the namespace the pod
//!   list puts it in, never to anything the pod says, so no tenant can open another
//!   namespace's targets.
//!
//! The gathering (HTTP, the pod list) is [`crate::fleet_gather`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// The health document version this operator reads (`GET /v1/health`, `"version": 1`).
pub const HEALTH_VERSION: u32 = 1;

/// A sidecar's `/v1/health` answer: the fields the operator reads (unknown ones are ignored,
/// so a newer sidecar's additions do not break an older operator).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HealthDoc {
    pub version: u32,
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RouteDoc {
    pub route: String,
    #[serde(default)]
    pub targets: Vec<TargetDoc>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetDoc {
    pub name: String,
    /// `closed`, `half-open` or `open`.
    pub state: String,
    /// Held open only because the fleet said so (not the pod's own observation).
    pub fleet: bool,
    pub consecutive_failures: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    pub latency_ms: Option<f64>,
    pub degraded: bool,
    pub last_failure_class: Option<String>,
    pub last_failure_ago_ms: Option<u64>,
    pub open_for_ms: Option<u64>,
}

impl TargetDoc {
    /// Open (or probing after being open) on this pod's own observations.
    fn open_by_itself(&self) -> bool {
        !self.fleet && (self.state == "open" || self.state == "half-open")
    }
}

/// What the operator knows of one pod.
#[derive(Clone, Debug, Default)]
pub struct PodHealth {
    /// The pod's name (for logs).
    pub name: String,
    /// The last report that parsed, and when it was received.
    pub last: Option<(Instant, std::sync::Arc<HealthDoc>)>,
}

/// The thresholds of the aggregation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Pods holding a target open that make it open on the fleet...
    pub open_pods: u32,
    /// ...or this share of the reporting pods (whichever is reached first).
    pub open_share: f64,
    /// A report older than this no longer counts (the pod is not reporting).
    pub stale_after: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            open_pods: 2,
            open_share: 0.2,
            stale_after: Duration::from_secs(10),
        }
    }
}

/// A target's state as the fleet sees it (`status.targets[].state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetState {
    /// Every reporting pod has it closed, at normal latency.
    Healthy,
    /// Open on some pods (below the fleet threshold), or slow on some.
    Degraded,
    /// Open on enough of the fleet: every wired sidecar skips it.
    Open,
    /// No pod reports it (none answers, or none is left).
    Unknown,
}

impl TargetState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Degraded => "Degraded",
            Self::Open => "Open",
            Self::Unknown => "Unknown",
        }
    }
}

/// One target across the pods of a namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetHealth {
    pub name: String,
    pub state: TargetState,
    /// Reporting pods that hold it open on their own observations.
    pub pods_open: u32,
    /// Pods with a fresh report that lists this target.
    pub pods_reporting: u32,
    /// Failures / attempts summed over the reporting pods' windows (`None` without attempts).
    pub error_rate: Option<f64>,
    /// The median of the reporting pods' latency EWMAs.
    pub latency_ms: Option<f64>,
    /// The class of the most recent failure any reporting pod saw, and how long ago.
    pub last_failure_class: Option<String>,
    pub last_failure_ago: Option<Duration>,
}

/// The targets of one route, in the order the pods list them.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteHealth {
    pub route: String,
    pub targets: Vec<TargetHealth>,
}

#[derive(Default)]
struct Acc {
    pods_open: u32,
    pods_reporting: u32,
    requests: u64,
    failures: u64,
    latencies: Vec<f64>,
    degraded: bool,
    last_failure: Option<(Duration, String)>,
}

/// The fleet's view of a namespace's routes from its pods' reports at `now`. Pods without a
/// fresh report count nowhere; a route or target no fresh report lists is absent (the
/// caller marks targets it expects but cannot find as [`TargetState::Unknown`]).
pub fn aggregate(pods: &[PodHealth], now: Instant, params: &Params) -> Vec<RouteHealth> {
    let mut order: Vec<(String, Vec<String>)> = Vec::new();
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for pod in pods {
        let Some((at, doc)) = &pod.last else { continue };
        let age = now.saturating_duration_since(*at);
        if age > params.stale_after || doc.version != HEALTH_VERSION {
            continue;
        }
        for r in &doc.routes {
            let idx = match order.iter().position(|(name, _)| *name == r.route) {
                Some(i) => i,
                None => {
                    order.push((r.route.clone(), Vec::new()));
                    order.len() - 1
                }
            };
            for t in &r.targets {
                if let Some((_, names)) = order.get_mut(idx)
                    && !names.contains(&t.name)
                {
                    names.push(t.name.clone());
                }
                let a = acc.entry((r.route.clone(), t.name.clone())).or_default();
                a.pods_reporting += 1;
                a.pods_open += u32::from(t.open_by_itself());
                a.requests += u64::from(t.window_requests);
                a.failures += u64::from(t.window_failures.min(t.window_requests));
                if let Some(ms) = t.latency_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                    a.latencies.push(ms);
                }
                a.degraded |= t.degraded;
                if let (Some(class), Some(ago)) = (&t.last_failure_class, t.last_failure_ago_ms) {
                    let ago = age.saturating_add(Duration::from_millis(ago));
                    if a.last_failure.as_ref().is_none_or(|(best, _)| ago < *best) {
                        a.last_failure = Some((ago, class.clone()));
                    }
                }
            }
        }
    }
    order
        .into_iter()
        .map(|(route, names)| RouteHealth {
            targets: names
                .into_iter()
                .map(|name| {
                    let a = acc.remove(&(route.clone(), name.clone())).unwrap_or_default();
                    target_health(name, a, params)
                })
                .collect(),
            route,
        })
        .collect()
}

fn target_health(name: String, mut a: Acc, params: &Params) -> TargetHealth {
    let state = if a.pods_reporting == 0 {
        TargetState::Unknown
    } else if open_on_fleet(a.pods_open, a.pods_reporting, params) {
        TargetState::Open
    } else if a.pods_open > 0 || a.degraded {
        TargetState::Degraded
    } else {
        TargetState::Healthy
    };
    a.latencies.sort_by(f64::total_cmp);
    let latency_ms = a.latencies.get(a.latencies.len() / 2).copied();
    #[expect(clippy::cast_precision_loss, reason = "a rate of window counts")]
    let error_rate = (a.requests > 0).then(|| a.failures as f64 / a.requests as f64);
    let (last_failure_ago, last_failure_class) = a
        .last_failure
        .map_or((None, None), |(ago, c)| (Some(ago), Some(c)));
    TargetHealth {
        name,
        state,
        pods_open: a.pods_open,
        pods_reporting: a.pods_reporting,
        error_rate,
        latency_ms,
        last_failure_class,
        last_failure_ago,
    }
}

/// Whether `open` of `reporting` pods make a target open on the fleet.
pub fn open_on_fleet(open: u32, reporting: u32, params: &Params) -> bool {
    open > 0 && (open >= params.open_pods || f64::from(open) >= params.open_share * f64::from(reporting))
}

/// The view sent to a namespace's sidecars with each poll (`POST /v1/health`): the targets
/// open on the fleet. A sidecar holds them open until its own probe or a later view says
/// otherwise, and forgets the view once `ttlMs` passes without a new one (the operator is
/// gone: it runs alone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub version: u32,
    pub ttl_ms: u64,
    pub open: Vec<OpenTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTarget {
    pub route: String,
    pub target: String,
    pub pods_open: u32,
    pub pods_reporting: u32,
}

/// The view of a namespace from its aggregate.
pub fn view(routes: &[RouteHealth], ttl: Duration) -> View {
    let mut open: Vec<OpenTarget> = routes
        .iter()
        .flat_map(|r| {
            r.targets
                .iter()
                .filter(|t| t.state == TargetState::Open)
                .map(|t| OpenTarget {
                    route: r.route.clone(),
                    target: t.name.clone(),
                    pods_open: t.pods_open,
                    pods_reporting: t.pods_reporting,
                })
        })
        .collect();
    open.sort();
    View {
        version: 1,
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        open,
    }
}

/// Which targets a view holds open, to tell whether it changed (counts aside).
pub fn open_set(view: &View) -> Vec<(&str, &str)> {
    view.open
        .iter()
        .map(|o| (o.route.as_str(), o.target.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn target(name: &str, state: &str) -> TargetDoc {
        TargetDoc {
            name: name.to_owned(),
            state: state.to_owned(),
            window_requests: 10,
            latency_ms: Some(100.0),
            ..TargetDoc::default()
        }
    }

    fn doc(targets: Vec<TargetDoc>) -> Arc<HealthDoc> {
        Arc::new(HealthDoc {
            version: 1,
            routes: vec![RouteDoc {
                route: "chat".to_owned(),
                targets,
            }],
        })
    }

    fn pod(name: &str, at: Instant, primary: &str) -> PodHealth {
        PodHealth {
            name: name.to_owned(),
            last: Some((
                at,
                doc(vec![target("primary", primary), target("backup", "closed")]),
            )),
        }
    }

    fn primary(routes: &[RouteHealth]) -> &TargetHealth {
        &routes[0].targets[0]
    }

    /// All pods agree it is closed: Healthy, counted on every pod, order kept.
    #[test]
    fn agreeing_pods_are_healthy() {
        let now = Instant::now();
        let pods: Vec<_> = (0..3).map(|i| pod(&format!("p{i}"), now, "closed")).collect();
        let r = aggregate(&pods, now, &Params::default());
        assert_eq!(r[0].route, "chat");
        let names: Vec<_> = r[0].targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["primary", "backup"]);
        let p = primary(&r);
        assert_eq!(
            (p.state, p.pods_open, p.pods_reporting),
            (TargetState::Healthy, 0, 3)
        );
        assert_eq!(p.error_rate, Some(0.0));
        assert_eq!(p.latency_ms, Some(100.0));
    }

    /// Pods disagreeing: one of ten open is Degraded (not enough to open it for everyone);
    /// two of ten reach the pod threshold; one of three reaches the share threshold.
    #[test]
    fn disagreeing_pods_open_it_only_past_the_threshold() {
        let now = Instant::now();
        let params = Params::default();
        let fleet = |open: usize, of: usize| {
            let pods: Vec<_> = (0..of)
                .map(|i| pod(&format!("p{i}"), now, if i < open { "open" } else { "closed" }))
                .collect();
            let r = aggregate(&pods, now, &params);
            (
                primary(&r).state,
                primary(&r).pods_open,
                primary(&r).pods_reporting,
            )
        };
        assert_eq!(fleet(1, 10), (TargetState::Degraded, 1, 10));
        assert_eq!(fleet(2, 10), (TargetState::Open, 2, 10));
        assert_eq!(fleet(1, 3), (TargetState::Open, 1, 3));
        assert_eq!(fleet(0, 10).0, TargetState::Healthy);
    }

    /// A pod holding a target open only because the fleet said so is not counted as open, so
    /// the view cannot keep itself alive once the pods that saw the failures recover.
    #[test]
    fn fleet_held_opens_do_not_count() {
        let now = Instant::now();
        let mut pods: Vec<_> = (0..10).map(|i| pod(&format!("p{i}"), now, "open")).collect();
        for p in &mut pods[1..] {
            let mut d = (*p.last.as_ref().unwrap().1).clone();
            d.routes[0].targets[0].fleet = true;
            p.last = Some((now, Arc::new(d)));
        }
        let r = aggregate(&pods, now, &Params::default());
        assert_eq!(
            (primary(&r).state, primary(&r).pods_open),
            (TargetState::Degraded, 1)
        );
    }

    /// Stale reports stop counting: a pod whose last answer is older than `stale_after` is
    /// not reporting, and with no fresh report left the target is absent (Unknown to the
    /// caller), never Healthy.
    #[test]
    fn stale_reports_and_vanished_pods_do_not_count() {
        let start = Instant::now();
        let params = Params::default();
        let now = start + Duration::from_secs(11);
        let pods = vec![pod("old", start, "open"), pod("fresh", now, "closed")];
        let r = aggregate(&pods, now, &params);
        assert_eq!(
            (primary(&r).state, primary(&r).pods_reporting),
            (TargetState::Healthy, 1)
        );
        // Every pod stale, or never answered, or gone from the list: nothing reports.
        let silent = vec![pod("old", start, "closed"), PodHealth::default()];
        assert!(aggregate(&silent, now, &params).is_empty());
        assert!(aggregate(&[], now, &params).is_empty());
        assert_eq!(
            target_health("x".into(), Acc::default(), &params).state,
            TargetState::Unknown
        );
    }

    /// Numbers: error rate over all windows, the median latency, the most recent failure
    /// (the report's age included); an unknown document version is ignored.
    #[test]
    fn numbers_add_up_across_pods() {
        let now = Instant::now();
        let mk = |failures: u32, latency: f64, class: &str, ago: u64, received: Duration| {
            let mut t = target("primary", "closed");
            t.window_failures = failures;
            t.latency_ms = Some(latency);
            t.last_failure_class = Some(class.to_owned());
            t.last_failure_ago_ms = Some(ago);
            PodHealth {
                name: String::new(),
                last: Some((now - received, doc(vec![t]))),
            }
        };
        let pods = vec![
            mk(5, 300.0, "timeout", 100, Duration::from_secs(2)),
            mk(0, 100.0, "5xx", 1_500, Duration::ZERO),
            mk(1, 200.0, "429", 4_000, Duration::ZERO),
            PodHealth {
                name: "future".into(),
                last: Some((
                    now,
                    Arc::new(HealthDoc {
                        version: 2,
                        routes: vec![],
                    }),
                )),
            },
        ];
        let r = aggregate(&pods, now, &Params::default());
        let p = primary(&r);
        assert_eq!(p.pods_reporting, 3);
        assert!((p.error_rate.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(p.latency_ms, Some(200.0));
        assert_eq!(p.last_failure_class.as_deref(), Some("5xx"));
        assert_eq!(p.last_failure_ago, Some(Duration::from_millis(1_500)));
    }

    /// The view lists exactly the targets open on the fleet, sorted, and its open set ignores
    /// the counts (a change of counts is not a change of view).
    #[test]
    fn view_lists_open_targets() {
        let now = Instant::now();
        let pods: Vec<_> = (0..4)
            .map(|i| pod(&format!("p{i}"), now, if i < 2 { "open" } else { "closed" }))
            .collect();
        let v = view(
            &aggregate(&pods, now, &Params::default()),
            Duration::from_secs(10),
        );
        assert_eq!(v.ttl_ms, 10_000);
        assert_eq!(open_set(&v), [("chat", "primary")]);
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"version": 1, "ttlMs": 10000, "open": [
                {"route": "chat", "target": "primary", "podsOpen": 2, "podsReporting": 4}]})
        );
    }

    /// A sidecar's real document parses, extra fields and all.
    #[test]
    fn parses_the_sidecar_document() {
        let d: HealthDoc = serde_json::from_str(
            r#"{"version":1,"table":"abc","routes":[{"route":"m","targets":[{"name":"primary","state":"open",
            "consecutiveFailures":0,"windowRequests":0,"windowFailures":0,"errorRate":0.0,"latencyMs":null,
            "degraded":false,"lastFailureClass":"5xx","lastFailureAgoMs":3,"openForMs":900,"future":1}]}]}"#,
        )
        .unwrap();
        assert_eq!(d.routes[0].targets[0].open_for_ms, Some(900));
        assert!(d.routes[0].targets[0].open_by_itself());
    }
}
