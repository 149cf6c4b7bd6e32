"""Fleet health end to end: the real operator (leader) against a fake apiserver that lists 20
injected pods, and 20 real sidecar processes, one per pod, on 127.0.0.2 ... 127.0.0.21 (each
pod's IP; the admin port is the pod spec's named port, the fleet key its env). A primary
that goes down, then recovers, then goes down again after the operator was killed.

Measured and asserted (printed too):
- attempts on the dead primary across the fleet before every pod skips it (alone: about
  pods x threshold; the bound: 2 x threshold + pods), and how long until every pod skips it;
- how long until every pod uses it again once it recovers;
- ModelRoute status.targets and the Events as `kubectl get -o yaml` shows them, and the
  number of status writes;
- with the operator killed, every sidecar still fails over on its own and no request fails.

The traffic is uneven, as in a real Deployment: two busy pods and eighteen quiet ones. A
quiet pod alone would spend `threshold` requests on the dead primary; with the fleet it
spends at most one before the busy pods' breakers reach it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from support import free_port, stop

SIDECAR_BIN = os.environ.get("DETOUR_SIDECAR_BIN", "")
UPSTREAM_BIN = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN", "")
OPERATOR_BIN = os.environ.get("DETOUR_OPERATOR_BIN", "")
NS, OPS = "shop", "detour-system"
PODS = 20
THRESHOLD = 3
COOLDOWN_S = 5
MODEL = "smart/chat"
BUSY = 2  # pods 0 and 1 take most of the traffic

ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {{name: fleet}}
spec:
  retry: {{attempts: 1, on: ["5xx", "connect-error", "timeout"]}}
  timeouts: {{perAttempt: 2s, total: 5s}}
  health: {{failureThreshold: {threshold}, cooldown: {cooldown}s, halfOpenProbes: 1}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: chat}}
spec:
  model: {model}
  policyRef: {{name: fleet}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-primary, endpoint: "{base}/primary/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-backup, endpoint: "{base}/backup/v1"}}
"""


def route_object(base: str) -> dict:
    return {
        "apiVersion": "detour.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": "chat", "namespace": NS, "uid": "route-uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"model": MODEL, "policyRef": {"name": "fleet"}, "targets": [
            {"name": "primary", "provider": "openai-compatible", "model": "up-primary", "endpoint": f"{base}/primary/v1"},
            {"name": "backup", "provider": "openai-compatible", "model": "up-backup", "endpoint": f"{base}/backup/v1"},
        ]},
    }


def policy_object() -> dict:
    return {
        "apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy",
        "metadata": {"name": "fleet", "namespace": NS, "uid": "policy-uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"retry": {"attempts": 1, "on": ["5xx", "connect-error", "timeout"]},
                 "timeouts": {"perAttempt": "2s", "total": "5s"},
                 "health": {"failureThreshold": THRESHOLD, "cooldown": f"{COOLDOWN_S}s", "halfOpenProbes": 1}},
    }


def pod_object(i: int, admin_port: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"web-{i}", "namespace": NS, "uid": f"pod-uid-{i}", "resourceVersion": "1",
                     "labels": {"detour.dev/inject": "true"},
                     "annotations": {"detour.dev/injected": "ghcr.io/detour-dev/detour-sidecar:test"}},
        "spec": {
            "initContainers": [{"name": "detour-sidecar", "image": "sidecar", "restartPolicy": "Always",
                                "ports": [{"name": "detour-metrics", "containerPort": admin_port, "protocol": "TCP"}],
                                "env": [{"name": "DETOUR_FLEET_KEY", "value": f"key-{i}"}]}],
            "containers": [{"name": "web", "image": "web"}],
        },
        "status": {"phase": "Running", "podIP": f"127.0.0.{i + 2}"},
    }


