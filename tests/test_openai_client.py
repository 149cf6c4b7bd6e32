"""The real Python `openai` client against the real `detour-sidecar` binary.

The sidecar runs standalone (`--routes`) on free loopback ports, with targets pointing at a
small scripted OpenAI-compatible fake upstream on 127.0.0.1 started by this module. The
client's own retries are disabled, so every failover seen here is the sidecar's.
"""

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

BIN = os.environ.get("DETOUR_SIDECAR_BIN", "")


class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits = {}
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        stub = self.path.strip("/").split("/")[0]
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with self.server.lock:
            self.server.hits[stub] = self.server.hits.get(stub, 0) + 1
        if stub == "dead":
            return self.reply(500, {"error": {"message": "down", "type": "server_error"}})
        if stub == "limited":
            return self.reply(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "1"})
        model = body.get("model")
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i, word in enumerate(["Hello", " from", " " + stub]):
                delta = {"content": word} if i else {"role": "assistant", "content": word}
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            last = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.chunk(f"data: {json.dumps(last)}\n\n".encode())
            self.chunk(b"data: [DONE]\n\n")
            self.chunk(b"")
            return None
        return self.reply(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Hello from {stub}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def reply(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {{name: p}}
spec:
  retry: {{attempts: 1}}
  timeouts: {{perAttempt: 2s, firstByte: 1s, total: 5s}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: smart}}
spec:
  model: smart/chat
  policyRef: {{name: p}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-a, endpoint: "{base}/dead/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-b, endpoint: "{base}/ok/v1"}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: limited}}
spec:
  model: fast/chat
  policyRef: {{name: p}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-a, endpoint: "{base}/limited/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-b, endpoint: "{base}/ok/v1"}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: broken}}
spec:
  model: broken/chat
  policyRef: {{name: p}}
  targets:
    - {{name: only, provider: openai-compatible, model: up-a, endpoint: "{base}/dead/v1"}}
"""


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    if not BIN or not os.path.exists(BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    upstream = Upstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    tmp = tmp_path_factory.mktemp("sidecar")
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(base=f"http://127.0.0.1:{upstream.server_address[1]}"))
    port, admin = free_port(), free_port()
    out = open(tmp / "stdout", "wb")
    err = open(tmp / "stderr", "wb")
    proc = subprocess.Popen(
        [BIN, "--routes", str(routes), "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sidecar not ready: {(tmp / 'stderr').read_text()}")
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=10)
        yield client, upstream, admin
    finally:
        # Stop only the process this fixture started.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        out.close()
        err.close()
        upstream.shutdown()
        upstream.server_close()


def test_non_streaming_fails_over_on_5xx(sidecar):
    """A primary answering 500 is invisible to the openai client: the backup's answer comes back
    under the route's model id, and the headers say who served it."""
    client, upstream, _ = sidecar
    raw = client.chat.completions.with_raw_response.create(
        model="smart/chat", messages=[{"role": "user", "content": "hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from ok"
    assert completion.model == "smart/chat"
    assert raw.headers["x-detour-target"] == "backup"
    assert raw.headers["x-detour-fallback-count"] == "1"
    assert raw.headers["x-detour-provider"] == "openai-compatible"
    assert upstream.hits["dead"] >= 1


def test_streaming_fails_over_on_429(sidecar):
    """A streaming request whose primary rate-limits streams the backup's answer chunk by chunk."""
    client, _, _ = sidecar
    stream = client.chat.completions.create(
        model="fast/chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from ok"
    assert all(c.model == "fast/chat" for c in chunks)


def test_streaming_through_primary(sidecar):
    """Streaming through a healthy first target (the backup of smart/chat once the primary's
    breaker opened, or directly) ends with a finish_reason."""
    client, _, _ = sidecar
    stream = client.chat.completions.create(
        model="smart/chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_all_failed_is_an_api_error_with_attempts(sidecar):
    """When every target fails the openai client raises a 503 APIStatusError whose message lists
    the attempts."""
    client, _, _ = sidecar
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="broken/chat", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    assert "only: 5xx (500)" in str(e.value)
    assert e.value.response.headers["retry-after"]


def test_unknown_model_is_not_found(sidecar):
    """An unknown model is openai.NotFoundError naming the known models."""
    client, _, _ = sidecar
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "smart/chat" in str(e.value)


def test_models_list(sidecar):
    """`client.models.list()` lists the route ids."""
    client, _, _ = sidecar
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["broken/chat", "fast/chat", "smart/chat"]


def test_fallback_rate_from_metrics(sidecar):
    """The DESIGN.md fallback-rate expression's ingredients are on /metrics."""
    _, _, admin = sidecar
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    lines = [l for l in text.splitlines() if l.startswith("detour_requests_total{")]
    total = sum(float(l.rsplit(" ", 1)[1]) for l in lines)
    fallback = sum(float(l.rsplit(" ", 1)[1]) for l in lines if 'fallback="true"' in l)
    assert total >= 3 and fallback >= 2
