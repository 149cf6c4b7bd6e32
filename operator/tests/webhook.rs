//! Injection webhook golden tests (linkerd proxy-injector `fake/data` style): each
//! `tests/data/webhook/<case>.request.json` is answered, and the answer must equal
//! `<case>.response.json` (with the patch decoded in place, so a diff reads as a change of
//! the injected pod).
//! Regenerate after an intended change with `DETOUR_UPDATE_GOLDEN=1 cargo test -p detour-operator --test webhook`
//! and review the diff.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed assertion"
)]

use std::path::PathBuf;

use detour_api::{SecretIndex, SecretState, parse_yaml};
use detour_operator::webhook::{self, Routes, Selection, Settings, Verdict};
use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(manifest_dir())
        .join("tests/data/webhook")
        .join(name)
}

/// The namespace's ModelRoutes from `routes.yaml`, and the Secrets' metadata as the webhook
/// reads it: `openai`, `anthropic` and `aws-bedrock` opted in, `db-creds` not.
fn namespace_routes() -> Routes {
    let objects = parse_yaml(&std::fs::read_to_string(data("routes.yaml")).unwrap()).unwrap();
    let mut secrets = SecretIndex::new();
    secrets.opted_in("shop", "openai");
    secrets.opted_in("shop", "anthropic");
    secrets.opted_in("shop", "aws-bedrock");
    secrets.insert("shop", "db-creds", SecretState::NotOptedIn);
    Routes {
        routes: objects.routes,
        secrets,
    }
}

fn answer(body: &[u8], routes: &Routes) -> (Value, Option<Verdict>) {
    let settings = Settings {
        // The image inject-overrides asks for.
        allowed_images: vec!["registry.local/detour-sidecar".to_owned()],
        ..Settings::default()
    };
    answer_with(body, routes, &settings)
}

fn answer_with(body: &[u8], routes: &Routes, settings: &Settings) -> (Value, Option<Verdict>) {
    match webhook::parse(body) {
        Err(message) => (serde_json::to_value(webhook::malformed(&message)).unwrap(), None),
        Ok(request) => {
            let (review, verdict, _) = webhook::respond(&request, settings, routes);
            (serde_json::to_value(review).unwrap(), Some(verdict))
        }
    }
}

/// The patch of a response, decoded. kube serialises `patch` as a JSON array of bytes
/// (which the apiserver's Go decoder accepts for `[]byte`, as it does base64).
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = serde_json::from_value(response["response"].get("patch")?.clone()).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The response as a person reads it: the patch decoded in place.
fn readable(response: &Value) -> Value {
    let mut out = response.clone();
    if let Some(patch) = patch_of(response) {
        out["response"]["patch"] = serde_json::to_value(patch).unwrap();
    }
    out
}

/// Compares with (or, with DETOUR_UPDATE_GOLDEN=1, writes) a golden file.
fn golden(name: &str, actual: &Value) {
    let path = data(name);
    let text = format!("{}\n", serde_json::to_string_pretty(actual).unwrap());
    if std::env::var_os("DETOUR_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with DETOUR_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(expected, text, "{} differs", path.display());
}

/// Runs one case against its golden files; returns the response.
fn case(name: &str, routes: &Routes) -> Value {
    let body = std::fs::read(data(&format!("{name}.request.json"))).unwrap();
    let (response, _) = answer(&body, routes);
    golden(&format!("{name}.response.json"), &readable(&response));
    response
}

/// Applies a response's patch to the request's pod and parses the result as a `Pod`.
fn patched(name: &str, response: &Value) -> (Value, Pod) {
    let request: Value =
        serde_json::from_slice(&std::fs::read(data(&format!("{name}.request.json"))).unwrap()).unwrap();
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch_of(response).expect("a patch")).unwrap();
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let mut review = request;
    review["request"]["object"] = pod;
    (review, typed)
}

/// A second pass over an injected pod patches nothing.
fn assert_idempotent(review: &Value, routes: &Routes) {
    let (response, verdict) = answer(&serde_json::to_vec(review).unwrap(), routes);
    assert_eq!(response["response"]["allowed"], true);
    assert!(
        response["response"].get("patch").is_none(),
        "second pass patched: {response}"
    );
    assert_eq!(verdict, Some(Verdict::Skipped(webhook::Skip::AlreadyInjected)));
}

fn found() -> Routes {
    namespace_routes()
}

