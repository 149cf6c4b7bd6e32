"""Credentials from a directory, the standalone way: `examples/three-provider-chain.yaml`, exactly
as a cluster would apply it, run by the real `detour-sidecar` binary with `--credentials-dir`
pointing at a directory of key files laid out like the mounted Secrets
(`<dir>/<secretName>/<key>`), and `--endpoint-override` sending each target to a loopback fake
of its provider (this module's own: OpenAI's chat SSE, Anthropic's Messages SSE, Bedrock's
ConverseStream with SigV4 recomputed here from the static keys in the directory).

What it proves: each provider gets its key from the directory; a missing key file is named at
start-up and in the failed attempt (class `credentials`), and the chain moves on; a key file
that appears later is picked up; and no key value ever shows in stdout, stderr, responses,
`/metrics`, `/readyz` or the health report.
"""

import binascii
import hashlib
import hmac
import http.server
import json
import os
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support import free_port, stop, wait_http_ok, SIDECAR_BIN

ROOT = Path(os.environ.get("DETOUR_ROOT", Path(__file__).resolve().parent.parent))
EXAMPLE = ROOT / "examples" / "three-provider-chain.yaml"
OPENAI_KEY = "sk-proj-OPENAI-VALUE-7f3a9e"
ANTHROPIC_KEY = "sk-ant-ANTHROPIC-VALUE-91c2d4"
AWS_ID = "AKIAEXAMPLEVALUE5W2Q"
AWS_SECRET = "wJalrXUtnFEMI/SECRET/VALUE+x8Kq"
SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, AWS_ID, AWS_SECRET]
REGION = "us-east-1"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"