class Apiserver:
    """A fake apiserver: lists, watches that stream ModelRoute changes, server-side apply of
    status (recorded), Events (recorded), and what the operator's certificate manager needs."""

    def __init__(self, base: str, admin_port: int) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.route = route_object(base)
        self.rv = 1
        self.pods = [pod_object(i, admin_port) for i in range(PODS)]
        self.status_writes: list[tuple[float, dict]] = []
        self.events: list[dict] = []
        self.watchers: list[queue.Queue] = []
        self.secret: dict | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                if "watch=true" in url.query or "watch=1" in url.query:
                    self._watch(url.path)
                    return
                code, obj = fake.answer(self.command, url.path, body)
                self._send(code, obj)

            def _watch(self, path: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                if not path.endswith("/modelroutes"):
                    fake.stopping.wait(60)
                    return
                q: queue.Queue = queue.Queue()
                with fake.lock:
                    fake.watchers.append(q)
                try:
                    while not fake.stopping.is_set():
                        try:
                            event = q.get(timeout=0.5)
                        except queue.Empty:
                            continue
                        data = json.dumps(event).encode() + b"\n"
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                except OSError:
                    pass
                finally:
                    with fake.lock:
                        fake.watchers.remove(q)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _list(self, items: list[dict], kind: str = "List") -> dict:
        return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def answer(self, method: str, path: str, body):
        not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                     "code": 404, "message": f"{path} not found"}
        with self.lock:
            if method == "GET" and path == "/api/v1/namespaces":
                return 200, self._list([{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                         "metadata": {"name": n, "resourceVersion": "1"}} for n in (NS, OPS)])
            if method == "GET" and path in ("/apis/detour.dev/v1alpha1/modelroutes",
                                            f"/apis/detour.dev/v1alpha1/namespaces/{NS}/modelroutes"):
                return 200, self._list([self.route])
            if method == "GET" and path in ("/apis/detour.dev/v1alpha1/routingpolicies",
                                            f"/apis/detour.dev/v1alpha1/namespaces/{NS}/routingpolicies"):
                return 200, self._list([policy_object()])
            if method == "GET" and path == "/api/v1/configmaps":
                return 200, self._list([])
            if method == "GET" and path == "/api/v1/pods":
                return 200, self._list(self.pods)
            if method == "PATCH" and path == f"/api/v1/namespaces/{NS}/configmaps/detour-routes":
                return 200, {**body, "metadata": {**body.get("metadata", {}), "namespace": NS, "resourceVersion": "1"}}
            if method == "PATCH" and path == f"/apis/detour.dev/v1alpha1/namespaces/{NS}/modelroutes/chat/status":
                self.rv += 1
                self.route = {**self.route, "status": body["status"],
                              "metadata": {**self.route["metadata"], "resourceVersion": str(self.rv)}}
                self.status_writes.append((time.monotonic(), body["status"]))
                for q in self.watchers:
                    q.put({"type": "MODIFIED", "object": self.route})
                return 200, self.route
            if method == "PATCH" and path.startswith(f"/apis/detour.dev/v1alpha1/namespaces/{NS}/routingpolicies/"):
                return 200, {**policy_object(), "status": body.get("status")}
            if path.startswith("/apis/events.k8s.io/v1/namespaces/"):
                if method == "POST":
                    self.events.append(body)
                    return 201, {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": "1"}}
                return 200, body if isinstance(body, dict) else {}
            if path == f"/api/v1/namespaces/{OPS}/secrets/detour-webhook-tls":
                if method == "GET":
                    return (200, self.secret) if self.secret else (404, not_found)
                if method == "PATCH":
                    self.secret = body
                    return 200, body
            if path == "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/detour-injector":
                return 200, {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                             "metadata": {"name": "detour-injector"},
                             "webhooks": [{"name": "inject.detour.dev", "sideEffects": "None",
                                           "admissionReviewVersions": ["v1"],
                                           "clientConfig": {"service": {"name": "detour-webhook", "namespace": OPS}}}]}
            return 404, not_found

    def __enter__(self) -> Apiserver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def primary_status(self) -> dict | None:
        with self.lock:
            targets = (self.route.get("status") or {}).get("targets") or []
            return targets[0] if targets else None


def http_json(url: str, method: str = "GET", timeout: float = 3.0):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r) if r.headers.get("content-type", "").startswith("application/json") else r.read()