/// A labelled pod selecting every route (`detour.dev/routes: "*"`) gets one native sidecar
/// (first init container, restartPolicy Always) with the routes ConfigMap and the two
/// opted-in Secrets of `chat` mounted read-only — none of the attack routes' (an unlabelled
/// Secret behind a plain-http loopback endpoint, a region that names another host, a token
/// file outside the projected-token directory) — a named metrics port, a readiness probe, a
/// hardened securityContext, the operator's allowlist in its environment, and
/// OPENAI_BASE_URL on the app container.
#[test]
fn inject_basic() {
    let routes = found();
    let response = case("inject-basic", &routes);
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let (review, pod) = patched("inject-basic", &response);
    let spec = pod.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init.len(), 1);
    let sidecar = &init[0];
    assert_eq!(sidecar.name, "detour-sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/detour-dev/detour-sidecar:0.1.0")
    );
    assert_eq!(
        sidecar.args.as_ref().unwrap()[..2],
        ["--config".to_owned(), "/etc/detour/routes.json".to_owned()]
    );
    let ports = sidecar.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("detour-metrics"));
    assert_eq!(ports[0].container_port, 9090);
    let readiness = sidecar
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let mounts: Vec<(String, String, Option<bool>)> = sidecar
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("detour-routes".into(), "/etc/detour".into(), Some(true)),
            (
                "detour-cred-anthropic".into(),
                "/var/run/detour/credentials/anthropic".into(),
                Some(true)
            ),
            (
                "detour-cred-openai".into(),
                "/var/run/detour/credentials/openai".into(),
                Some(true)
            ),
        ]
    );
    let env = sidecar.env.as_ref().unwrap();
    assert_eq!(env[0].name, "DETOUR_ALLOWED_HOSTS");
    assert_eq!(
        env[0].value.as_deref(),
        Some(
            "api.openai.com,api.anthropic.com,*.openai.azure.com,bedrock-runtime.*.amazonaws.com,aiplatform.googleapis.com,*-aiplatform.googleapis.com"
        )
    );
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 3);
    assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "detour-routes");
    assert_eq!(
        volumes[2].secret.as_ref().unwrap().secret_name.as_deref(),
        Some("openai")
    );
    let env = spec.containers[0].env.as_ref().unwrap();
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].name, "OPENAI_BASE_URL");
    assert_eq!(env[0].value.as_deref(), Some("http://127.0.0.1:4000/v1"));
    assert_eq!(
        pod.metadata.annotations.unwrap()["detour.dev/injected"],
        "ghcr.io/detour-dev/detour-sidecar:0.1.0"
    );
    assert_idempotent(&review, &routes);
}

/// Annotations override image, resources and port; existing init containers, volumes and
/// env are kept; a container that sets OPENAI_BASE_URL itself keeps its value.
#[test]
fn inject_overrides() {
    let routes = found();
    let response = case("inject-overrides", &routes);
    let (review, pod) = patched("inject-overrides", &response);
    let spec = pod.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["detour-sidecar", "migrate"]
    );
    let sidecar = &init[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.local/detour-sidecar:dev")
    );
    let resources = sidecar.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "200m");
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
    assert!(
        sidecar
            .args
            .as_ref()
            .unwrap()
            .contains(&"127.0.0.1:4100".to_owned())
    );
    assert_eq!(spec.volumes.unwrap().len(), 4);
    let web_env = spec.containers[0].env.as_ref().unwrap();
    assert_eq!(web_env.len(), 2);
    assert_eq!(web_env[1].value.as_deref(), Some("http://127.0.0.1:4100/v1"));
    let worker_env = spec.containers[1].env.as_ref().unwrap();
    assert_eq!(worker_env.len(), 1);
    assert_eq!(worker_env[0].value.as_deref(), Some("https://proxy.internal/v1"));
    assert_idempotent(&review, &routes);
}

/// `detour.dev/inject-env: "false"` injects the sidecar but leaves the app's env alone.
#[test]
fn inject_env_off() {
    let routes = found();
    let response = case("inject-env-off", &routes);
    let (review, pod) = patched("inject-env-off", &response);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap().len(), 1);
    assert!(spec.containers[0].env.is_none());
    assert_idempotent(&review, &routes);
}

/// `detour.dev/upstream-ca-configmap` mounts only that ConfigMap's `ca.crt`, read-only, in the
/// sidecar alone, and passes it as `--upstream-ca-file`.
#[test]
fn inject_upstream_ca() {
    let routes = found();
    let response = case("inject-upstream-ca", &routes);
    let (review, pod) = patched("inject-upstream-ca", &response);
    let spec = pod.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let sidecar = &init[0];
    let args = sidecar.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--upstream-ca-file").unwrap();
    assert_eq!(args[at + 1], "/etc/detour-upstream-ca/ca.crt");
    let mount = sidecar
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "detour-upstream-ca")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/detour-upstream-ca", Some(true))
    );
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "detour-upstream-ca")
        .unwrap();
    let cm = volume.config_map.unwrap();
    assert_eq!(cm.name, "kube-root-ca.crt");
    let items = cm.items.unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect::<Vec<_>>(),
        [("ca.crt", "ca.crt")]
    );
    assert!(spec.containers.iter().all(|c| {
        c.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "detour-upstream-ca")
    }));
    assert_idempotent(&review, &routes);
}

/// An upstream CA annotation that is not a ConfigMap name is denied, saying what is expected.
#[test]
fn deny_bad_upstream_ca() {
    assert_denied(
        &case("deny-bad-upstream-ca", &found()),
        "detour.dev/upstream-ca-configmap: \"Not_A_Name\" is not valid: the name of a ConfigMap",
    );
}

