//! Fleet health, the gathering: which pods to ask (a watch on injected pods), asking them
//! (`/v1/health` on each sidecar's admin port, with the namespace's current [`View`]), and the
//! loop that does it every [`Config::interval`].
//!
//! Bounds, so that 1,000 pods cost little and a bad pod costs nothing extra:
//! - one round asks every pod once, at most [`Config::concurrency`] at a time, each within
//!   [`Config::timeout`] (connect, request and answer together); an answer is read up to
//!   [`MAX_ANSWER`] bytes, whatever it declares;
//! - rounds start every `interval`; when a round changes which targets are open on the fleet
//!   in a namespace, that namespace's pods are asked again at once, carrying the new view, so
//!   a change reaches every pod within one round instead of two;
//! - the pod list keeps only what a poll needs ([`Member`], a few strings per pod), not Pods.
//!
//! A pod that does not answer keeps its last report until it goes stale
//! ([`fleet::Params::stale_after`]); then it is not reporting. A pod that leaves the list is
//! forgotten at the next round.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fleet::{self, HealthDoc, PodHealth, RouteHealth, View};
use crate::webhook::inject::{
    FLEET_KEY_ENV, INJECT_LABEL, INJECTED_ANNOTATION, METRICS_PORT, METRICS_PORT_NAME, SIDECAR,
};

/// The most bytes read of one pod's answer.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// How the fleet is gathered (operator flags `--fleet-*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// A round every this long: each pod is asked at most once per interval, plus once more
    /// right after a change of its namespace's view.
    pub interval: Duration,
    /// One pod's whole poll.
    pub timeout: Duration,
    /// Pods asked at once.
    pub concurrency: usize,
    /// The aggregation's thresholds.
    pub params: fleet::Params,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            concurrency: 64,
            params: fleet::Params::default(),
        }
    }
}

impl Config {
    /// How long a sidecar keeps a view: a few missed rounds, never less than the staleness
    /// of reports. After that it runs alone.
    pub fn view_ttl(&self) -> Duration {
        (self.interval * 3 + self.timeout).max(self.params.stale_after)
    }
}

/// An injected pod, as far as polling it goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub namespace: String,
    pub name: String,
    /// The pod IP and the sidecar's named admin port.
    pub addr: SocketAddr,
    /// The key the injector gave the pod's sidecar for the fleet's view (`None`: an older
    /// injection; the pod is asked with GET and gets no view).
    pub key: Option<String>,
}

/// The member of a pod: running, injected, with an IP; `None` otherwise.
pub fn member(pod: &Pod) -> Option<Member> {
    if pod.metadata.deletion_timestamp.is_some() || !pod.annotations().contains_key(INJECTED_ANNOTATION) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR)?;
    let port = sidecar
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(METRICS_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(METRICS_PORT);
    let key = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == FLEET_KEY_ENV)
        .and_then(|e| e.value.clone())
        .filter(|k| !k.is_empty());
    Some(Member {
        namespace: pod.namespace()?,
        name: pod.name_any(),
        addr: SocketAddr::new(ip, port),
        key,
    })
}

/// The injected pods, kept current by [`watch_pods`].
#[derive(Debug, Default)]
pub struct Members(Mutex<HashMap<(String, String), Member>>);

impl Members {
    pub fn snapshot(&self) -> Vec<Member> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn set(&self, pod: &Pod) {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match member(pod) {
            Some(member) => {
                m.insert(key, member);
            }
            None => {
                m.remove(&key);
            }
        }
    }

    fn remove(&self, pod: &Pod) {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
    }

    fn replace(&self, pods: &[Pod]) {
        let fresh: HashMap<_, _> = pods
            .iter()
            .filter_map(|p| member(p).map(|m| ((m.namespace.clone(), m.name.clone()), m)))
            .collect();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
    }
}

