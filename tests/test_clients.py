"""The real `openai` clients, Python and Node, and the Vercel AI SDK, through the real
sidecar, with the primary failing in each way: 5xx, 429 with Retry-After, a hang past the
first-byte timeout, a reset connection, and a stream that breaks after it started; and a
healthy stream that ends without `data: [DONE]`, as several OpenAI-compatible servers send.

Each failure mode has its own route (primary → a fake stub stuck in that mode, backup → a
healthy stub), so every request really meets the failure. The clients' own retries are off:
what succeeds, succeeds because the sidecar failed over before the first byte. A stream that
breaks after bytes reached the client cannot be failed over; the client must see an error,
never a silent truncation.
"""

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import openai
import pytest

from support import SIDECAR_BIN, fake_upstream, sidecar

ROOT = Path(__file__).resolve().parent
UPSTREAM_BIN = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN", "")
NODE_MODULES = os.environ.get("DETOUR_NODE_MODULES", "")
MODES = ["5xx", "429", "hang", "reset"]

ROUTE = """
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: r-{mode}}}
spec:
  model: m/{mode}
  policyRef: {{name: clients}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-primary, endpoint: "{base}/p-{mode}/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-backup, endpoint: "{base}/ok/v1"}}
"""
POLICY = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: clients}
spec:
  retry: {attempts: 1, on: ["5xx", "429", "timeout", "connect-error"]}
  timeouts: {perAttempt: 3s, firstByte: 500ms, total: 8s}
  health: {failureThreshold: 50}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not (SIDECAR_BIN and UPSTREAM_BIN):
        pytest.skip("needs DETOUR_SIDECAR_BIN and DETOUR_FAKE_UPSTREAM_BIN (run through scripts/test)")
    tmp = tmp_path_factory.mktemp("clients")
    with fake_upstream(tmp) as base:
        for mode in MODES + ["broken-stream"]:
            req = urllib.request.Request(f"{base}/_control/p-{mode}/{mode}", method="PUT")
            urllib.request.urlopen(req, timeout=2).close()
        # A healthy primary whose streams end after finish_reason and usage, without [DONE].
        req = urllib.request.Request(f"{base}/_control/p-nodone/ok?done=0", method="PUT")
        urllib.request.urlopen(req, timeout=2).close()
        routes = POLICY + "".join(ROUTE.format(mode=m, base=base) for m in MODES + ["broken-stream", "nodone"])
        # Every target down: both point at stubs stuck in 5xx.
        routes += ROUTE.format(mode="all-fail", base=base).replace("/ok/v1", "/p-5xx/v1").replace("/p-all-fail/", "/p-5xx/")
        with sidecar(tmp, routes) as sc:
            yield sc


def python_call(sc, model, stream, usage=False):
    client = openai.OpenAI(base_url=f"{sc.base}/v1", api_key="unused", max_retries=0, timeout=15)
    out = {"content": "", "model": None, "usage": None, "headers": {}, "error": None}
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hello"}], stream=stream, **extra)
        out["headers"] = {k: v for k, v in raw.headers.items() if k.startswith("x-detour-")}
        data = raw.parse()
        if stream:
            for chunk in data:
                out["model"] = chunk.model
                if chunk.choices:
                    out["content"] += chunk.choices[0].delta.content or ""
                if chunk.usage:
                    out["usage"] = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
        else:
            out["model"] = data.model
            out["content"] = data.choices[0].message.content
    except openai.OpenAIError as e:
        out["error"] = {"name": type(e).__name__, "message": str(e)}
    return out