/// A pod without the label is allowed untouched.
#[test]
fn skip_not_labelled() {
    let response = case("skip-not-labelled", &found());
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none());
}

fn assert_denied(response: &Value, needle: &str) {
    assert_eq!(response["response"]["allowed"], false);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} does not say {needle:?}");
}

/// A labelled pod in a namespace without routes is denied, naming what to create.
#[test]
fn deny_no_routes() {
    let response = case("deny-no-routes", &Routes::default());
    assert_denied(&response, "create a ModelRoute in this namespace");
}

/// hostNetwork pods are denied with the reason.
#[test]
fn deny_host_network() {
    assert_denied(&case("deny-host-network", &found()), "hostNetwork");
}

/// An invalid annotation is denied, naming it and what is expected.
#[test]
fn deny_bad_port() {
    assert_denied(&case("deny-bad-port", &found()), "detour.dev/proxy-port");
}

/// A container already on the metrics port is denied, naming container and port.
#[test]
fn deny_port_in_use() {
    assert_denied(
        &case("deny-port-in-use", &found()),
        "\"web\" already uses port 9090",
    );
}

/// A malformed review gets a clear denial, not a 500.
#[test]
fn malformed_review() {
    let response = case("malformed", &found());
    assert_denied(&response, "malformed AdmissionReview");
}

/// The request of `inject-basic` with `detour.dev/routes` set to `value` (or removed).
fn selecting(value: Option<&str>) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(data("inject-basic.request.json")).unwrap()).unwrap();
    let annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    match value {
        Some(v) => annotations.insert("detour.dev/routes".into(), Value::String(v.into())),
        None => annotations.remove("detour.dev/routes"),
    };
    serde_json::to_vec(&review).unwrap()
}

/// The credential volumes a response's patch adds.
fn credential_volumes(response: &Value) -> Vec<String> {
    let patch = serde_json::to_value(patch_of(response).expect("a patch")).unwrap();
    let text = patch.to_string();
    let mut names: Vec<String> = text
        .match_indices("\"detour-cred-")
        .map(|(i, _)| text[i + 1..].split('"').next().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The attacks, one route each: a pod that selects only that route is injected with no
/// credential volume at all, so nothing it names ever reaches the sidecar's filesystem.
#[test]
fn attack_routes_mount_nothing() {
    for route in ["exfil", "region-trick", "token-trick"] {
        let (response, verdict) = answer(&selecting(Some(route)), &found());
        assert_eq!(verdict, Some(Verdict::Injected), "{route}");
        assert_eq!(credential_volumes(&response), Vec::<String>::new(), "{route}");
    }
    let (response, _) = answer(&selecting(Some("chat, exfil")), &found());
    assert_eq!(
        credential_volumes(&response),
        ["detour-cred-anthropic", "detour-cred-openai"]
    );
}

/// Without the annotation a pod mounts the Secrets of no route by default (a new route never
/// widens a running workload's mounts), and of every route with `--default-routes all`.
#[test]
fn default_selection_follows_the_setting() {
    let (response, _) = answer(&selecting(None), &found());
    assert_eq!(credential_volumes(&response), Vec::<String>::new());
    let all = Settings {
        default_routes: Selection::All,
        ..Settings::default()
    };
    let (response, _) = answer_with(&selecting(None), &found(), &all);
    assert_eq!(
        credential_volumes(&response),
        ["detour-cred-anthropic", "detour-cred-openai"]
    );
}

/// A route name the namespace does not have is denied, naming the routes it has.
#[test]
fn deny_unknown_route() {
    let (response, _) = answer(&selecting(Some("chat,chta")), &found());
    assert_denied(
        &response,
        "names ModelRoute \"chta\", which namespace \"shop\" does not have (it has: chat, exfil, region-trick, token-trick)",
    );
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// With fleet health on, the sidecar gets its pod's fleet key in its environment (and only
/// then); two keys drawn for two pods differ.
#[test]
fn fleet_key_reaches_the_sidecar_environment() {
    let key = webhook::inject::fleet_key().unwrap();
    assert_eq!(key.len(), 64);
    assert_ne!(Some(&key), webhook::inject::fleet_key().as_ref());
    let with = Settings {
        fleet: true,
        fleet_key: Some(key.clone()),
        ..Settings::default()
    };
    let (response, _) = answer_with(&selecting(None), &found(), &with);
    let patch = serde_json::to_value(patch_of(&response).expect("a patch"))
        .unwrap()
        .to_string();
    assert!(
        patch.contains(&format!(r#"{{"name":"DETOUR_FLEET_KEY","value":"{key}"}}"#)),
        "{patch}"
    );
    let (response, _) = answer_with(&selecting(None), &found(), &Settings::default());
    let patch = serde_json::to_value(patch_of(&response).expect("a patch"))
        .unwrap()
        .to_string();
    assert!(!patch.contains("DETOUR_FLEET_KEY"));
}