/// Keeps `members` current from a watch on pods labelled [`INJECT_LABEL`]`=true`.
pub async fn watch_pods(client: Client, members: Arc<Members>) {
    let config = watcher::Config::default()
        .labels(&format!("{INJECT_LABEL}=true"))
        .any_semantic();
    let mut buffer = Vec::new();
    let mut events = std::pin::pin!(watcher(Api::<Pod>::all(client), config).default_backoff());
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(pod))) => members.set(&pod),
            Ok(Some(watcher::Event::Delete(pod))) => members.remove(&pod),
            Ok(Some(watcher::Event::Init)) => buffer.clear(),
            Ok(Some(watcher::Event::InitApply(pod))) => buffer.push(pod),
            Ok(Some(watcher::Event::InitDone)) => {
                members.replace(&buffer);
                buffer = Vec::new();
            }
            Ok(None) => return,
            Err(e) => warn!(error = %e, "watching injected pods"),
        }
    }
}

/// Why one poll gave no report.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(String),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("answer is not a health document: {0}")]
    Parse(String),
}

impl PollError {
    /// A bounded label value.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Http(_) => "unreachable",
            Self::Status(_) => "status",
            Self::Parse(_) => "invalid",
        }
    }
}

/// The plain-HTTP client of the polls (sidecar admin ports are plain HTTP).
pub fn http_client(timeout: Duration) -> HttpClient<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    HttpClient::builder(TokioExecutor::new())
        // One kept-alive connection per pod: a poll every few seconds reuses it.
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(15))
        .build(connector)
}

/// Asks one pod: `POST /v1/health` carrying `view` when the pod has a key, `GET` otherwise.
pub async fn poll(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    member: &Member,
    view: &Bytes,
    timeout: Duration,
) -> Result<HealthDoc, PollError> {
    let uri = format!("http://{}/v1/health", member.addr);
    let req = match &member.key {
        Some(key) => Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(view.clone())),
        None => Request::builder().uri(uri).body(Full::new(Bytes::new())),
    }
    .map_err(|e| PollError::Http(e.to_string()))?;
    let ask = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(PollError::Status(resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| PollError::Http(e.to_string()))?
            .to_bytes();
        serde_json::from_slice::<HealthDoc>(&body).map_err(|e| PollError::Parse(e.to_string()))
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| PollError::Timeout(timeout))?
}

/// What the gatherer knows: every pod's last report, each namespace's aggregate and view.
#[derive(Debug, Default, Clone)]
pub struct Fleet {
    /// By namespace, then by pod name.
    pub pods: HashMap<String, HashMap<String, PodHealth>>,
    /// By namespace: the aggregate of the last round.
    pub routes: HashMap<String, Vec<RouteHealth>>,
    /// By namespace: the view sent to its pods.
    pub views: HashMap<String, View>,
    /// When the last aggregate was computed.
    pub at: Option<Instant>,
}

impl Fleet {
    /// The pods of `namespace` the pod list names (reporting or not).
    pub fn pods_known(&self, namespace: &str) -> usize {
        self.pods.get(namespace).map_or(0, HashMap::len)
    }
}

/// What one round did, for metrics and the cost test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    pub polled: usize,
    pub answered: usize,
}

