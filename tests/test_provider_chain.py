"""The real Python `openai` client through the common production chain
openai (failing) → anthropic → bedrock, and openai (failing) → Claude on Vertex AI
(overloaded) → Gemini on Vertex AI, against the real `detour-sidecar` binary.

The fakes on 127.0.0.1 (one threaded HTTP server, this module's own) speak each provider's
documented wire format: OpenAI's chat API (answering 503), Anthropic's Messages API (JSON and
SSE), Bedrock's Converse and ConverseStream (JSON and the binary event-stream framing), and
STS `AssumeRoleWithWebIdentity` (XML). Bedrock's fake recomputes the SigV4 signature here,
independently of the Rust crate, with the credentials its STS handed out, and rejects a wrong
one. Vertex's fakes speak Claude's rawPredict/streamRawPredict and Gemini's
OpenAI-compatible chat completions, and accept only the access token the fake Google token
endpoint issued for a service-account key's RS256 JWT (its header and claims are checked
here). The client's own retries are off, so every failover seen is the sidecar's.
"""

import base64

import json
import os
import subprocess
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone

import openai
import pytest

from support import FakeHandler, FakeServer, es_event, free_port, sigv4_problem, stop, wait_http_ok

BIN = os.environ.get("DETOUR_SIDECAR_BIN", "")
API_KEY = "sk-ant-test-key"
REGION = "us-west-2"
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/detour-bedrock"
TOKEN = "projected.service-account.token"
TEMP = ("ASIATEMPKEY", "temp/secret+key", "temp-session-token")
GOOGLE_PROJECT = "chain-project"
GOOGLE_REGION = "europe-west4"
GOOGLE_SA = "detour@chain-project.iam.gserviceaccount.com"
GOOGLE_ACCESS_TOKEN = "ya29.chain-access-token"
GOOGLE_KEY_PEM = os.path.join(os.path.dirname(__file__), "..", "sidecar", "tests", "data", "google-test-key.pem")


class Fakes(FakeServer):
    def __init__(self):
        super().__init__(Handler)