class Fakes(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits = {}
        self.errors = []
        self.openai_down = False

    def hit(self, stub):
        with self.lock:
            self.hits[stub] = self.hits.get(stub, 0) + 1

    def violation(self, what):
        with self.lock:
            self.errors.append(what)


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_problem(path, headers, body):
    """Recomputes the SigV4 signature of a Bedrock request signed with the static keys."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no AWS4-HMAC-SHA256 Authorization"
    parts = dict(p.split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(", "))
    amz_date = headers.get("x-amz-date", "")
    scope = f"{amz_date[:8]}/{REGION}/bedrock/aws4_request"
    if parts.get("Credential") != f"{AWS_ID}/{scope}":
        return "wrong credential scope or key id"
    if "x-amz-security-token" in headers:
        return "a session token was sent, none was configured"
    signed = parts["SignedHeaders"].split(";")
    canonical_uri = urllib.parse.quote(path, safe="/-_.~")
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join(["POST", canonical_uri, "", canonical_headers, ";".join(signed),
                           hashlib.sha256(body).hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + AWS_SECRET).encode(), amz_date[:8])
    for part in (REGION, "bedrock", "aws4_request"):
        key = _hmac(key, part)
    want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(want, parts.get("Signature", "")) else "signature does not match"


def es_event(kind, obj):
    """One event-stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    headers = {":message-type": "event", ":event-type": kind, ":content-type": "application/json"}
    payload = json.dumps(obj).encode()
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    msg = prelude + struct.pack(">I", binascii.crc32(prelude)) + hb + payload
    return msg + struct.pack(">I", binascii.crc32(msg))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urllib.parse.urlsplit(self.path).path
        stub = path.strip("/").split("/")[0]
        self.server.hit(stub)
        body = json.loads(raw or b"{}")
        if stub == "oai":
            return self.openai(path, headers, body)
        if stub == "ant":
            return self.anthropic(path, headers, body)
        if stub == "bed":
            return self.bedrock(path, headers, raw)
        return self.reply(404, {})

    def openai(self, path, headers, body):
        if path != "/oai/v1/chat/completions" or headers.get("authorization") != f"Bearer {OPENAI_KEY}":
            self.server.violation(f"openai: path {path} or Authorization")
        if self.server.openai_down:
            return self.reply(503, {"error": {"message": "down", "type": "server_error"}})
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
        self.start_chunked("text/event-stream")
        for delta, finish in [({"role": "assistant", "content": ""}, None),
                              ({"content": "Hello from openai"}, None), ({}, "stop")]:
            chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])
            self.chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = dict(base, choices=[], usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
        self.chunk(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.chunk(b"")

    def anthropic(self, path, headers, body):
        if path != "/ant/v1/messages" or headers.get("x-api-key") != ANTHROPIC_KEY:
            self.server.violation(f"anthropic: path {path} or x-api-key")
        events = [
            {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": "claude-sonnet-4-5", "content": [],
                                                  "stop_reason": None,
                                                  "usage": {"input_tokens": 5, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from anthropic"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
            {"type": "message_stop"},
        ]
        self.start_chunked("text/event-stream")
        for e in events:
            self.chunk(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
        self.chunk(b"")

    def bedrock(self, path, headers, raw):
        model = urllib.parse.quote(BEDROCK_MODEL, safe="")
        if path != f"/bed/model/{model}/converse-stream":
            self.server.violation(f"bedrock: path {path}")
        problem = sigv4_problem(path, headers, raw)
        if problem:
            self.server.violation(f"bedrock: SigV4: {problem}")
            return self.reply(403, {"message": "signature"}, {"x-amzn-errortype": "InvalidSignatureException"})
        self.start_chunked("application/vnd.amazon.eventstream")
        for kind, obj in [
            ("messageStart", {"role": "assistant"}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello from bedrock"}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}, "metrics": {"latencyMs": 9}}),
        ]:
            self.chunk(es_event(kind, obj))
        self.chunk(b"")

    def start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

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


def chat(port):
    """One chat request to the route of the example; status, headers and body text."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"model": "smart/balanced", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer app-dummy"},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def audit_lines(tmp):
    return [json.loads(l) for l in (tmp / "stdout").read_text().splitlines() if l.startswith("{")]


def test_three_provider_example_runs_unchanged_with_a_credentials_dir(tmp_path):
    """The example runs as written against the three fakes, each key read from the directory;
    a missing key is named at start-up and in the attempt, and the chain moves on; no key value
    is ever printed or served."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    creds = tmp_path / "credentials"
    for secret, key, value in [("openai", "api-key", OPENAI_KEY),
                               ("aws-bedrock", "aws-access-key-id", AWS_ID),
                               ("aws-bedrock", "aws-secret-access-key", AWS_SECRET)]:
        (creds / secret).mkdir(parents=True, exist_ok=True)
        (creds / secret / key).write_text(value + "\n")
    (creds / "anthropic").mkdir()
    anthropic_key = creds / "anthropic" / "api-key"  # written later: missing at start

    fakes = Fakes()
    threading.Thread(target=fakes.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{fakes.server_address[1]}"
    port, admin = free_port(), free_port()
    out, err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen(
        [SIDECAR_BIN, "--routes", str(EXAMPLE), "--credentials-dir", str(creds),
         "--endpoint-override", f"openai={base}/oai/v1",
         "--endpoint-override", f"anthropic={base}/ant",
         "--endpoint-override", f"bedrock={base}/bed",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    responses = []
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp_path / "stderr")
        stderr = (tmp_path / "stderr").read_text()
        assert f"target anthropic: key file {anthropic_key} does not exist" in stderr, stderr

        status, headers, body = chat(port)
        responses.append((headers, body))
        assert status == 200 and headers["x-detour-target"] == "openai", body
        assert "Hello from openai" in body

        fakes.openai_down = True
        status, headers, body = chat(port)
        responses.append((headers, body))
        assert status == 200, body
        assert headers["x-detour-target"] == "bedrock", body
        assert "Hello from bedrock" in body
        time.sleep(0.2)
        rec = audit_lines(tmp_path)[-1]
        classes = [(a["target"], a["class"]) for a in rec["attempts"]]
        assert classes == [("openai", "5xx"), ("openai", "5xx"), ("anthropic", "credentials"), ("bedrock", "ok")], rec
        assert rec["attempts"][2]["detail"] == f"key file {anthropic_key} does not exist", rec

        anthropic_key.write_text(ANTHROPIC_KEY + "\n")
        time.sleep(1.1)  # key files are checked at most once a second
        status, headers, body = chat(port)
        responses.append((headers, body))
        assert status == 200 and headers["x-detour-target"] in ("anthropic", "bedrock"), body
        if headers["x-detour-target"] == "bedrock":  # openai's breaker opened: anthropic is next
            pytest.fail(f"anthropic did not serve once its key appeared: {body}")
        assert "Hello from anthropic" in body

        surfaces = [get(f"http://127.0.0.1:{admin}{p}")[1] for p in ("/metrics", "/readyz", "/v1/health")]
        assert 'class="credentials"' in surfaces[0]
    finally:
        stop(proc)
        out.close()
        err.close()
        fakes.shutdown()
    assert not fakes.errors, fakes.errors
    assert fakes.hits.get("ant") == 1 and fakes.hits.get("bed") == 1, fakes.hits
    printed = {
        "stdout": (tmp_path / "stdout").read_text(),
        "stderr": (tmp_path / "stderr").read_text(),
        "responses": json.dumps(responses),
        "admin": "\n".join(surfaces),
    }
    for where, text in printed.items():
        for secret in SECRETS:
            assert secret not in text, f"a key value appeared in {where}"


def test_every_target_without_credentials_makes_readyz_say_why(tmp_path):
    """With an empty credentials directory the sidecar starts, warns about each key file, and
    `/readyz` is 503 naming the route and each target's missing file; a request gets a 503
    listing every attempt as `credentials` with its file."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    creds = tmp_path / "credentials"
    creds.mkdir()
    port, admin = free_port(), free_port()
    out, err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen(
        [SIDECAR_BIN, "--routes", str(EXAMPLE), "--credentials-dir", str(creds),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                status, why = get(f"http://127.0.0.1:{admin}/readyz")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
                time.sleep(0.05)
        assert status == 503, why
        assert why.startswith('route "smart/balanced": no target has a usable credential: '), why
        for target, file in [("openai", "openai/api-key"), ("anthropic", "anthropic/api-key"),
                             ("bedrock", "aws-bedrock/aws-access-key-id")]:
            assert f"{target}: key file {creds / file} does not exist" in why, why
        status, _, body = chat(port)
        assert status == 503, body
        message = json.loads(body)["error"]["message"]
        assert f"anthropic: credentials (key file {creds / 'anthropic/api-key'} does not exist)" in message, message
    finally:
        stop(proc)
        out.close()
        err.close()