/// One round: asks `members` (each with its namespace's current view), records the answers,
/// forgets pods no longer in `all`, aggregates every namespace that has pods. Returns the
/// namespaces whose view changed which targets it holds open.
pub async fn round(
    fleet: &mut Fleet,
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    members: &[Member],
    all: &[Member],
    config: &Config,
) -> (RoundStats, BTreeSet<String>) {
    let bodies: HashMap<&str, Bytes> = fleet
        .views
        .iter()
        .map(|(ns, v)| {
            (
                ns.as_str(),
                Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            )
        })
        .collect();
    let empty = Bytes::from(serde_json::to_vec(&fleet::view(&[], config.view_ttl())).unwrap_or_default());
    // Owned futures (a clone of the pooled client and of the body each): no borrow across
    // the concurrent polls.
    let timeout = config.timeout;
    let polls: Vec<_> = members
        .iter()
        .map(|m| {
            let body = bodies.get(m.namespace.as_str()).unwrap_or(&empty).clone();
            let (client, m) = (client.clone(), m.clone());
            async move {
                let answer = poll(&client, &m, &body, timeout).await;
                (m, answer)
            }
        })
        .collect();
    drop(bodies);
    let answers: Vec<(Member, Result<HealthDoc, PollError>)> = futures_util::stream::iter(polls)
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let now = Instant::now();
    let mut stats = RoundStats {
        polled: answers.len(),
        answered: 0,
    };
    // The pod list decides who is in the fleet: a pod that left is forgotten.
    let mut known: HashMap<String, HashMap<String, PodHealth>> = HashMap::new();
    for m in all {
        let previous = fleet
            .pods
            .get_mut(&m.namespace)
            .and_then(|pods| pods.remove(&m.name))
            .unwrap_or_else(|| PodHealth {
                name: m.name.clone(),
                last: None,
            });
        known
            .entry(m.namespace.clone())
            .or_default()
            .insert(m.name.clone(), previous);
    }
    for (m, answer) in answers {
        let Some(pod) = known.get_mut(&m.namespace).and_then(|p| p.get_mut(&m.name)) else {
            continue;
        };
        match answer {
            Ok(doc) => {
                stats.answered += 1;
                pod.last = Some((now, Arc::new(doc)));
            }
            Err(e) => {
                debug!(namespace = %m.namespace, pod = %m.name, error = %e, kind = e.kind(), "no health report")
            }
        }
    }
    fleet.pods = known;
    let mut changed = BTreeSet::new();
    let mut routes = HashMap::new();
    let mut views = HashMap::new();
    for (ns, pods) in &fleet.pods {
        let list: Vec<PodHealth> = pods.values().cloned().collect();
        let aggregate = fleet::aggregate(&list, now, &config.params);
        let view = fleet::view(&aggregate, config.view_ttl());
        let before = fleet.views.get(ns).map(fleet::open_set).unwrap_or_default();
        if fleet::open_set(&view) != before {
            changed.insert(ns.clone());
        }
        routes.insert(ns.clone(), aggregate);
        views.insert(ns.clone(), view);
    }
    fleet.routes = routes;
    fleet.views = views;
    fleet.at = Some(now);
    (stats, changed)
}

/// Gathers forever: a round every `interval`, and an immediate extra round for the pods of a
/// namespace whose view changed. Publishes the fleet after each round.
pub async fn run(
    config: Config,
    members: Arc<Members>,
    publish: watch::Sender<Arc<Fleet>>,
    metrics: crate::metrics::Metrics,
) {
    let client = http_client(config.timeout);
    let mut fleet = Fleet::default();
    info!(interval = ?config.interval, concurrency = config.concurrency, "gathering fleet health");
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let all = members.snapshot();
        let timer = metrics.fleet_round_duration.start_timer();
        let (stats, mut changed) = round(&mut fleet, &client, &all, &all, &config).await;
        timer.observe_duration();
        record(&metrics, stats, &fleet);
        // A changed view goes out at once (bounded: a second push in a row only if the
        // view changed again).
        for _ in 0..2 {
            if changed.is_empty() {
                break;
            }
            let push: Vec<Member> = all
                .iter()
                .filter(|m| changed.contains(&m.namespace))
                .cloned()
                .collect();
            debug!(namespaces = ?changed, pods = push.len(), "pushing a changed fleet view");
            let (stats, again) = round(&mut fleet, &client, &push, &all, &config).await;
            record(&metrics, stats, &fleet);
            changed = again;
        }
        publish.send_replace(Arc::new(fleet.clone()));
    }
}

/// Fleet health on this replica (the leader): the pod watch, the rounds, and the status
/// writer ([`crate::fleet_status`]), until dropped.
pub async fn start(
    client: Client,
    config: Config,
    metrics: crate::metrics::Metrics,
    routes: kube::runtime::reflector::Store<detour_api::ModelRoute>,
    recorder: kube::runtime::events::Recorder,
) {
    let members = Arc::new(Members::default());
    let (publish, fleet) = watch::channel(Arc::new(Fleet::default()));
    tokio::join!(
        watch_pods(client.clone(), members.clone()),
        run(config, members, publish, metrics.clone()),
        crate::fleet_status::run(client, routes, fleet, recorder, metrics),
    );
}