def chat(ip: str, port: int) -> tuple[int, str]:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"http://{ip}:{port}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("x-detour-target", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


def primary_of(ip: str, admin: int) -> dict:
    doc = http_json(f"http://{ip}:{admin}/v1/health")
    return next(t for t in doc["routes"][0]["targets"] if t["name"] == "primary")


def wait_until(what: str, check, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Load:
    """Busy pods get a request every 100 ms, quiet ones every 3 s (staggered); every answer
    is recorded. Runs until stopped."""

    def __init__(self, ips: list[str], port: int) -> None:
        self.ips, self.port = ips, port
        self.stopping = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=PODS)

    def _pod(self, i: int) -> None:
        every = 0.1 if i < BUSY else 3.0
        self.stopping.wait((i * 0.15) % every)
        while not self.stopping.is_set():
            result = chat(self.ips[i], self.port)
            with self.lock:
                self.results.append(result)
            self.stopping.wait(every)

    def __enter__(self) -> Load:
        for i in range(PODS):
            self.pool.submit(self._pod, i)
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=True)


def test_fleet_skips_a_dead_primary_within_seconds(tmp_path) -> None:
    """See the module docstring."""
    if not (SIDECAR_BIN and UPSTREAM_BIN and OPERATOR_BIN):
        pytest.skip("needs DETOUR_SIDECAR_BIN, DETOUR_FAKE_UPSTREAM_BIN and DETOUR_OPERATOR_BIN (run through scripts/test)")
    procs: list[subprocess.Popen] = []
    logs = []
    with open(tmp_path / "upstream.log", "wb") as log:
        upstream = subprocess.Popen([UPSTREAM_BIN], stdout=subprocess.PIPE, stderr=log)
    procs.append(upstream)
    operator = None
    try:
        line = upstream.stdout.readline().decode()
        assert line.startswith("listening on "), line
        base = "http://" + line.split()[-1]
        control = lambda stub, mode: http_json(f"{base}/_control/{stub}/{mode}", method="PUT")  # noqa: E731
        hits = lambda: http_json(f"{base}/_stats").get("primary", {}).get("5xx", 0)  # noqa: E731

        admin, port = free_port(), free_port()
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES.format(threshold=THRESHOLD, cooldown=COOLDOWN_S, model=MODEL, base=base))
        ips = [f"127.0.0.{i + 2}" for i in range(PODS)]
        for i, ip in enumerate(ips):
            err = open(tmp_path / f"sidecar-{i}.log", "wb")
            logs.append(err)
            procs.append(subprocess.Popen(
                [SIDECAR_BIN, "--routes", str(routes), "--listen", f"{ip}:{port}",
                 "--admin-listen", f"{ip}:{admin}", "--fleet-key", f"key-{i}"],
                stdout=subprocess.DEVNULL, stderr=err))
        for ip in ips:
            wait_until(f"sidecar {ip} ready", lambda ip=ip: _ok(f"http://{ip}:{admin}/readyz"), 20)

        with Apiserver(base, admin) as api:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
                "users": [{"name": "fake", "user": {"token": "test-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": OPS}}],
            }))
            op_log = open(tmp_path / "operator.log", "wb")
            logs.append(op_log)
            operator = subprocess.Popen(
                [OPERATOR_BIN, f"--namespace={OPS}", "--pod-name=detour-operator-0", "--leader-election=false",
                 f"--admin-addr=127.0.0.1:{free_port()}", f"--webhook-addr=127.0.0.1:{free_port()}",
                 "--allowed-hosts=127.0.0.1,localhost", "--log-format=text"],
                env={**os.environ, "KUBECONFIG": str(kubeconfig), "RUST_LOG": "info,detour_operator=debug"},
                stdout=subprocess.DEVNULL, stderr=op_log)
            procs.append(operator)
            # The operator gathers the fleet: every pod reports, the primary is Healthy.
            wait_until("status.targets healthy on 20 pods", lambda: (api.primary_status() or {}).get("podsReporting") == PODS
                       and api.primary_status()["state"] == "Healthy", 30)
            assert api.route["status"]["healthy"] == "2/2"

            with Load(ips, port) as load:
                time.sleep(1.0)
                assert all(status == 200 for status, _ in load.results)
                # The primary goes down.
                before = hits()
                control("primary", "5xx")
                down = time.monotonic()

                def all_skip() -> bool:
                    return all(primary_of(ip, admin)["state"] in ("open", "half-open") for ip in ips)

                wait_until("every pod to skip the dead primary", all_skip, 10)
                to_skip = time.monotonic() - down
                attempts = hits() - before
                held = sum(primary_of(ip, admin)["fleet"] for ip in ips)
                print(f"\nfleet: attempts on the dead primary before every pod skipped it: {attempts} "
                      f"(alone about {PODS * THRESHOLD}; bound {2 * THRESHOLD + PODS}); "
                      f"all {PODS} pods skipped it after {to_skip:.2f}s; {held} held by the fleet")
                assert attempts <= 2 * THRESHOLD + PODS, attempts
                assert to_skip <= 5.0, to_skip
                assert held >= PODS - 2 * BUSY, "most pods skip it on the fleet's word"

                # status.targets and the Event, as a user reads them.
                wait_until("status.targets Open", lambda: api.primary_status()["state"] == "Open", 10)
                primary = api.primary_status()
                print("status.targets[0]:", json.dumps(primary))
                assert primary["podsOpen"] >= 2 and primary["podsReporting"] == PODS
                assert primary["lastFailureClass"] == "5xx"
                assert primary["lastTransitionTime"]
                assert api.route["status"]["healthy"] == "1/2"
                opened = [e for e in api.events if e.get("reason") == "TargetOpened"]
                assert len(opened) == 1, api.events
                assert "primary is open on" in opened[0]["note"] and "5xx" in opened[0]["note"]
                assert opened[0]["regarding"]["name"] == "chat"

                # It recovers: every pod uses it again.
                time.sleep(2.0)
                during = hits() - before
                control("primary", "ok")
                up = time.monotonic()
                wait_until("every pod to use the primary again",
                           lambda: all(primary_of(ip, admin)["state"] == "closed" for ip in ips), 20)
                to_recover = time.monotonic() - up
                print(f"fleet: every pod uses the recovered primary again after {to_recover:.2f}s "
                      f"(cooldown {COOLDOWN_S}s); attempts during the whole outage: {during}")
                assert to_recover <= COOLDOWN_S + 8, to_recover
                wait_until("status.targets Healthy", lambda: api.primary_status()["state"] == "Healthy", 10)
                recovered = [e for e in api.events if e.get("reason") == "TargetRecovered"]
                assert len(recovered) == 1 and "primary recovered" in recovered[0]["note"], api.events

                writes = len(api.status_writes)
                print(f"fleet: status writes so far: {writes}")
                assert writes <= 10, [w[1].get("targets") for w in api.status_writes]

                # The operator dies; the primary goes down again: each sidecar fails over alone.
                operator.kill()
                operator.wait(timeout=5)
                served_before = len(load.results)
                control("primary", "5xx")
                wait_until("every pod to open the primary on its own",
                           lambda: all(primary_of(ip, admin)["state"] in ("open", "half-open")
                                       and not primary_of(ip, admin)["fleet"] for ip in ips), 20)
                time.sleep(0.5)
            failed = [r for r in load.results if r[0] != 200]
            print(f"fleet: {len(load.results)} requests, {len(load.results) - served_before} after the operator "
                  f"was killed; failed: {len(failed)}")
            assert not failed, failed[:5]
    finally:
        for p in reversed(procs):
            stop(p, timeout=5)
        for f in logs:
            f.close()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False
