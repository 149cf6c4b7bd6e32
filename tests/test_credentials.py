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

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support import (FakeHandler, FakeServer, SIDECAR_BIN, es_event, free_port, sigv4_problem, stop,
                     wait_http_ok)

ROOT = Path(os.environ.get("DETOUR_ROOT", Path(__file__).resolve().parent.parent))
EXAMPLE = ROOT / "examples" / "three-provider-chain.yaml"
OPENAI_KEY = "sk-proj-OPENAI-VALUE-7f3a9e"
ANTHROPIC_KEY = "sk-ant-ANTHROPIC-VALUE-91c2d4"
AWS_ID = "AKIAEXAMPLEVALUE5W2Q"
AWS_SECRET = "wJalrXUtnFEMI/SECRET/VALUE+x8Kq"
SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, AWS_ID, AWS_SECRET]
REGION = "us-east-1"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"


class Fakes(FakeServer):
    def __init__(self):
        super().__init__(Handler)
        self.openai_down = False


class Handler(FakeHandler):
    def do_POST(self):
        raw, headers, path = self.read_request()
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
        self.anthropic_sse(events)

    def bedrock(self, path, headers, raw):
        model = urllib.parse.quote(BEDROCK_MODEL, safe="")
        if path != f"/bed/model/{model}/converse-stream":
            self.server.violation(f"bedrock: path {path}")
        problem = sigv4_problem("POST", path, headers, raw, AWS_ID, AWS_SECRET, REGION)
        if problem:
            self.server.violation(f"bedrock: SigV4: {problem}")
            return self.reply(403, {"message": "signature"}, {"x-amzn-errortype": "InvalidSignatureException"})
        self.stream_bedrock()

    def stream_bedrock(self):
        """The answer of both Bedrock fakes: "Hello from bedrock" as ConverseStream events."""
        self.bedrock_stream([
            ("messageStart", {"role": "assistant"}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello from bedrock"}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}, "metrics": {"latencyMs": 9}}),
        ])


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


# --- Bedrock through the AWS default credential chain -------------------------------------

CHAIN_ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {{name: p}}
spec:
  retry: {{attempts: 1, on: ["5xx", "429", "timeout", "connect-error"]}}
  timeouts: {{perAttempt: 5s, firstByte: 5s, total: 10s}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: aws}}
spec:
  model: aws/chain
  policyRef: {{name: p}}
  targets:
    - {{name: bedrock, provider: bedrock, model: "{model}", region: {region}, endpoint: "{base}/bed"}}
