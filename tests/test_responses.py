"""The client matrix beyond chat completions, through the release binary: the Responses API
(`/v1/responses`, served by translation to chat) from the Python and Node `openai` clients,
the Vercel AI SDK's default `openai(...)` provider (and its chat mode), and LangChain's
`ChatOpenAI` (chat and `use_responses_api`); each plain, streamed with usage, with tool calls
(streamed and not), with the primary failing (503 → backup), with an unknown model, and with
a stream that breaks after it started (the client must raise). Also the provider's request
id and rate-limit headers as the SDKs expose them, and `models.retrieve`.

The clients' own retries are off: what succeeds, succeeds because the sidecar failed over.
"""

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import openai
import pytest

from support import SIDECAR_BIN, sidecar, stop

ROOT = Path(__file__).resolve().parent
UPSTREAM_BIN = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN", "")
NODE_MODULES = os.environ.get("DETOUR_NODE_MODULES", "")

POLICY = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: clients}
spec:
  retry: {attempts: 1, on: ["5xx", "429", "timeout", "connect-error"]}
  timeouts: {perAttempt: 3s, firstByte: 1s, total: 8s}
  health: {failureThreshold: 50}
"""
ROUTE = """
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: {name}}}
spec:
  model: {model}
  policyRef: {{name: clients}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-primary, endpoint: "{base}/{primary}/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-backup, endpoint: "{base}/{backup}/v1"}}
"""
# route id → (primary stub, backup stub); stubs are scripted below.
ROUTES = {
    "m/failover": ("p-5xx", "ok"),
    "m/tools": ("tools", "ok"),
    "m/broken": ("p-broken", "ok"),
}
TOOL = {"type": "function", "name": "get_weather", "description": "weather of a city", "strict": False,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not (SIDECAR_BIN and UPSTREAM_BIN):
        pytest.skip("needs DETOUR_SIDECAR_BIN and DETOUR_FAKE_UPSTREAM_BIN (run through scripts/test)")
    tmp = tmp_path_factory.mktemp("responses")
    with open(tmp / "upstream.log", "wb") as log:
        upstream = subprocess.Popen([UPSTREAM_BIN], stdout=subprocess.PIPE, stderr=log)
    try:
        line = upstream.stdout.readline().decode()
        assert line.startswith("listening on "), line
        base = "http://" + line.split()[-1]
        for stub, mode in [("p-5xx", "5xx"), ("tools", "tool-call"), ("p-broken", "broken-stream")]:
            req = urllib.request.Request(f"{base}/_control/{stub}/{mode}", method="PUT")
            urllib.request.urlopen(req, timeout=2).close()
        routes = POLICY + "".join(
            ROUTE.format(name=m.replace("/", "-"), model=m, base=base, primary=p, backup=b)
            for m, (p, b) in ROUTES.items())
        with sidecar(tmp, routes) as sc:
            yield sc
    finally:
        stop(upstream)


def endpoints(sc):
    """How many audit lines each endpoint has so far."""
    counts = {}
    for line in sc.stdout().splitlines():
        if line.startswith("{"):
            e = json.loads(line).get("endpoint")
            counts[e] = counts.get(e, 0) + 1
    return counts


def served_as(sc, endpoint, call):
    """Runs `call` and asserts it reached the sidecar on `endpoint` (audit lines are written
    every 20 ms)."""
    import time
    before = endpoints(sc).get(endpoint, 0)
    out = call()
    for _ in range(50):
        if endpoints(sc).get(endpoint, 0) > before:
            return out
        time.sleep(0.02)
    raise AssertionError(f"no request on {endpoint}: {endpoints(sc)}")


def client(sc):
    return openai.OpenAI(base_url=f"{sc.base}/v1", api_key="unused", max_retries=0, timeout=15)


def run_node(script, arg):
    node = shutil.which("node")
    if not node or not NODE_MODULES:
        pytest.skip("node and DETOUR_NODE_MODULES are needed (run through scripts/test)")
    done = subprocess.run([node, str(ROOT / "node" / script), json.dumps(arg)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NODE_PATH": NODE_MODULES})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- Python openai ----------------------------------------------------------------------

def test_python_request_id_and_rate_limits_come_from_the_provider_that_served(env):
    """After a failover, `_request_id` is the backup's own request id (the fake provider's
    `req_ok_<n>`), and its rate-limit header reaches the client, for chat and responses."""
    raw = client(env).chat.completions.with_raw_response.create(
        model="m/failover", messages=[{"role": "user", "content": "hi"}])
    chat = raw.parse()
    assert chat._request_id.startswith("req_ok_"), chat._request_id
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-detour-target"] == "backup"
    r = client(env).responses.create(model="m/failover", input="hello")
    assert r._request_id.startswith("req_ok_"), r._request_id


def test_python_models_retrieve(env):
    """`models.retrieve` finds a route id with a slash; an unknown id is NotFoundError."""
    assert client(env).models.retrieve("m/tools").id == "m/tools"
    with pytest.raises(openai.NotFoundError):
        client(env).models.retrieve("m/nope")


def test_python_responses_plain_after_failover(env):
    """`responses.create` gets the backup's answer when the primary fails: `output_text`, the
    model that served, usage, status completed."""
    r = client(env).responses.create(model="m/failover", input="hello", instructions="be brief")
    assert r.output_text == "hello from ok"
    assert r.model == "up-backup"
    assert r.status == "completed"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (5, 3)


def test_python_responses_stream_with_usage(env):
    """A streamed response: the typed events from `response.created` to `response.completed`,
    the text deltas making the whole text, and the usage in the completed response."""
    kinds, text, final = [], "", None
    with client(env).responses.create(model="m/failover", input="hello", stream=True) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            if ev.type == "response.completed":
                final = ev.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert text == "hello from ok"
    assert final.output_text == "hello from ok"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_python_responses_tool_call(env, stream):
    """A tool call comes back as a `function_call` item with its call id, name and arguments,
    streamed or not; the tools went upstream as chat function tools."""
    c = client(env)
    if stream:
        args, final = "", None
        for ev in c.responses.create(model="m/tools", input="weather?", tools=[TOOL], stream=True):
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
            if ev.type == "response.completed":
                final = ev.response
        assert args == '{"city":"Paris"}'
        r = final
    else:
        r = c.responses.create(model="m/tools", input="weather?", tools=[TOOL])
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(o.name, o.arguments, o.call_id) for o in calls] == [("get_weather", '{"city":"Paris"}', "call_fake_1")]
    # The next turn sends the call and its output back: served (translated) without state.
    follow = c.responses.create(model="m/failover", tools=[TOOL], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_fake_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_fake_1", "output": "sunny"},
    ])
    assert follow.output_text == "hello from ok"


def test_python_responses_unknown_model_and_stateful_requests(env):
    """An unknown model is NotFoundError; `previous_response_id` and `store: true` are a
    BadRequestError that says why."""
    c = client(env)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="m/failover", input="hi", previous_response_id="resp_1")
    assert "previous_response_id" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="m/failover", input="hi", store=True)


def test_python_responses_stream_break_raises(env):
    """A stream that breaks after its first event makes the client raise, after the text it
    already received."""
    text = ""
    with pytest.raises(Exception) as e:
        for ev in client(env).responses.create(model="m/broken", input="hello", stream=True):
            if ev.type == "response.output_text.delta":
                text += ev.delta
    assert text == "hello from", (text, e.value)


# ---- Node openai --------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_node_responses(env, stream):
    """The Node client's `responses.create` after a failover: text, model, usage, its
    `request_id` from the backup; tool calls streamed and not."""
    out = run_node("responses.cjs", {"base": f"{env.base}/v1", "model": "m/failover", "stream": stream})
    assert out["error"] is None, out
    assert out["text"] == "hello from ok", out
    assert out["model"] == "up-backup" and out["status"] == "completed", out
    assert out["usage"] == {"input": 5, "output": 3}, out
    assert (out["requestId"] or "").startswith("req_ok_"), out
    assert out["headers"]["x-detour-target"] == "backup", out
    out = run_node("responses.cjs", {"base": f"{env.base}/v1", "model": "m/tools", "stream": stream, "tools": True})
    assert out["error"] is None, out
    assert out["toolCalls"] == [{"name": "get_weather", "arguments": '{"city":"Paris"}', "callId": "call_fake_1"}], out


def test_node_responses_errors(env):
    """Node: an unknown model and a broken stream are errors the caller sees."""
    out = run_node("responses.cjs", {"base": f"{env.base}/v1", "model": "nope", "stream": False})
    assert out["error"] and out["error"]["name"] == "NotFoundError", out
    out = run_node("responses.cjs", {"base": f"{env.base}/v1", "model": "m/broken", "stream": True})
    assert out["error"] is not None, out
    assert out["text"] == "hello from", out


# ---- Vercel AI SDK --------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["responses", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_ai_sdk(env, api, stream):
    """The AI SDK's default provider (Responses) and its chat mode: text after a failover with
    usage and the model that served, and a tool call (no `execute`: returned to the caller)."""
    arg = {"base": f"{env.base}/v1", "model": "m/failover", "api": api, "stream": stream}
    out = served_as(env, "responses" if api == "responses" else "chat/completions",
                    lambda: run_node("ai_sdk_models.cjs", arg))
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["text"] == "hello from ok", out
    assert out["finishReason"] == "stop", out
    assert out["usage"] == {"inputTokens": 5, "outputTokens": 3}, out
    assert out["modelId"] == "up-backup", out
    assert out["headers"].get("x-detour-target") == "backup", out
    out = run_node("ai_sdk_models.cjs", {**arg, "model": "m/tools", "tools": True})
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["finishReason"] == "tool-calls", out
    assert out["toolCalls"] == [{"name": "get_weather", "input": {"city": "Paris"}, "id": "call_fake_1"}], out


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_ai_sdk_tool_loop_on_the_default_provider(env, stream):
    """A two-step tool loop on the AI SDK's default provider: the second step refers to the
    first step's function call by item id (`item_reference`), which the sidecar answered with
    and sends upstream as the call itself, so the loop runs without `store: false`."""
    out = run_node("ai_sdk_models.cjs", {"base": f"{env.base}/v1", "model": "m/tools", "api": "responses",
                                         "stream": stream, "loop": True})
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["steps"] == 2, out


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_ai_sdk_errors(env, api):
    """AI SDK: an unknown model rejects; a stream that breaks after it started rejects
    `await result.text` (never a truncated text passed off as complete)."""
    out = run_node("ai_sdk_models.cjs", {"base": f"{env.base}/v1", "model": "nope", "api": api, "stream": False})
    assert out["error"] is not None and "nope" in out["error"]["message"], out
    out = run_node("ai_sdk_models.cjs", {"base": f"{env.base}/v1", "model": "m/broken", "api": api, "stream": True})
    assert out["error"] is not None or out["streamErrors"], out
    assert out["text"] in (None, ""), out


# ---- LangChain ------------------------------------------------------------------------------

def langchain(sc, model, responses):
    lc = pytest.importorskip("langchain_openai")
    return lc.ChatOpenAI(model=model, base_url=f"{sc.base}/v1", api_key="unused", max_retries=0, timeout=15,
                         use_responses_api=responses, stream_usage=True)


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain(env, responses):
    """LangChain's `ChatOpenAI`, on chat completions and on the Responses API: invoke and
    stream after a failover (text, usage), and a bound tool's call."""
    llm = langchain(env, "m/failover", responses)
    msg = served_as(env, "responses" if responses else "chat/completions", lambda: llm.invoke("hello"))
    assert msg.text == "hello from ok", msg
    assert msg.usage_metadata["input_tokens"] == 5 and msg.usage_metadata["output_tokens"] == 3, msg
    chunks = list(llm.stream("hello"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.text == "hello from ok", chunks
    assert total.usage_metadata and total.usage_metadata["output_tokens"] == 3, total
    tools = langchain(env, "m/tools", responses).bind_tools([TOOL])
    msg = tools.invoke("weather?")
    assert [(c["name"], c["args"], c["id"]) for c in msg.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "call_fake_1")], msg
    streamed = None
    for c in tools.stream("weather?"):
        streamed = c if streamed is None else streamed + c
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("get_weather", {"city": "Paris"})], streamed


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_errors(env, responses):
    """LangChain: an unknown model raises NotFoundError; a broken stream raises."""
    with pytest.raises(openai.NotFoundError):
        langchain(env, "nope", responses).invoke("hello")
    with pytest.raises(Exception):
        for _ in langchain(env, "m/broken", responses).stream("hello"):
            pass