def run_node(script, arg):
    node = shutil.which("node")
    if not node or not NODE_MODULES:
        pytest.skip("node and DETOUR_NODE_MODULES are needed (run through scripts/test)")
    done = subprocess.run([node, str(ROOT / "node" / script), json.dumps(arg)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NODE_PATH": NODE_MODULES})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def node_call(sc, model, stream, usage=False):
    return run_node("client.cjs", {"base": f"{sc.base}/v1", "model": model, "stream": stream, "usage": usage})


def ai_sdk_call(sc, model):
    """`streamText` of the Vercel AI SDK with `@ai-sdk/openai` in chat mode; `error` is set
    when `await result.text` rejected."""
    return run_node("ai_sdk.cjs", {"base": f"{sc.base}/v1", "model": model})


CLIENTS = {"python": python_call, "node": node_call}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_sees_a_normal_completion_when_the_primary_fails(env, client, mode, stream):
    """Whatever way the primary fails before its first byte, the client gets the backup's
    normal completion under the backup's model (the model that served), and the headers say a
    fallback happened."""
    out = CLIENTS[client](env, f"m/{mode}", stream)
    assert out["error"] is None, out
    assert out["content"] == "hello from ok", out
    assert out["model"] == "up-backup", out
    assert out["headers"].get("x-detour-target") == "backup", out
    assert out["headers"].get("x-detour-fallback-count") == "1", out
    assert out["headers"].get("x-detour-provider") == "openai-compatible", out


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_sees_an_error_when_a_started_stream_breaks(env, client):
    """A stream that breaks after its first chunk reached the client ends in an error the
    client raises, after the text it already received: never a silent truncation."""
    out = CLIENTS[client](env, "m/broken-stream", True)
    assert out["content"] == "hello from", out
    assert out["error"] is not None, out
    assert out["headers"].get("x-detour-target") == "primary", out


def test_all_targets_failing_is_a_503_listing_the_attempts(env):
    """When every target fails, the Python client raises a 503 APIStatusError whose message
    lists each attempt, with Retry-After set."""
    client = openai.OpenAI(base_url=f"{env.base}/v1", api_key="unused", max_retries=0, timeout=15)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="m/all-fail", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    assert "primary: 5xx (500)" in str(e.value) and "backup: 5xx (500)" in str(e.value), str(e.value)
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_unknown_model_is_not_found_and_models_lists_the_routes(env):
    """An unknown model is the client's NotFoundError naming the known ids; `models.list()`
    returns the route ids."""
    client = openai.OpenAI(base_url=f"{env.base}/v1", api_key="unused", max_retries=0, timeout=15)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "m/5xx" in str(e.value)
    ids = sorted(m.id for m in client.models.list())
    assert ids == sorted(f"m/{m}" for m in MODES + ["broken-stream", "nodone", "all-fail"])


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_completes_a_stream_without_done_with_its_usage(env, client):
    """A healthy stream that ends after its finish_reason and usage without `data: [DONE]`
    is a normal completion for the client: the whole text and the usage, no error."""
    out = CLIENTS[client](env, "m/nodone", True, usage=True)
    assert out["error"] is None, out
    assert out["content"] == "hello from p-nodone", out
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}, out
    assert out["headers"].get("x-detour-target") == "primary", out


def test_ai_sdk_completes_a_stream_without_done_with_its_usage(env):
    """The Vercel AI SDK's `streamText` over a stream without `data: [DONE]`: the text, usage
    and `stop` finish reason arrive, and no error is reported."""
    out = ai_sdk_call(env, "m/nodone")
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["text"] == "hello from p-nodone", out
    assert out["finishReason"] == "stop", out
    assert out["usage"] == {"inputTokens": 5, "outputTokens": 3}, out


def test_ai_sdk_text_rejects_when_a_started_stream_breaks(env):
    """A stream that breaks after its first chunk makes the AI SDK's `await result.text`
    reject: the truncated text never passes for a normal answer."""
    out = ai_sdk_call(env, "m/broken-stream")
    assert out["error"] is not None, out
    assert out["text"] is None, out


def test_ai_sdk_reports_the_fallback_target_and_its_model(env):
    """When the primary fails before the first byte, `streamText` gets the backup's whole
    answer, and the response names the model that served and the target."""
    out = ai_sdk_call(env, "m/5xx")
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["text"] == "hello from ok", out
    assert out["finishReason"] == "stop", out
    assert out["modelId"] == "up-backup", out
    assert out["headers"].get("x-detour-target") == "backup", out