"""
ROLE = "arn:aws:iam::123456789012:role/detour-bedrock"
WEB_TOKEN = "projected.WEBIDENTITY.token-value"
POD_TOKEN = "eks-pod-identity-AUTH-token-value"
ISSUED = ("ASIAISSUEDKEY7Q2W", "issued/SECRET/value+3x", "issued-SESSION-token-value")


class ChainFakes(FakeServer):
    """STS, the EKS Pod Identity agent, IMDSv2 and Bedrock; Bedrock checks SigV4 against
    `self.expect` (key id, secret, session token or None)."""

    def __init__(self, expect):
        super().__init__(ChainHandler)
        self.expect = expect


def issued_json():
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    return {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ISSUED[0], "SecretAccessKey": ISSUED[1],
            "Token": ISSUED[2], "Expiration": exp, "LastUpdated": exp, "AccountId": "123456789012"}


class ChainHandler(Handler):
    def do_PUT(self):
        headers = self.headers_lower()
        if self.path == "/latest/api/token" and headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
            self.server.hit("imds-token")
            return self.text(200, "IMDS-SESSION-token", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"})
        return self.text(404, "")

    def do_GET(self):
        headers = self.headers_lower()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/latest/"):
            if headers.get("x-aws-ec2-metadata-token") != "IMDS-SESSION-token":
                self.server.violation(f"imds: {path} without the session token")
                return self.text(401, "")
            for base in ("/latest/meta-data/iam/security-credentials/",
                         "/latest/meta-data/iam/security-credentials-extended/"):
                if path == base:
                    return self.text(200, "detour-role")
                if path == base + "detour-role":
                    self.server.hit("imds-creds")
                    return self.reply(200, issued_json())
            return self.text(404, "")
        if path == "/pod/creds":
            self.server.hit("pod-identity")
            if headers.get("authorization") != POD_TOKEN:
                self.server.violation("pod identity: Authorization is not the token file's content")
                return self.reply(401, {"Message": "unauthorized"})
            return self.reply(200, issued_json())
        return self.text(404, "")

    def do_POST(self):
        raw, headers, path = self.read_request()
        if path.startswith("/sts"):
            self.server.hit("sts")
            form = urllib.parse.parse_qs(raw.decode())
            if (form.get("Action") != ["AssumeRoleWithWebIdentity"] or form.get("RoleArn") != [ROLE]
                    or form.get("WebIdentityToken") != [WEB_TOKEN]):
                self.server.violation(f"sts: form {sorted(form)}")
                return self.text(400, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                                      "<Message>bad token</Message></Error></ErrorResponse>", ctype="text/xml")
            c = issued_json()
            xml = ('<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                   "<AssumeRoleWithWebIdentityResult><Credentials>"
                   f"<AccessKeyId>{c['AccessKeyId']}</AccessKeyId><SecretAccessKey>{c['SecretAccessKey']}</SecretAccessKey>"
                   f"<SessionToken>{c['Token']}</SessionToken><Expiration>{c['Expiration']}</Expiration>"
                   "</Credentials><AssumedRoleUser><AssumedRoleId>AROA:detour</AssumedRoleId>"
                   f"<Arn>{ROLE}</Arn></AssumedRoleUser></AssumeRoleWithWebIdentityResult>"
                   "<ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata>"
                   "</AssumeRoleWithWebIdentityResponse>")
            return self.text(200, xml, ctype="text/xml")
        if path.startswith("/bed/"):
            self.server.hit("bedrock")
            key_id, secret, token = self.server.expect
            problem = sigv4_problem("POST", path, headers, raw, key_id, secret, REGION, token)
            if problem:
                self.server.violation(f"bedrock: SigV4: {problem}")
                return self.reply(403, {"message": "signature"}, {"x-amzn-errortype": "InvalidSignatureException"})
            if path.endswith("/converse"):
                return self.reply(200, {
                    "output": {"message": {"role": "assistant", "content": [{"text": "Hello from bedrock"}]}},
                    "stopReason": "end_turn", "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8},
                    "metrics": {"latencyMs": 10}})
            return self.stream_bedrock()
        return self.text(404, "")


STATIC = ("AKIASTATICKEY4R7T", "static/SECRET/value+9z")


def chain_env(source, tmp, base):
    """The environment of one credential source, nothing of the machine's own AWS setup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp)  # no ~/.aws of the machine
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    if source == "environment":
        env.update(AWS_ACCESS_KEY_ID=STATIC[0], AWS_SECRET_ACCESS_KEY=STATIC[1])
    elif source == "profile":
        (tmp / "config").write_text("[profile detour]\nregion = us-east-1\n")
        (tmp / "credentials").write_text(
            f"[detour]\naws_access_key_id = {STATIC[0]}\naws_secret_access_key = {STATIC[1]}\n")
        env.update(AWS_PROFILE="detour", AWS_CONFIG_FILE=str(tmp / "config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp / "credentials"))
    elif source == "web-identity":
        (tmp / "token").write_text(WEB_TOKEN)
        env.update(AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp / "token"), AWS_ROLE_ARN=ROLE,
                   AWS_ENDPOINT_URL_STS=f"{base}/sts/")
    elif source == "eks-pod-identity":
        (tmp / "pod-token").write_text(POD_TOKEN)
        env.update(AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{base}/pod/creds",
                   AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp / "pod-token"))
    elif source == "imdsv2":
        env.pop("AWS_EC2_METADATA_DISABLED")
        env.update(AWS_EC2_METADATA_SERVICE_ENDPOINT=base + "/")
    return env


@pytest.mark.parametrize("source,fetches", [
    ("environment", None), ("profile", None), ("web-identity", "sts"),
    ("eks-pod-identity", "pod-identity"), ("imdsv2", "imds-creds"),
])
def test_bedrock_signs_with_each_source_of_the_aws_default_chain(tmp_path, source, fetches):
    """A Bedrock target without credentials in its spec signs with what the AWS default chain
    finds — environment, profile, web identity (STS), EKS Pod Identity, IMDSv2 — each against
    its loopback fake; fetched credentials are cached (one fetch for three requests), and no
    key or token is printed."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    expect = (STATIC[0], STATIC[1], None) if fetches is None else ISSUED
    fakes = ChainFakes(expect)
    threading.Thread(target=fakes.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{fakes.server_address[1]}"
    routes = tmp_path / "routes.yaml"
    routes.write_text(CHAIN_ROUTES.format(model=BEDROCK_MODEL, region=REGION, base=base))
    port, admin = free_port(), free_port()
    out, err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen(
        [SIDECAR_BIN, "--routes", str(routes), "--credentials-dir", str(tmp_path),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env=chain_env(source, tmp_path, base),
    )
    bodies = []
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp_path / "stderr")
        for _ in range(3):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps({"model": "aws/chain", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=20) as r:
                    status, body = r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read().decode()
            bodies.append(body)
            assert status == 200, f"{body}\n{(tmp_path / 'stderr').read_text()}"
            assert "Hello from bedrock" in body
    finally:
        stop(proc)
        out.close()
        err.close()
        fakes.shutdown()
    assert not fakes.errors, fakes.errors
    assert fakes.hits.get("bedrock") == 3, fakes.hits
    if fetches:
        assert fakes.hits.get(fetches) == 1, f"credentials are cached: {fakes.hits}"
    printed = (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text() + "".join(bodies)
    for secret in [*STATIC, *ISSUED, WEB_TOKEN, POD_TOKEN]:
        assert secret not in printed


def test_bedrock_without_any_aws_credentials_names_the_chain(tmp_path):
    """No source of the chain has credentials: the attempt is `credentials`, and the 503 says
    the AWS default credential chain found none."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    routes = tmp_path / "routes.yaml"
    routes.write_text(CHAIN_ROUTES.format(model=BEDROCK_MODEL, region=REGION, base="http://127.0.0.1:9"))
    port, admin = free_port(), free_port()
    out, err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen(
        [SIDECAR_BIN, "--routes", str(routes), "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env=chain_env("none", tmp_path, "http://127.0.0.1:9"),
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp_path / "stderr")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": "aws/chain", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=20)
        assert e.value.code == 503
        message = json.loads(e.value.read())["error"]["message"]
        assert "bedrock: credentials (the AWS default credential chain: " in message, message
    finally:
        stop(proc)
        out.close()
        err.close()


# --- Azure OpenAI with Entra ID workload identity -----------------------------------------

AZ_CLIENT = "11111111-2222-3333-4444-555555555555"
AZ_TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
AZ_FEDERATED = "eyJhbGciOiJSUzI1NiJ9.FEDERATED-sa-token.sig"
AZ_ACCESS = "eyJ0eXAiOiJKV1QifQ.ENTRA-ACCESS-token.sig"
AZ_ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: az}}
spec:
  model: az/chat
  targets:
    - name: azure
      provider: azure-openai
      model: gpt4o
      endpoint: "{base}/az"
      allowPlainHttp: true
      credentials: {{azureWorkloadIdentity: {{}}}}
