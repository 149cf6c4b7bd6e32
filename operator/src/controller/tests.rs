//! Reconcile scenarios against a scripted apiserver: each asserts the verb, path, field
//! manager and body of every request, in order, and that nothing else was sent.

use std::sync::Arc;
use std::time::Duration;

use detour_api::{Input, RouteTable, SecretIndex, compile};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::core::PartialObjectMetaExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Resource};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{policy, route, target};
use crate::metrics::Metrics;
use crate::verifier::{ApiServerVerifier, mock_client};

const NS: &str = "team-a";
const OPERATOR_NS: &str = "detour-system";
const NOW: &str = "2026-05-05T05:05:05Z";
const CM_PATH: &str = "/api/v1/namespaces/team-a/configmaps/detour-routes";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

struct World {
    routes: Vec<ModelRoute>,
    policies: Vec<RoutingPolicy>,
    config_map_exists: bool,
}

fn context(client: Client, world: World, backoff: Arc<Backoff>) -> Arc<Context> {
    let cms: Vec<PartialObjectMeta<ConfigMap>> = if world.config_map_exists {
        vec![
            ObjectMeta {
                name: Some("detour-routes".into()),
                namespace: Some(NS.into()),
                ..ObjectMeta::default()
            }
            .into_response_partial(),
        ]
    } else {
        Vec::new()
    };
    Arc::new(Context {
        client: client.clone(),
        operator_namespace: OPERATOR_NS.to_owned(),
        allowed_hosts: AllowedHosts::providers(),
        routes: store(world.routes),
        policies: store(world.policies),
        config_maps: store(cms),
        recorder: Recorder::new(client, Reporter::from("detour-operator")),
        metrics: Metrics::new().unwrap(),
        backoff,
        now: || NOW.to_owned(),
    })
}

fn namespace() -> Arc<PartialObjectMeta<Namespace>> {
    Arc::new(
        ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        }
        .into_response_partial(),
    )
}

/// Runs one reconcile against a scenario; returns the reconcile's result.
async fn run<F, Fut>(world: World, backoff: Arc<Backoff>, scenario: F) -> Result<Action, Error>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: Future<Output = ()>,
{
    let (client, verifier) = mock_client();
    let ctx = context(client, world, backoff);
    let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(reconcile(namespace(), ctx), scenario(verifier))
    })
    .await
    .expect("scenario timed out");
    result
}

/// What the apiserver answers to a metadata-only GET of Secret `openai`: its metadata,
/// labelled opted-in or not.
fn secret_meta(opted_in: bool) -> Value {
    let labels = if opted_in {
        json!({"detour.dev/credentials": "true"})
    } else {
        json!({"team": "a"})
    };
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": "openai", "namespace": NS, "labels": labels}})
}

/// How the scripted apiserver answers the Secret GET.
#[derive(Clone, Copy)]
enum SecretAnswer {
    OptedIn,
    NotOptedIn,
    Missing,
    Forbidden,
}

/// The route table inside an applied ConfigMap body.
fn table_of(body: &Value) -> RouteTable {
    let text = body["data"]["routes.json"]
        .as_str()
        .expect("routes.json in the ConfigMap");
    RouteTable::from_json(text).expect("a valid route table")
}

fn ready(body: &Value) -> &Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition")
}

fn condition<'a>(body: &'a Value, type_: &str) -> Option<&'a Value> {
    body["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Expects the Secret GET, metadata only (no value or key name is ever sent to the
/// operator), and answers it.
async fn secret_get(v: &mut ApiServerVerifier, answer: SecretAnswer) {
    let call = v.expect("GET", "/api/v1/namespaces/team-a/secrets/openai").await;
    assert!(
        call.accept.contains("as=PartialObjectMetadata"),
        "{}",
        call.accept
    );
    match answer {
        SecretAnswer::OptedIn => call.reply(200, &secret_meta(true)),
        SecretAnswer::NotOptedIn => call.reply(200, &secret_meta(false)),
        SecretAnswer::Missing => call.fail(404, "NotFound"),
        SecretAnswer::Forbidden => call.fail(403, "Forbidden"),
    }
}

/// Expects the ConfigMap apply; returns its body.
async fn config_map_apply(v: &mut ApiServerVerifier) -> Value {
    let call = v.expect("PATCH", CM_PATH).await;
    call.assert_apply();
    let body = call.body.clone();
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "detour-operator"
    );
    assert_eq!(body["kind"], "ConfigMap");
    call.echo();
    body
}