class Handler(FakeHandler):
    def do_POST(self):
        raw, headers, path = self.read_request()
        stub = path.strip("/").split("/")[0]
        self.server.hit(stub)
        if stub == "sts":
            return self.sts(raw)
        if stub == "token":
            return self.google_token(raw)
        body = json.loads(raw or b"{}")
        if stub.startswith("vertex"):
            return self.vertex(stub, path, headers, body)
        if stub.startswith("oai"):
            return self.reply(503, {"error": {"message": "down", "type": "server_error"}})
        if stub.startswith("ant"):
            return self.anthropic(stub, path, headers, body)
        if stub.startswith("bed"):
            return self.bedrock(path, headers, raw, body)
        return self.reply(404, {})

    # --- STS ---
    def sts(self, raw):
        form = urllib.parse.parse_qs(raw.decode())
        ok = (form.get("Action") == ["AssumeRoleWithWebIdentity"] and form.get("RoleArn") == [ROLE]
              and form.get("WebIdentityToken") == [TOKEN])
        if not ok:
            self.server.violation(f"sts: bad form {sorted(form)}")
            return self.raw(400, "text/xml", b"<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>")
        exp = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = ("<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
               f"<AccessKeyId>{TEMP[0]}</AccessKeyId><SecretAccessKey>{TEMP[1]}</SecretAccessKey>"
               f"<SessionToken>{TEMP[2]}</SessionToken><Expiration>{exp}</Expiration>"
               "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>")
        return self.raw(200, "text/xml", xml.encode())

    # --- Google: the token endpoint and Vertex AI ---
    def google_token(self, raw):
        form = urllib.parse.parse_qs(raw.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            self.server.violation(f"token: grant_type {form.get('grant_type')}")
        jwt = (form.get("assertion") or [""])[0].split(".")
        unb64 = lambda s: json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        if len(jwt) != 3:
            self.server.violation("token: assertion is not a JWT")
            return self.reply(400, {"error": "invalid_grant"})
        head, claims = unb64(jwt[0]), unb64(jwt[1])
        if head.get("alg") != "RS256" or claims.get("iss") != GOOGLE_SA \
                or claims.get("scope") != "https://www.googleapis.com/auth/cloud-platform" \
                or not claims.get("aud", "").endswith("/token") or claims.get("exp", 0) - claims.get("iat", 0) != 3600:
            self.server.violation(f"token: JWT {head} {claims}")
            return self.reply(400, {"error": "invalid_grant"})
        if len(base64.urlsafe_b64decode(jwt[2] + "=" * (-len(jwt[2]) % 4))) != 256:
            self.server.violation("token: signature is not RS256 with a 2048-bit key")
        return self.reply(200, {"access_token": GOOGLE_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"})

    def vertex(self, stub, path, headers, body):
        if headers.get("authorization") != f"Bearer {GOOGLE_ACCESS_TOKEN}":
            self.server.violation(f"{stub}: Google access token missing or wrong")
            return self.reply(401, [{"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}])
        location = f"/{stub}/v1/projects/{GOOGLE_PROJECT}/locations/{GOOGLE_REGION}"
        if stub == "vertex-claude":
            verb = "streamRawPredict" if body.get("stream") else "rawPredict"
            if path != f"{location}/publishers/anthropic/models/claude-x@20250101:{verb}":
                self.server.violation(f"vertex-claude: path {path}")
            if "model" in body or body.get("anthropic_version") != "vertex-2023-10-16":
                self.server.violation(f"vertex-claude: body {body}")
            return self.reply(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        if path != f"{location}/endpoints/openapi/chat/completions":
            self.server.violation(f"vertex-gemini: path {path}")
        if body.get("model") != "google/gemini-x":
            self.server.violation(f"vertex-gemini: model {body.get('model')}")
        base = {"id": "chatcmpl-g", "created": 1, "model": "google/gemini-x"}
        if not body.get("stream"):
            return self.reply(200, {**base, "object": "chat.completion", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "Hello from gemini"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
        self.start_chunked("text/event-stream")
        for delta, finish in [({"role": "assistant", "content": "Hello"}, None), ({"content": " from gemini"}, None), ({}, "stop")]:
            chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self.chunk(b"data: [DONE]\n\n")
        self.chunk(b"")

    # --- Anthropic Messages ---
    def anthropic(self, stub, path, headers, body):
        if path != f"/{stub}/v1/messages":
            self.server.violation(f"anthropic: path {path}")
        if headers.get("x-api-key") != API_KEY or headers.get("anthropic-version") != "2023-06-01":
            self.server.violation("anthropic: x-api-key or anthropic-version")
        if "authorization" in headers:
            self.server.violation("anthropic: Authorization forwarded")
        if not isinstance(body.get("max_tokens"), int) or body.get("messages", [{}])[0].get("role") != "user":
            self.server.violation(f"anthropic: body {body}")
        if stub == "ant-overloaded":
            return self.reply(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        if not body.get("stream"):
            return self.reply(200, {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "Hello from anthropic"}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 3}})
        events = [
            {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": "claude-x", "content": [], "stop_reason": None,
                                                  "usage": {"input_tokens": 5, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from anthropic"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
            {"type": "message_stop"},
        ]
        self.anthropic_sse(events)

    # --- Bedrock Converse / ConverseStream ---
    def bedrock(self, path, headers, raw, body):
        model = urllib.parse.quote(BEDROCK_MODEL, safe="")
        stream = path.endswith("/converse-stream")
        if path not in (f"/bed/model/{model}/converse", f"/bed/model/{model}/converse-stream"):
            self.server.violation(f"bedrock: path {path}")
        problem = sigv4_problem("POST", path, headers, raw, TEMP[0], TEMP[1], REGION, TEMP[2],
                                must_sign=("host", "x-amz-date", "x-amz-security-token", "content-type"))
        if problem:
            self.server.violation(f"bedrock: SigV4: {problem}")
            return self.reply(403, {"message": "signature"}, {"x-amzn-errortype": "InvalidSignatureException"})
        if "model" in body or "maxTokens" not in body.get("inferenceConfig", {}):
            self.server.violation(f"bedrock: body {body}")
        if not stream:
            return self.reply(200, {
                "output": {"message": {"role": "assistant", "content": [{"text": "Hello from bedrock"}]}},
                "stopReason": "end_turn", "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8},
                "metrics": {"latencyMs": 10}}, {"x-amzn-requestid": "req-1"})
        self.bedrock_stream([
            ("messageStart", {"role": "assistant"}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " from bedrock"}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}, "metrics": {"latencyMs": 9}}),
        ])

ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {{name: p}}
spec:
  retry: {{attempts: 1, on: ["5xx", "429", "timeout", "connect-error"]}}
  timeouts: {{perAttempt: 3s, firstByte: 2s, total: 8s}}
  health: {{failureThreshold: 100}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: to-anthropic}}
spec:
  model: chain/anthropic
  policyRef: {{name: p}}
  targets:
    - {{name: openai, provider: openai, model: gpt-4o, endpoint: "{base}/oai/v1", allowPlainHttp: true, credentials: {{apiKeyFile: "{key}"}}}}
    - {{name: anthropic, provider: anthropic, model: claude-x, endpoint: "{base}/ant", allowPlainHttp: true, credentials: {{apiKeyFile: "{key}"}}}}
    - name: bedrock
      provider: bedrock
      model: "{bedrock_model}"
      region: {region}
      endpoint: "{base}/bed"
      allowPlainHttp: true
      credentials: {{webIdentity: {{roleArn: "{role}", tokenFile: "{token}"}}}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: to-bedrock}}
spec:
  model: chain/bedrock
  policyRef: {{name: p}}
  targets:
    - {{name: openai, provider: openai, model: gpt-4o, endpoint: "{base}/oai2/v1", allowPlainHttp: true, credentials: {{apiKeyFile: "{key}"}}}}
    - {{name: anthropic, provider: anthropic, model: claude-x, endpoint: "{base}/ant-overloaded", allowPlainHttp: true, credentials: {{apiKeyFile: "{key}"}}}}
    - name: bedrock
      provider: bedrock
      model: "{bedrock_model}"
      region: {region}
      endpoint: "{base}/bed"
      allowPlainHttp: true
      credentials: {{webIdentity: {{roleArn: "{role}", tokenFile: "{token}"}}}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: to-vertex}}
spec:
  model: chain/vertex
  policyRef: {{name: p}}
  targets:
    - {{name: openai, provider: openai, model: gpt-4o, endpoint: "{base}/oai3/v1", allowPlainHttp: true, credentials: {{apiKeyFile: "{key}"}}}}
    - {{name: claude, provider: vertex, model: "claude-x@20250101", region: {google_region}, endpoint: "{base}/vertex-claude", allowPlainHttp: true, vertex: {{project: {google_project}, publisher: anthropic}}, credentials: {{apiKeyFile: "{google_key}"}}}}
    - {{name: gemini, provider: vertex, model: google/gemini-x, region: {google_region}, endpoint: "{base}/vertex-gemini", allowPlainHttp: true, vertex: {{project: {google_project}}}, credentials: {{apiKeyFile: "{google_key}"}}}}
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if not BIN or not os.path.exists(BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    fakes = Fakes()
    thread = threading.Thread(target=fakes.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{fakes.server_address[1]}"
    tmp = tmp_path_factory.mktemp("chain")
    key, token = tmp / "api-key", tmp / "token"
    key.write_text(API_KEY + "\n")
    token.write_text(TOKEN)
    google_key = tmp / "key.json"
    with open(GOOGLE_KEY_PEM) as f:
        pem = f.read()
    google_key.write_text(json.dumps({"type": "service_account", "project_id": GOOGLE_PROJECT,
                                      "private_key_id": "k1", "private_key": pem, "client_email": GOOGLE_SA,
                                      "token_uri": f"{base}/token"}))
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(base=base, key=key, token=token, role=ROLE, region=REGION,
                                    bedrock_model=BEDROCK_MODEL, google_key=google_key,
                                    google_project=GOOGLE_PROJECT, google_region=GOOGLE_REGION))
    port, admin = free_port(), free_port()
    out, err = open(tmp / "stdout", "wb"), open(tmp / "stderr", "wb")
    env = dict(os.environ, AWS_ENDPOINT_URL_STS=f"{base}/sts/")
    proc = subprocess.Popen(
        [BIN, "--routes", str(routes), "--credentials-dir", str(tmp), "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env=env,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp / "stderr")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="app-dummy", max_retries=0, timeout=10)
        yield client, fakes, tmp
    finally:
        stop(proc)
        out.close()
        err.close()
        fakes.shutdown()
        fakes.server_close()
        logs = (tmp / "stdout").read_bytes() + (tmp / "stderr").read_bytes()
        for secret in (API_KEY, TOKEN, TEMP[1], TEMP[2], GOOGLE_ACCESS_TOKEN, "PRIVATE KEY"):
            assert secret.encode() not in logs, "a credential reached the sidecar's output"


def assert_clean(fakes):
    with fakes.lock:
        errors, fakes.errors = fakes.errors, []
    assert not errors, errors


def test_openai_down_anthropic_serves(chain):
    """openai answers 503; anthropic's answer reaches the openai client as a normal
    chat.completion under the model that served (the route's id in x-detour-route), with the
    provider named in the headers."""
    client, fakes, _ = chain
    raw = client.chat.completions.with_raw_response.create(
        model="chain/anthropic", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    c = raw.parse()
    assert c.choices[0].message.content == "Hello from anthropic"
    assert c.choices[0].finish_reason == "stop"
    assert c.model == "claude-x"
    assert raw.headers["x-detour-route"] == "chain/anthropic"
    assert c.usage.total_tokens == 8
    assert raw.headers["x-detour-provider"] == "anthropic"
    assert raw.headers["x-detour-fallback-count"] == "1"
    assert_clean(fakes)


def test_openai_down_anthropic_streams(chain):
    """The same chain, streaming: Anthropic's SSE events arrive as chat.completion.chunks with a
    usage chunk and a clean end."""
    client, fakes, _ = chain
    stream = client.chat.completions.create(
        model="chain/anthropic", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from anthropic"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 8
    assert all(c.model == "claude-x" for c in chunks)
    assert_clean(fakes)


def test_openai_and_anthropic_down_bedrock_serves(chain):
    """openai 503 and anthropic 529 (overloaded): Bedrock, signed with credentials from STS web
    identity, answers; the client sees a normal chat.completion."""
    client, fakes, _ = chain
    raw = client.chat.completions.with_raw_response.create(
        model="chain/bedrock", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    c = raw.parse()
    assert c.choices[0].message.content == "Hello from bedrock"
    assert c.model == BEDROCK_MODEL
    assert c.usage.prompt_tokens == 5 and c.usage.completion_tokens == 3
    assert raw.headers["x-detour-provider"] == "bedrock"
    assert raw.headers["x-detour-fallback-count"] == "2"
    assert fakes.hits.get("sts", 0) >= 1
    assert_clean(fakes)


def test_openai_and_anthropic_down_bedrock_streams(chain):
    """The same chain, streaming: ConverseStream's binary event stream arrives as
    chat.completion.chunks; the STS credentials are reused, not fetched per request."""
    client, fakes, _ = chain
    sts_before = fakes.hits.get("sts", 0)
    stream = client.chat.completions.create(
        model="chain/bedrock", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from bedrock"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fakes.hits.get("sts", 0) == sts_before
    assert_clean(fakes)


def test_openai_down_claude_on_vertex_overloaded_gemini_serves(chain):
    """openai answers 503 and Claude on Vertex AI (rawPredict) 529; Gemini through Vertex's
    OpenAI-compatible endpoint serves, with the token the service-account key's JWT got,
    and reports its own model."""
    client, fakes, _ = chain
    raw = client.chat.completions.with_raw_response.create(
        model="chain/vertex", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    c = raw.parse()
    assert c.choices[0].message.content == "Hello from gemini"
    assert c.model == "google/gemini-x"
    assert raw.headers["x-detour-provider"] == "vertex"
    assert raw.headers["x-detour-target"] == "gemini"
    assert raw.headers["x-detour-fallback-count"] == "2"
    assert fakes.hits.get("token", 0) == 2, "one token exchange per Vertex target"
    assert_clean(fakes)


def test_vertex_chain_streams(chain):
    """The same chain, streaming: Claude's streamRawPredict is tried, Gemini's stream
    arrives as chat.completion.chunks; the cached token is reused."""
    client, fakes, _ = chain
    before = fakes.hits.get("token", 0)
    stream = client.chat.completions.create(
        model="chain/vertex", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from gemini"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fakes.hits.get("token", 0) == before
    assert_clean(fakes)