"""


class AzureFakes(FakeServer):
    def __init__(self, expires_in):
        super().__init__(AzureHandler)
        self.expires_in = expires_in


class AzureHandler(Handler):
    def do_POST(self):
        raw, headers, path = self.read_request()
        if path == f"/{AZ_TENANT}/oauth2/v2.0/token":
            self.server.hit("token")
            form = urllib.parse.parse_qs(raw.decode())
            want = {"client_id": [AZ_CLIENT], "scope": ["https://cognitiveservices.azure.com/.default"],
                    "grant_type": ["client_credentials"], "client_assertion": [AZ_FEDERATED],
                    "client_assertion_type": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]}
            if form != want:
                self.server.violation(f"token: form fields {sorted(form)}")
                return self.reply(400, {"error": "invalid_client", "error_codes": [700016]})
            return self.reply(200, {"token_type": "Bearer", "expires_in": self.server.expires_in,
                                    "access_token": AZ_ACCESS})
        if path == "/az/openai/deployments/gpt4o/chat/completions":
            self.server.hit("azure")
            if headers.get("authorization") != f"Bearer {AZ_ACCESS}" or "api-key" in headers:
                self.server.violation("azure: not the Entra access token in Authorization")
                return self.reply(401, {"error": {"code": "401", "message": "unauthorized"}})
            body = json.loads(raw)
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
            if not body.get("stream"):
                return self.reply(200, {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from azure"},
                                                     "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
            self.start_chunked("text/event-stream")
            for delta, finish in [({"role": "assistant", "content": "Hello from azure"}, None), ({}, "stop")]:
                self.chunk(f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': delta, 'finish_reason': finish}]))}\n\n".encode())
            usage = dict(base, choices=[], usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
            self.chunk(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            return self.chunk(b"")
        return self.reply(404, {})


@pytest.mark.parametrize("expires_in,exchanges", [(3600, 1), (120, 3)])
def test_azure_openai_with_entra_workload_identity(tmp_path, expires_in, exchanges):
    """`azureWorkloadIdentity` exchanges the federated token file at the Entra ID token
    endpoint (AZURE_AUTHORITY_HOST, AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)
    and sends the access token as `Authorization: Bearer`; the token is cached (one exchange
    for three requests) unless it is within 5 minutes of expiry, and no token is printed."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    fakes = AzureFakes(expires_in)
    threading.Thread(target=fakes.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{fakes.server_address[1]}"
    (tmp_path / "azure-identity-token").write_text(AZ_FEDERATED)
    routes = tmp_path / "routes.yaml"
    routes.write_text(AZ_ROUTES.format(base=base))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env.update(AZURE_AUTHORITY_HOST=base + "/", AZURE_CLIENT_ID=AZ_CLIENT, AZURE_TENANT_ID=AZ_TENANT,
               AZURE_FEDERATED_TOKEN_FILE=str(tmp_path / "azure-identity-token"))
    port, admin = free_port(), free_port()
    out, err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen(
        [SIDECAR_BIN, "--routes", str(routes), "--credentials-dir", str(tmp_path),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=out, stderr=err, env=env,
    )
    bodies = []
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp_path / "stderr")
        for _ in range(3):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps({"model": "az/chat", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=20) as r:
                body = r.read().decode()
            bodies.append(body)
            assert "Hello from azure" in body
        metrics = get(f"http://127.0.0.1:{admin}/metrics")[1]
    finally:
        stop(proc)
        out.close()
        err.close()
        fakes.shutdown()
    assert not fakes.errors, fakes.errors
    assert fakes.hits == {"token": exchanges, "azure": 3}, fakes.hits
    printed = (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text() + "".join(bodies) + metrics
    for secret in (AZ_FEDERATED, AZ_ACCESS):
        assert secret not in printed
