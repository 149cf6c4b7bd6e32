//! A scripted apiserver for tests (kube-rs controller-rs `ApiServerVerifier` style): each
//! scenario states, in order, the requests it expects (verb, path, field manager, body) and
//! what the apiserver answers; anything else fails the test. Every call is also checked
//! against [`crate::rbac`] (verb, resource and name), so the chart's RBAC cannot lag behind
//! the code: [`mock_client`] grants only the rules of every certificate mode (plus the
//! per-namespace credentials reader), so the controller's and the webhook's tests prove they
//! need nothing about certificates; [`mock_client_for`] adds a mode's own rules.

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

use crate::rbac;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mocked apiserver's side.
pub struct ApiServerVerifier {
    handle: Handle,
    /// What the operator's ClusterRole and Role grant in this test.
    granted: Vec<rbac::Rule>,
}

impl std::fmt::Debug for ApiServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiServerVerifier")
    }
}

/// A client wired to a fresh verifier granting the rules every mode has
/// (the cert-manager install, which has no certificate rules).
pub fn mock_client() -> (Client, ApiServerVerifier) {
    mock_client_for(rbac::Certs::CertManager)
}

/// A client wired to a fresh verifier granting the rules of `certs` mode.
pub fn mock_client_for(certs: rbac::Certs) -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    // The credentials reader as if every namespace of the test had bound it.
    let granted = [
        rbac::cluster(certs),
        rbac::namespaced(certs),
        rbac::CREDENTIALS_READER.to_vec(),
    ]
    .concat();
    (
        Client::new(service, "default"),
        ApiServerVerifier { handle, granted },
    )
}

/// One request the code made.
#[derive(Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The `Accept` header: metadata-only requests ask for `PartialObjectMetadata(List)`.
    pub accept: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl ApiServerVerifier {
    /// The next request, which must be `method path`. Checks it against the RBAC rules.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"));
        let (request, respond) = next.unwrap_or_else(|| panic!("expected {method} {path}, client gone"));
        let method_seen = request.method().to_string();
        let path_seen = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let accept = accept_of(&request);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(
            (method_seen.as_str(), path_seen.as_str()),
            (method, path),
            "unexpected request (body {body})"
        );
        self.check_rbac(&method_seen, &path_seen, &query);
        Call {
            method: method_seen,
            path: path_seen,
            query,
            accept,
            body,
            respond,
        }
    }

    /// The next request, whatever it is (for tests that answer by path, in any order),
    /// still checked against the RBAC rules. `None` when the client is gone.
    pub async fn next_any(&mut self) -> Option<Call> {
        let (request, respond) = self.handle.next_request().await?;
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let accept = accept_of(&request);
        let bytes = request.into_body().collect_bytes().await.ok()?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.check_rbac(&method, &path, &query);
        Some(Call {
            method,
            path,
            query,
            accept,
            body,
            respond,
        })
    }

    /// Fails the test when the granted rules do not allow this request.
    fn check_rbac(&self, method: &str, path: &str, query: &str) {
        let access = rbac::classify(method, path, query)
            .unwrap_or_else(|| panic!("{method} {path} is not a resource request"));
        assert!(
            rbac::allows(&self.granted, &access),
            "{} {}/{} (name {:?}) is not granted by operator/src/rbac.rs in this mode ({method} {path}?{query})",
            access.verb,
            access.group,
            access.resource,
            access.name,
        );
    }

    /// Asserts that the code made no further request.
    pub async fn done(mut self) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(100), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected extra request {} {}", request.method(), request.uri());
        }
    }
}

fn accept_of(request: &Request<Body>) -> String {
    request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl Call {
    /// Whether this is a watch.
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|kv| kv == "watch=true")
    }

    /// Keeps the request open without answering (a watch with no news): the handle is
    /// returned so the caller decides when to drop it.
    pub fn hold(self) -> tower_test::mock::SendResponse<Response<Body>> {
        self.respond
    }

    /// The `fieldManager` query parameter.
    pub fn field_manager(&self) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldManager="))
    }

    /// Asserts a server-side apply by our one field manager, with force.
    pub fn assert_apply(&self) {
        assert_eq!(
            self.field_manager(),
            Some("detour-operator"),
            "{} {}",
            self.method,
            self.path
        );
        assert!(
            self.query.split('&').any(|kv| kv == "force=true"),
            "{}",
            self.query
        );
    }

    /// Answers with `status` and a JSON body.
    pub fn reply(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }

    /// Answers 200 with the request's own body (what an apply returns, near enough).
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(200, &body);
    }

    /// Answers with a `Status` failure.
    pub fn fail(self, code: u16, reason: &str) {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mocked {reason}"), "reason": reason, "code": code,
        });
        self.reply(code, &status);
    }
}
