"""The real `detour-operator` binary against a fake Kubernetes apiserver on loopback: it
elects itself leader on a Lease, issues the webhook certificate into a Secret by server-side
apply (without the CA's private key), publishes the CA in the MutatingWebhookConfiguration's caBundle, becomes ready,
serves the webhook over TLS (verifiable with that CA under the Service's DNS name), answers a
labelled pod in a namespace without routes with a denial that says why, counts it in
/metrics, logs JSON, and on SIGTERM fails /readyz while draining, releases the Lease and
exits 0.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(os.environ.get("DETOUR_ROOT", Path(__file__).resolve().parent.parent))
NS = "detour-system"
WEBHOOK_DNS = f"detour-webhook.{NS}.svc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeApiserver:
    """Answers by path; records every request; holds watches open."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.objects: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> dict | None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else None

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlparse(self.path)
                body = self._body()
                with fake.lock:
                    fake.requests.append(
                        {"method": self.command, "path": url.path, "query": url.query, "body": body}
                    )
                if "watch=true" in url.query:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    fake.stopping.wait(60)
                    return
                code, obj = fake.answer(self.command, url.path, body)
                self._send(code, obj)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{path} not found"}
        empty = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}
        if method == "GET" and path == "/api/v1/namespaces":
            return 200, {**empty, "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                             "metadata": {"name": "default"}}]}
        if method == "GET" and path in (
            "/apis/detour.dev/v1alpha1/modelroutes", "/apis/detour.dev/v1alpha1/routingpolicies",
            "/api/v1/configmaps", "/apis/detour.dev/v1alpha1/namespaces/shop/modelroutes", "/api/v1/pods",
        ):
            return 200, empty
        if method in ("POST",) and path.endswith("/leases"):
            obj = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
            self.objects["lease"] = obj
            return 201, obj
        if path == f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/detour-operator":
            if method == "GET":
                return (200, self.objects["lease"]) if "lease" in self.objects else (404, not_found)
            if method == "PUT":
                self.objects["lease"] = body
                return 200, body
        if path == f"/api/v1/namespaces/{NS}/secrets/detour-webhook-tls":
            if method == "GET":
                return (200, self.objects["secret"]) if "secret" in self.objects else (404, not_found)
            if method == "PATCH":
                self.objects["secret"] = body
                return 200, body
        if path == "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/detour-injector":
            mwc = self.objects.setdefault("mwc", {
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "detour-injector"},
                "webhooks": [{"name": "inject.detour.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                              "clientConfig": {"service": {"name": "detour-webhook", "namespace": NS}}}],
            })
            if method == "GET":
                return 200, mwc
            if method == "PATCH":
                for op in body:
                    if op["op"] == "add" and op["path"].endswith("/caBundle"):
                        mwc["webhooks"][0]["clientConfig"]["caBundle"] = op["value"]
                return 200, mwc
        return 404, not_found

    def __enter__(self) -> FakeApiserver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method: str, path_suffix: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and r["path"].endswith(path_suffix)]


@pytest.fixture(scope="module")
def operator_bin() -> str:
    binary = os.environ.get("DETOUR_OPERATOR_BIN")
    if binary:
        return binary
    subprocess.run(["cargo", "build", "-q", "-p", "detour-operator", "--bin", "detour-operator"], cwd=ROOT, check=True)
    return str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "detour-operator")


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_for(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_operator_binary_end_to_end(operator_bin, tmp_path) -> None:
    """See the module docstring."""
    with FakeApiserver() as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NS}}],
        }))
        admin, webhook = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "RUST_LOG": "info"}
        proc = subprocess.Popen(
            [operator_bin, f"--namespace={NS}", "--pod-name=detour-operator-0",
             f"--admin-addr=127.0.0.1:{admin}", f"--webhook-addr=127.0.0.1:{webhook}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for("/healthz", lambda: get(admin, "/healthz")[0] == 200)
            wait_for("/readyz (certificate issued and loaded)", lambda: get(admin, "/readyz")[0] == 200)

            (lease,) = api.seen("POST", "/leases")
            assert lease["body"]["spec"]["holderIdentity"] == "detour-operator-0"
            (apply,) = api.seen("PATCH", "/secrets/detour-webhook-tls")
            assert "fieldManager=detour-operator" in apply["query"]
            secret = apply["body"]
            ca = base64.b64decode(secret["data"]["ca-bundle.crt"]).decode()
            assert ca.startswith("-----BEGIN CERTIFICATE-----")
            # The CA's private key stays in the operator's memory: the Secret holds only the
            # serving key.
            assert sorted(secret["data"]) == ["ca-bundle.crt", "ca.crt", "tls.crt", "tls.key"]
            keys = [k for k, v in secret["data"].items() if b"PRIVATE KEY" in base64.b64decode(v)]
            assert keys == ["tls.key"]
            mwc = wait_for("caBundle", lambda: api.objects.get("mwc", {}).get("webhooks", [{}])[0]
                           .get("clientConfig", {}).get("caBundle"))
            assert base64.b64decode(mwc).decode() == ca

            context = ssl.create_default_context(cadata=ca)
            conn = http.client.HTTPSConnection("127.0.0.1", webhook, timeout=5, context=context)
            # The certificate is for the Service's DNS name; connect by IP, verify by name.
            conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", webhook)),
                                            server_hostname=WEBHOOK_DNS)
            review = {
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "e2e-1", "namespace": "shop", "operation": "CREATE",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "userInfo": {},
                    "object": {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web", "labels": {"detour.dev/inject": "true"}},
                               "spec": {"containers": [{"name": "web", "image": "web"}]}},
                },
            }
            conn.request("POST", "/mutate", body=json.dumps(review), headers={"content-type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            conn.close()
            assert answer["response"]["uid"] == "e2e-1"
            assert answer["response"]["allowed"] is False
            assert "create a ModelRoute in this namespace" in answer["response"]["status"]["message"]

            status, metrics = get(admin, "/metrics")
            assert status == 200
            assert 'detour_operator_injections_total{outcome="denied"} 1' in metrics
            assert 'detour_operator_webhook_denials_total{reason="no_routes"} 1' in metrics
            assert "detour_operator_certificates_issued_total 1" in metrics

            proc.send_signal(signal.SIGTERM)
            # Draining: not ready (endpoints drop the pod) while still serving.
            wait_for("/readyz to fail while draining", lambda: get(admin, "/readyz")[0] == 503, timeout=4)
            assert get(admin, "/healthz")[0] == 200
            assert proc.wait(timeout=25) == 0
            # The Lease was handed over on the way out, not left to expire.
            released = api.seen("PUT", "/leases/detour-operator")[-1]["body"]
            assert "holderIdentity" not in released["spec"], released
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines, "no logs"
        for line in lines:
            json.loads(line)  # every log line is JSON
        assert any("became the leader" in line for line in lines), stderr