async fn status_apply(v: &mut ApiServerVerifier, kind: &str, name: &str) -> Value {
    let call = v
        .expect(
            "PATCH",
            &format!("/apis/detour.dev/v1alpha1/namespaces/team-a/{kind}/{name}/status"),
        )
        .await;
    call.assert_apply();
    let body = call.body.clone();
    assert_eq!(body["apiVersion"], "detour.dev/v1alpha1");
    // The apiserver answers with the whole object.
    let mut object = body.clone();
    object["metadata"] = json!({"name": name, "namespace": NS});
    object["spec"] = if kind == "modelroutes" {
        json!({"model": "m", "targets": [{"name": "t", "provider": "mock", "model": "m"}]})
    } else {
        json!({})
    };
    call.reply(200, &object);
    body
}

async fn event(v: &mut ApiServerVerifier) -> Value {
    let call = v.expect("POST", EVENTS_PATH).await;
    let body = call.body.clone();
    assert_eq!(body["reportingController"], "detour-operator");
    call.echo();
    body
}

fn world(routes: Vec<ModelRoute>, policies: Vec<RoutingPolicy>) -> World {
    World {
        routes,
        policies,
        config_map_exists: false,
    }
}

/// A new route with its Secret present: the table is applied with the route, the route
/// gets Ready=True with its policy and target count, and one Normal Event.
#[tokio::test]
async fn create_applies_table_then_status_then_event() {
    let r = route(NS, "chat", "gpt/fast").build();
    let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        let cm = config_map_apply(&mut v).await;
        let table = table_of(&cm);
        assert_eq!(table.routes.len(), 1);
        assert_eq!(table.routes[0].model, "gpt/fast");
        let creds = table.routes[0].targets[0].credentials.as_ref().unwrap();
        assert_eq!(creds.secret.as_deref(), Some("openai"));
        assert_eq!(
            cm["metadata"]["annotations"]["detour.dev/routes-hash"],
            json!(table.hash)
        );

        let status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(
            status["status"],
            json!({
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Compiled",
                    "message": "serving 1 target(s) with policy builtin",
                    "lastTransitionTime": NOW, "observedGeneration": 1,
                }],
                "observedGeneration": 1,
                "configMap": "detour-routes",
                "policy": "builtin",
                "targetCount": 1,
            })
        );
        let ev = event(&mut v).await;
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["reason"], "Compiled");
        assert_eq!(ev["regarding"]["kind"], "ModelRoute");
        assert_eq!(ev["regarding"]["name"], "chat");
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// An updated route (new generation, a second target) is re-applied; its status moves to
/// the new generation but keeps lastTransitionTime, and no Event is sent (Ready unchanged).
#[tokio::test]
async fn update_keeps_transition_time_and_sends_no_event() {
    let old = route(NS, "chat", "gpt/fast").build();
    let compiled_old = {
        let mut secrets = SecretIndex::new();
        secrets.opted_in(NS, "openai");
        compile(&Input::cluster(
            std::slice::from_ref(&old),
            &[],
            &secrets,
            OPERATOR_NS,
        ))
    };
    let mut r = route(NS, "chat", "gpt/fast")
        .targets(vec![target("primary", "openai"), target("backup", "openai")])
        .generation(2)
        .build();
    r.status = Some(status::route_status(
        &compiled_old,
        &old,
        "detour-routes",
        "2026-01-01T00:00:00Z",
    ));
    let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        let cm = config_map_apply(&mut v).await;
        assert_eq!(table_of(&cm).routes[0].targets.len(), 2);
        let status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(status["status"]["observedGeneration"], 2);
        assert_eq!(status["status"]["targetCount"], 2);
        assert_eq!(ready(&status)["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(ready(&status)["observedGeneration"], 2);
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A route whose status is already current causes no status write at all.
#[tokio::test]
async fn unchanged_status_is_not_rewritten() {
    let mut r = route(NS, "chat", "gpt/fast").build();
    let mut secrets = SecretIndex::new();
    secrets.opted_in(NS, "openai");
    let c = compile(&Input::cluster(
        std::slice::from_ref(&r),
        &[],
        &secrets,
        OPERATOR_NS,
    ));
    r.status = Some(status::route_status(
        &c,
        &r,
        "detour-routes",
        "2026-01-01T00:00:00Z",
    ));
    let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        config_map_apply(&mut v).await;
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// The last route deleted: the ConfigMap is kept but emptied, so sidecars stop serving the
/// old routes; nothing else is written.
#[tokio::test]
async fn route_deleted_empties_the_config_map() {
    let w = World {
        routes: vec![],
        policies: vec![],
        config_map_exists: true,
    };
    let result = run(w, Arc::default(), |mut v| async move {
        let cm = config_map_apply(&mut v).await;
        let table = table_of(&cm);
        assert!(table.routes.is_empty());
        assert!(table.excluded.is_empty());
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A namespace that never had routes gets no ConfigMap and no request at all.
#[tokio::test]
async fn namespace_without_routes_writes_nothing() {
    let result = run(world(vec![], vec![]), Arc::default(), |v| async move {
        v.done().await
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A policyRef to a missing policy: the route is left out (visibly, in `excluded`) and says
/// PolicyNotFound; once the policy exists, the route serves with it and the policy counts it.
#[tokio::test]
async fn policy_missing_then_created() {
    let r = route(NS, "chat", "gpt/fast").policy("fast-failover").build();
    let before = r.clone();
    let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        let cm = config_map_apply(&mut v).await;
        let table = table_of(&cm);
        assert!(table.routes.is_empty());
        assert_eq!(table.excluded.len(), 1);
        let status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(ready(&status)["status"], "False");
        assert_eq!(ready(&status)["reason"], "PolicyNotFound");
        assert!(
            ready(&status)["message"]
                .as_str()
                .unwrap()
                .contains("fast-failover")
        );
        let ev = event(&mut v).await;
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "PolicyNotFound");
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");

    let p = policy(NS, "fast-failover").build();
    let result = run(world(vec![before], vec![p]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        let cm = config_map_apply(&mut v).await;
        assert_eq!(table_of(&cm).routes.len(), 1);
        let status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(ready(&status)["status"], "True");
        assert_eq!(status["status"]["policy"], "team-a/fast-failover");
        event(&mut v).await;
        let pstatus = status_apply(&mut v, "routingpolicies", "fast-failover").await;
        assert_eq!(ready(&pstatus)["status"], "True");
        assert_eq!(pstatus["status"]["routeCount"], 1);
        event(&mut v).await;
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// Two routes claiming one model id: the older serves, both carry a Conflict condition, the
/// newer is not Ready.
#[tokio::test]
async fn duplicate_model_is_a_conflict_on_both() {
    let older = route(NS, "a-chat", "gpt/fast")
        .created("2026-01-01T00:00:00Z")
        .build();
    let newer = route(NS, "b-chat", "gpt/fast")
        .created("2026-02-01T00:00:00Z")
        .build();
    let result = run(
        world(vec![newer, older], vec![]),
        Arc::default(),
        |mut v| async move {
            secret_get(&mut v, SecretAnswer::OptedIn).await;
            let cm = config_map_apply(&mut v).await;
            let table = table_of(&cm);
            assert_eq!(table.routes.len(), 1);
            assert_eq!(table.routes[0].source.name, "a-chat");
            let a = status_apply(&mut v, "modelroutes", "a-chat").await;
            assert_eq!(condition(&a, "Conflict").unwrap()["reason"], "DuplicateModel");
            event(&mut v).await;
            let b = status_apply(&mut v, "modelroutes", "b-chat").await;
            assert_eq!(condition(&b, "Conflict").unwrap()["reason"], "DuplicateModel");
            assert_eq!(ready(&b)["status"], "False");
            event(&mut v).await;
            v.done().await;
        },
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// Two default policies in one namespace: both get Conflict, neither is picked, the route
/// falls back to the built-in policy and says so.
#[tokio::test]
async fn two_defaults_are_a_conflict_on_both() {
    let r = route(NS, "chat", "gpt/fast").build();
    let p1 = policy(NS, "one").default_policy().build();
    let p2 = policy(NS, "two").default_policy().build();
    let result = run(world(vec![r], vec![p1, p2]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        let cm = config_map_apply(&mut v).await;
        assert_eq!(table_of(&cm).routes[0].policy.source, "builtin");
        let route_status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(route_status["status"]["policy"], "builtin");
        event(&mut v).await;
        for name in ["one", "two"] {
            let s = status_apply(&mut v, "routingpolicies", name).await;
            assert_eq!(condition(&s, "Conflict").unwrap()["reason"], "DefaultConflict");
            event(&mut v).await;
        }
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A missing Secret leaves the target out visibly and the route says SecretNotFound.
#[tokio::test]
async fn secret_missing_is_reported() {
    let r = route(NS, "chat", "gpt/fast").build();
    let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::Missing).await;
        let cm = config_map_apply(&mut v).await;
        let table = table_of(&cm);
        assert!(table.routes.is_empty());
        assert!(
            table.excluded.iter().any(|e| e.reason.contains("openai")),
            "{:?}",
            table.excluded
        );
        let status = status_apply(&mut v, "modelroutes", "chat").await;
        assert_eq!(ready(&status)["reason"], "SecretNotFound");
        assert_eq!(status["status"]["targetCount"], 0);
        event(&mut v).await;
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A Secret without the opt-in label, and one the operator may not read: each leaves the
/// target out, says why in status and Event, and re-reads the namespace soon (Secrets are
/// not watched).
#[tokio::test]
async fn secret_not_opted_in_or_unreadable_is_reported() {
    for (answer, reason, hint) in [
        (
            SecretAnswer::NotOptedIn,
            "SecretNotOptedIn",
            "detour.dev/credentials=true",
        ),
        (SecretAnswer::Forbidden, "SecretNotReadable", "RoleBinding"),
    ] {
        let r = route(NS, "chat", "gpt/fast").build();
        let result = run(world(vec![r], vec![]), Arc::default(), |mut v| async move {
            secret_get(&mut v, answer).await;
            let cm = config_map_apply(&mut v).await;
            assert!(table_of(&cm).routes.is_empty());
            let status = status_apply(&mut v, "modelroutes", "chat").await;
            assert_eq!(ready(&status)["reason"], reason);
            assert!(ready(&status)["message"].as_str().unwrap().contains(hint));
            let ev = event(&mut v).await;
            assert_eq!(ev["reason"], reason);
            v.done().await;
        })
        .await;
        assert_eq!(result.unwrap(), Action::requeue(SECRET_RECHECK), "{reason}");
    }
}

/// The apiserver fails the apply: the reconcile fails with the namespace in its error, no
/// status is written from a table that was not applied, the error policy backs off
/// exponentially, and the next reconcile recovers and resets the backoff.
#[tokio::test]
async fn apiserver_error_then_recovery() {
    let backoff = Arc::new(Backoff::default());
    let r = route(NS, "chat", "gpt/fast").build();
    let again = r.clone();
    let result = run(world(vec![r], vec![]), backoff.clone(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        v.expect("PATCH", CM_PATH).await.fail(500, "InternalError");
        v.done().await;
    })
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "configmap_apply");
    assert!(err.to_string().contains("team-a/detour-routes"), "{err}");
    assert_eq!(backoff.next(NS), Duration::from_secs(1));
    assert_eq!(backoff.next(NS), Duration::from_secs(2));
    assert_eq!(backoff.next(NS), Duration::from_secs(4));

    let result = run(world(vec![again], vec![]), backoff.clone(), |mut v| async move {
        secret_get(&mut v, SecretAnswer::OptedIn).await;
        config_map_apply(&mut v).await;
        status_apply(&mut v, "modelroutes", "chat").await;
        event(&mut v).await;
        v.done().await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        backoff.next(NS),
        Duration::from_secs(1),
        "success resets the backoff"
    );
}

/// Backoff doubles per key and caps.
#[test]
fn backoff_is_per_key_and_capped() {
    let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    assert_eq!(b.next("a"), Duration::from_secs(1));
    assert_eq!(b.next("a"), Duration::from_secs(2));
    assert_eq!(b.next("b"), Duration::from_secs(1));
    assert_eq!(b.next("a"), Duration::from_secs(4));
    assert_eq!(b.next("a"), Duration::from_secs(5));
    b.reset("a");
    assert_eq!(b.next("a"), Duration::from_secs(1));
}

/// Missing CRDs stop the operator with the install command in the message.
#[tokio::test]
async fn missing_crds_name_the_install_command() {
    let (client, mut v) = mock_client();
    let (result, ()) = tokio::join!(check_crds(&client), async move {
        v.expect("GET", "/apis/detour.dev/v1alpha1/modelroutes")
            .await
            .fail(404, "NotFound");
    });
    let message = result.unwrap_err().to_string();
    assert!(message.contains("kubectl apply -f crds/"), "{message}");
    assert!(message.contains("helm install detour charts/detour"), "{message}");
}

/// Events point at the route itself (kind, name), so `kubectl describe` shows them.
#[test]
fn event_regarding_uses_the_object_ref() {
    let r = route(NS, "chat", "gpt/fast").build();
    assert_eq!(r.object_ref(&()).kind.as_deref(), Some("ModelRoute"));
}

/// The whole controller, wired as in production, against a fake apiserver answering by path:
/// it checks the CRDs, lists and watches namespaces, routes, policies and our ConfigMaps
/// (metadata only where it should be) and never lists or watches Secrets, waits for the
/// caches, reconciles the one namespace with a route (one metadata GET of its Secret, table,
/// status, Event), and stops on shutdown.
#[tokio::test]
async fn run_wires_watches_and_reconciles() {
    let (client, mut v) = mock_client();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = super::run(
        client,
        OPERATOR_NS.to_owned(),
        AllowedHosts::providers(),
        Reporter::from("detour-operator"),
        Metrics::new().unwrap(),
        None,
        async move {
            let _ = stopped.await;
        },
    );
    let meta_list = |items: Value| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "1"}, "items": items})
    };
    let route = serde_json::to_value(route(NS, "chat", "gpt/fast").build()).unwrap();
    let server = async move {
        let mut held = Vec::new();
        let mut listed = BTreeSet::new();
        let mut stop = Some(stop);
        while let Some(call) = v.next_any().await {
            if call.is_watch() {
                held.push(call.hold());
                continue;
            }
            let path = call.path.clone();
            match (call.method.as_str(), path.as_str()) {
                ("GET", "/apis/detour.dev/v1alpha1/modelroutes") => {
                    listed.insert("modelroutes");
                    let items = if call.query.contains("limit=1") {
                        json!([])
                    } else {
                        json!([route])
                    };
                    call.reply(
                        200,
                        &json!({"apiVersion": "detour.dev/v1alpha1", "kind": "ModelRouteList",
                                            "metadata": {"resourceVersion": "1"}, "items": items}),
                    );
                }
                ("GET", "/apis/detour.dev/v1alpha1/routingpolicies") => {
                    listed.insert("routingpolicies");
                    call.reply(
                        200,
                        &json!({"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicyList",
                                            "metadata": {"resourceVersion": "1"}, "items": []}),
                    );
                }
                ("GET", "/api/v1/namespaces") => {
                    assert!(
                        call.accept.contains("as=PartialObjectMetadataList"),
                        "{}",
                        call.accept
                    );
                    listed.insert("namespaces");
                    call.reply(200, &meta_list(json!([{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                                       "metadata": {"name": NS}},
                                                      {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                                       "metadata": {"name": "empty"}}])));
                }
                ("GET", "/api/v1/configmaps") => {
                    assert!(
                        call.query
                            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddetour-operator"),
                        "{}",
                        call.query
                    );
                    assert!(
                        call.query.contains("fieldSelector=metadata.name%3Ddetour-routes"),
                        "{}",
                        call.query
                    );
                    listed.insert("configmaps");
                    call.reply(200, &meta_list(json!([])));
                }
                ("GET", "/api/v1/namespaces/team-a/secrets/openai") => {
                    assert!(
                        call.accept.contains("as=PartialObjectMetadata"),
                        "{}",
                        call.accept
                    );
                    call.reply(200, &secret_meta(true));
                }
                ("PATCH", CM_PATH) => {
                    call.assert_apply();
                    assert_eq!(table_of(&call.body).routes.len(), 1);
                    call.echo();
                }
                ("PATCH", "/apis/detour.dev/v1alpha1/namespaces/team-a/modelroutes/chat/status") => {
                    call.assert_apply();
                    assert_eq!(ready(&call.body)["status"], "True");
                    let mut object = route.clone();
                    object["status"] = call.body["status"].clone();
                    call.reply(200, &object);
                }
                ("POST", EVENTS_PATH) => {
                    call.echo();
                    // The reconcile of team-a is complete: stop the controller.
                    assert_eq!(
                        listed,
                        ["configmaps", "modelroutes", "namespaces", "routingpolicies"]
                            .into_iter()
                            .collect()
                    );
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                    }
                }
                (m, p) => panic!("unexpected {m} {p}?{}", call.query),
            }
        }
        held.len()
    };
    let (result, watches) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(controller, server)
    })
    .await
    .expect("the controller did not reconcile and stop in time");
    result.unwrap();
    assert!(watches >= 4, "{watches} watches");
}

/// A default policy in the operator's namespace serves routes of other namespaces that name
/// no policy, and the route's status names it.
#[tokio::test]
async fn cluster_default_policy_applies_to_other_namespaces() {
    let r = route(NS, "chat", "gpt/fast").build();
    let cluster_default = policy(OPERATOR_NS, "house-rules").default_policy().build();
    let result = run(
        world(vec![r], vec![cluster_default]),
        Arc::default(),
        |mut v| async move {
            secret_get(&mut v, SecretAnswer::OptedIn).await;
            let cm = config_map_apply(&mut v).await;
            assert_eq!(table_of(&cm).routes[0].policy.source, "detour-system/house-rules");
            let status = status_apply(&mut v, "modelroutes", "chat").await;
            assert_eq!(status["status"]["policy"], "detour-system/house-rules");
            event(&mut v).await;
            // The policy's own status is written by the operator namespace's reconcile, not here.
            v.done().await;
        },
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// Watch mapping: a policy in the operator's namespace wakes every namespace with routes;
/// elsewhere only its own.
#[test]
fn watch_mappers() {
    let routes: Vec<Arc<ModelRoute>> = vec![
        Arc::new(route("team-a", "chat", "m").build()),
        Arc::new(
            route("team-b", "chat", "m")
                .targets(vec![target("p", "anthropic")])
                .build(),
        ),
    ];
    let cluster = policy(OPERATOR_NS, "p").default_policy().build();
    assert_eq!(
        namespaces_for_policy(&cluster, OPERATOR_NS, &routes),
        ["detour-system", "team-a", "team-b"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let local = policy("team-a", "p").build();
    assert_eq!(
        namespaces_for_policy(&local, OPERATOR_NS, &routes),
        ["team-a".to_owned()].into_iter().collect()
    );
}