fn record(metrics: &crate::metrics::Metrics, stats: RoundStats, fleet: &Fleet) {
    metrics
        .fleet_polls
        .with_label_values(&["ok"])
        .inc_by(u64::try_from(stats.answered).unwrap_or(0));
    metrics
        .fleet_polls
        .with_label_values(&["failed"])
        .inc_by(u64::try_from(stats.polled.saturating_sub(stats.answered)).unwrap_or(0));
    let pods: usize = fleet.pods.values().map(HashMap::len).sum();
    metrics.fleet_pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    use tokio::net::TcpListener;

    use super::*;

    fn pod(name: &str, ip: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("shop".to_owned()),
                annotations: Some([(INJECTED_ANNOTATION.to_owned(), "img".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: SIDECAR.to_owned(),
                    ports: Some(vec![ContainerPort {
                        name: Some(METRICS_PORT_NAME.to_owned()),
                        container_port: 9191,
                        ..ContainerPort::default()
                    }]),
                    env: Some(vec![EnvVar {
                        name: FLEET_KEY_ENV.to_owned(),
                        value: Some("k".to_owned()),
                        value_from: None,
                    }]),
                    ..Container::default()
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                pod_ip: Some(ip.to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    /// A running injected pod is polled at its IP and named admin port, with its key; a pod
    /// that is pending, terminating, not injected or without an IP is not.
    #[test]
    fn members_are_running_injected_pods_with_an_ip() {
        let m = member(&pod("a", "10.0.0.7", "Running")).unwrap();
        assert_eq!(m.addr, "10.0.0.7:9191".parse().unwrap());
        assert_eq!((m.namespace.as_str(), m.key.as_deref()), ("shop", Some("k")));
        assert!(member(&pod("a", "10.0.0.7", "Pending")).is_none());
        assert!(member(&pod("a", "", "Running")).is_none());
        let mut gone = pod("a", "10.0.0.7", "Running");
        gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(member(&gone).is_none());
        let mut plain = pod("a", "10.0.0.7", "Running");
        plain.metadata.annotations = None;
        assert!(member(&plain).is_none());
    }

    const DOC: &str = r#"{"version":1,"table":"h","routes":[
        {"route":"chat","targets":[
          {"name":"primary","state":"closed","fleet":false,"consecutiveFailures":0,"windowRequests":120,"windowFailures":1,"errorRate":0.008,"latencyMs":812.5,"degraded":false,"lastFailureClass":"5xx","lastFailureAgoMs":5000,"openForMs":null},
          {"name":"backup","state":"closed","fleet":false,"consecutiveFailures":0,"windowRequests":3,"windowFailures":0,"errorRate":0.0,"latencyMs":640.0,"degraded":false,"lastFailureClass":null,"lastFailureAgoMs":null,"openForMs":null},
          {"name":"local","state":"closed","fleet":false,"consecutiveFailures":0,"windowRequests":0,"windowFailures":0,"errorRate":0.0,"latencyMs":null,"degraded":false,"lastFailureClass":null,"lastFailureAgoMs":null,"openForMs":null}]},
        {"route":"embed","targets":[
          {"name":"primary","state":"closed","fleet":false,"consecutiveFailures":0,"windowRequests":40,"windowFailures":0,"errorRate":0.0,"latencyMs":30.0,"degraded":false,"lastFailureClass":null,"lastFailureAgoMs":null,"openForMs":null}]}]}"#;

    /// Serves `DOC` to every request; counts requests carrying a view.
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's fake pod lives as long as the test's runtime"
    )]
    async fn fake_sidecar(views: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let views = views.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let views = views.clone();
                        async move {
                            if req.method() == Method::POST {
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                serde_json::from_slice::<View>(&body).unwrap();
                                views.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                DOC.as_bytes(),
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn process_cpu() -> Duration {
        // utime + stime, in clock ticks (100 Hz on Linux).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
        // Fields 14 and 15 of the line; `after` starts at field 3.
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The cost of the fleet at 1,000 pods (each answering a 2-route, 4-target document): one
    /// round of polls with a fresh connection each (the worst case: no keep-alive) and the
    /// aggregation stays far inside the 2 s interval and a few MiB. Prints what it measured;
    /// the bounds are loose enough for a busy 2-core machine, tight enough to catch a
    /// quadratic aggregation or an unbounded buffer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_of_1000_pods_is_cheap() {
        let views = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = fake_sidecar(views.clone()).await;
        let members: Vec<Member> = (0..1000)
            .map(|i| Member {
                namespace: format!("ns{}", i % 10),
                name: format!("pod-{i}"),
                addr,
                key: (i % 2 == 0).then(|| "k".to_owned()),
            })
            .collect();
        let config = Config::default();
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(HttpConnector::new());
        let mut fleet = Fleet::default();
        // Warm up (first allocations, thread start).
        round(&mut fleet, &client, &members[..10], &members, &config).await;
        let (rss0, cpu0, t0) = (rss_kib(), process_cpu(), Instant::now());
        let (stats, _) = round(&mut fleet, &client, &members, &members, &config).await;
        let (wall, cpu, rss) = (t0.elapsed(), process_cpu() - cpu0, rss_kib().saturating_sub(rss0));
        eprintln!(
            "fleet round, 1000 pods: wall {wall:?}, CPU (operator and fake pods together) {cpu:?}, RSS +{rss} KiB"
        );
        assert_eq!(
            stats,
            RoundStats {
                polled: 1000,
                answered: 1000
            }
        );
        assert!(
            views.load(std::sync::atomic::Ordering::Relaxed) >= 500,
            "keyed pods get the view"
        );
        assert_eq!(fleet.routes.len(), 10);
        let chat = &fleet.routes["ns3"][0];
        assert_eq!((chat.targets[0].pods_reporting, chat.targets.len()), (100, 3));
        // About 1 s in a debug build on a busy 2-core machine, with a new connection per poll;
        // the bound leaves room for that machine being busier.
        assert!(
            wall < Duration::from_secs(4),
            "a round must fit in a few intervals: {wall:?}"
        );
        assert!(cpu < Duration::from_millis(1_500), "CPU per round: {cpu:?}");
        assert!(rss < 32 * 1024, "memory per round: {rss} KiB");
        // Aggregation alone, every namespace: no quadratic blow-up.
        let t = Instant::now();
        for pods in fleet.pods.values() {
            let list: Vec<PodHealth> = pods.values().cloned().collect();
            fleet::aggregate(&list, Instant::now(), &config.params);
        }
        let agg = t.elapsed();
        eprintln!("aggregation of 1000 reports: {agg:?}");
        assert!(agg < Duration::from_millis(200), "{agg:?}");
    }

    /// A pod that does not answer in time is not reporting once its last report is stale
    /// (never healthy), and a pod that left the list is forgotten.
    #[tokio::test]
    async fn silent_pods_go_unknown_and_vanished_pods_are_forgotten() {
        let views = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = fake_sidecar(views).await;
        // Accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let m = |name: &str, addr| Member {
            namespace: "shop".into(),
            name: name.into(),
            addr,
            key: None,
        };
        let (ok, quiet) = (m("ok", addr), m("quiet", silent_addr));
        let config = Config {
            timeout: Duration::from_millis(200),
            params: fleet::Params {
                stale_after: Duration::ZERO,
                ..fleet::Params::default()
            },
            ..Config::default()
        };
        let client = http_client(config.timeout);
        let mut fleet = Fleet::default();
        let all = vec![ok.clone(), quiet.clone()];
        let (stats, _) = round(&mut fleet, &client, &all, &all, &config).await;
        assert_eq!(
            stats,
            RoundStats {
                polled: 2,
                answered: 1
            }
        );
        assert_eq!(fleet.routes["shop"][0].targets[0].pods_reporting, 1);
        assert_eq!(fleet.pods_known("shop"), 2);
        let (_, _) = round(&mut fleet, &client, &[], &[quiet], &config).await;
        assert_eq!(fleet.pods_known("shop"), 1, "the pod that left is forgotten");
        assert!(
            fleet.routes["shop"].is_empty(),
            "nothing reports: every target unknown"
        );
        drop(silent);
    }
}
