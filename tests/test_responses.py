"""The client matrix beyond chat completions, through the release binary: the Responses API
(`/v1/responses`, served by translation to chat, and passed through to targets with the
`responses` capability: see "Native pass-through" below) from the Python and Node `openai` clients,
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
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="m/failover", input="hi", store=True)
    assert "`responses` capability" in str(e.value)


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


# ---- Native pass-through -------------------------------------------------------------------
# Targets with the `responses` capability get the client's Responses request itself. The fake
# below is such a provider: each stub is one provider account that stores its responses and
# items (`previous_response_id` and `item_reference` resolve only where they were created, a
# 404 / 400 elsewhere, as OpenAI answers), scripted by its name:
#   `*-5xx-once`: the first request is a 503; `*-fail-start`: streams fail right after
#   `response.created`; `*-tool`: a `get_weather` call, then a text with the tool's output.

import http.server
import itertools
import threading
import time as _time


class NativeAccounts:
    def __init__(self):
        self.lock = threading.Lock()
        self.responses, self.items, self.hits, self.bodies = {}, {}, {}, {}
        self.ids = itertools.count(1)

    def hit(self, stub, body):
        with self.lock:
            self.hits[stub] = self.hits.get(stub, 0) + 1
            self.bodies.setdefault(stub, []).append(body)
            return self.hits[stub]


def _native_handler(accounts):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send_json(self, status, obj, request_id):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-request-id", request_id)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            stub, _, rest = self.path.strip("/").partition("/")
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            body = json.loads(raw)
            hit = accounts.hit(stub, raw)
            rid = f"req_{stub}_{hit}"
            if rest != "v1/responses":
                return self.send_json(404, {"error": {"message": f"no {rest}", "type": "invalid_request_error"}}, rid)
            if stub.endswith("-5xx-once") and hit == 1:
                return self.send_json(503, {"error": {"message": "overloaded", "type": "server_error"}}, rid)
            prev = body.get("previous_response_id")
            with accounts.lock:
                if prev and (stub, prev) not in accounts.responses:
                    return self.send_json(404, {"error": {"message": f"Previous response with id '{prev}' not found.",
                                                          "type": "invalid_request_error", "param": "previous_response_id",
                                                          "code": "previous_response_not_found"}}, rid)
                inputs = body.get("input") if isinstance(body.get("input"), list) else []
                for item in inputs:
                    if item.get("type") == "item_reference" and (stub, item.get("id")) not in accounts.items:
                        return self.send_json(400, {"error": {"message": f"Item with id '{item.get('id')}' not found.",
                                                              "type": "invalid_request_error", "param": "input"}}, rid)
                n = next(accounts.ids)
            outputs = [o.get("output") for o in inputs if o.get("type") == "function_call_output"]
            if stub.endswith("-tool") and not outputs:
                item = {"type": "function_call", "id": f"fc_{stub}_{n}", "call_id": f"call_{stub}_{n}",
                        "name": "get_weather", "arguments": '{"city":"Paris"}', "status": "completed"}
            else:
                text = f"native {stub}" + (f": {outputs[-1]}" if outputs else "")
                item = {"type": "message", "id": f"msg_{stub}_{n}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
            resp = {"id": f"resp_{stub}_{n}", "object": "response", "created_at": int(_time.time()), "status": "completed",
                    "error": None, "incomplete_details": None, "model": body.get("model"), "output": [item],
                    "parallel_tool_calls": True, "tools": body.get("tools", []), "store": body.get("store", True),
                    "previous_response_id": prev,
                    "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}}
            with accounts.lock:
                accounts.responses[(stub, resp["id"])] = resp
                accounts.items[(stub, item["id"])] = item
            if not body.get("stream"):
                return self.send_json(200, resp, rid)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("x-request-id", rid)
            self.send_header("connection", "close")
            self.end_headers()
            seq = itertools.count()

            def event(kind, **fields):
                data = json.dumps({"type": kind, "sequence_number": next(seq), **fields})
                self.wfile.write(f"event: {kind}\ndata: {data}\n\n".encode())
                self.wfile.flush()
                _time.sleep(0.002)

            start = {**resp, "status": "in_progress", "output": [], "usage": None}
            event("response.created", response=start)
            event("response.in_progress", response=start)
            if stub.endswith("-fail-start"):
                return event("response.failed", response={**start, "status": "failed",
                                                          "error": {"code": "server_error", "message": "boom"}})
            if item["type"] == "function_call":
                event("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
                for part in ('{"city":', '"Paris"}'):
                    event("response.function_call_arguments.delta", item_id=item["id"], output_index=0, delta=part)
                event("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                      arguments=item["arguments"])
            else:
                text = item["content"][0]["text"]
                event("response.output_item.added", output_index=0,
                      item={**item, "status": "in_progress", "content": []})
                event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": []})
                for word in text.split(" "):
                    event("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0,
                          delta=word if word == text.split(" ")[0] else " " + word, logprobs=[])
                event("response.output_text.done", item_id=item["id"], output_index=0, content_index=0, text=text,
                      logprobs=[])
                event("response.content_part.done", item_id=item["id"], output_index=0, content_index=0,
                      part=item["content"][0])
            event("response.output_item.done", output_index=0, item=item)
            event("response.completed", response=resp)
            self.close_connection = True

    return Handler


NATIVE_ROUTE = """
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: {name}}}
spec:
  model: {model}
  policyRef: {{name: clients}}
  targets:
{targets}"""
NATIVE_CAPS = "[tools, json_schema, vision, streaming, responses]"
# route id → [(target name, "native" or "chat", stub)], primary first.
NATIVE_ROUTES = {
    "n/plain": [("acct", "native", "acct-plain")],
    "n/tools": [("acct", "native", "acct-tool")],
    "n/pin": [("a", "native", "acct-a-5xx-once"), ("b", "native", "acct-b")],
    "n/to-chat": [("native", "native", "acct-c-5xx-once"), ("chat", "chat", "ok")],
    "n/from-chat": [("chat", "chat", "p-5xx"), ("native", "native", "acct-d")],
    "n/fail-start": [("native", "native", "acct-e-fail-start"), ("chat", "chat", "ok")],
    "n/chat-only": [("chat", "chat", "ok")],
}


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A sidecar whose routes mix native targets (the fake above) and translated ones (the
    fake upstream's chat completions)."""
    if not (SIDECAR_BIN and UPSTREAM_BIN):
        pytest.skip("needs DETOUR_SIDECAR_BIN and DETOUR_FAKE_UPSTREAM_BIN (run through scripts/test)")
    tmp = tmp_path_factory.mktemp("responses-native")
    accounts = NativeAccounts()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _native_handler(accounts))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with open(tmp / "upstream.log", "wb") as log:
        upstream = subprocess.Popen([UPSTREAM_BIN], stdout=subprocess.PIPE, stderr=log)
    try:
        line = upstream.stdout.readline().decode()
        assert line.startswith("listening on "), line
        chat_base = "http://" + line.split()[-1]
        req = urllib.request.Request(f"{chat_base}/_control/p-5xx/5xx", method="PUT")
        urllib.request.urlopen(req, timeout=2).close()
        native_base = f"http://127.0.0.1:{server.server_address[1]}"
        routes = POLICY
        for model, targets in NATIVE_ROUTES.items():
            lines = ""
            for name, kind, stub in targets:
                base = native_base if kind == "native" else chat_base
                caps = f", capabilities: {NATIVE_CAPS}" if kind == "native" else ""
                lines += (f"    - {{name: {name}, provider: openai-compatible, model: up-{name}, "
                          f"endpoint: \"{base}/{stub}/v1\"{caps}}}\n")
            routes += NATIVE_ROUTE.format(name=model.replace("/", "-"), model=model, targets=lines)
        with sidecar(tmp, routes) as sc:
            sc.accounts = accounts
            yield sc
    finally:
        stop(upstream)
        server.shutdown()
        server.server_close()


def test_native_python_plain_and_streamed(native):
    """`responses.create` against a native target: the provider's own Response (its id, text,
    usage, request id), plain and streamed through `response.completed`; the provider got the
    client's body with only `model` replaced."""
    raw = client(native).responses.with_raw_response.create(model="n/plain", input="hello", store=False)
    r = raw.parse()
    assert r.output_text == "native acct-plain"
    assert r.id.startswith("resp_acct-plain_") and r._request_id.startswith("req_acct-plain_")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (9, 4)
    assert raw.headers["x-detour-target"] == "acct"
    sent = json.loads(native.accounts.bodies["acct-plain"][-1])
    assert sent == {"model": "up-acct", "input": "hello", "store": False}
    kinds, text, final = [], "", None
    with client(native).responses.create(model="n/plain", input="hello", stream=True) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            if ev.type == "response.completed":
                final = ev.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert text == "native acct-plain" and final.output_text == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    m = native.metrics()
    assert 'detour_tokens_total{kind="prompt",route="n/plain",target="acct"} 18' in m, m


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_native_python_tool_call(native, stream):
    """A native tool call: the provider's `function_call` item, streamed or not, and the next
    turn (the call's output after `previous_response_id`) at the same account."""
    c = client(native)
    if stream:
        args, r = "", None
        for ev in c.responses.create(model="n/tools", input="weather?", tools=[TOOL], stream=True):
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
            if ev.type == "response.completed":
                r = ev.response
        assert args == '{"city":"Paris"}'
    else:
        r = c.responses.create(model="n/tools", input="weather?", tools=[TOOL])
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(o.name, o.arguments) for o in calls] == [("get_weather", '{"city":"Paris"}')]
    follow = c.responses.create(model="n/tools", tools=[TOOL], previous_response_id=r.id, input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}])
    assert follow.output_text == "native acct-tool: sunny"


def test_native_previous_response_id_is_pinned(native):
    """A response created at the backup account (the primary answered 503) is continued there:
    the request naming it goes to that target only, though the primary is healthy again (it
    would answer 404: the response is not in its account)."""
    c = client(native)
    first = c.responses.with_raw_response.create(model="n/pin", input="hello", store=True)
    assert first.headers["x-detour-target"] == "b" and first.headers["x-detour-fallback-count"] == "1"
    hits_a = native.accounts.hits["acct-a-5xx-once"]
    for stream in (False, True):
        raw = c.responses.with_raw_response.create(model="n/pin", input="more", stream=stream,
                                                   previous_response_id=first.parse().id)
        assert raw.headers["x-detour-target"] == "b"
        r = raw.parse()
        if stream:
            assert [ev.type for ev in r][-1] == "response.completed"
        else:
            assert r.output_text == "native acct-b"
    assert native.accounts.hits["acct-a-5xx-once"] == hits_a
    # An id this sidecar never served takes the native chain: the primary's own 404.
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="n/pin", input="x", previous_response_id="resp_elsewhere")


def test_native_failover_across_a_mixed_chain(native):
    """Native → translated and translated → native, plain and streamed; a native stream that
    fails right after `response.created` fails over before the client saw anything; a stateful
    request on a route without a native target is a 400 naming the capability."""
    c = client(native)
    r = c.responses.with_raw_response.create(model="n/to-chat", input="hello")
    assert r.headers["x-detour-target"] == "chat" and r.parse().output_text == "hello from ok"
    r = c.responses.with_raw_response.create(model="n/from-chat", input="hello")
    assert r.headers["x-detour-target"] == "native" and r.parse().output_text == "native acct-d"
    for model, text in [("n/from-chat", "native acct-d"), ("n/fail-start", "hello from ok")]:
        got, kinds = "", []
        for ev in c.responses.create(model=model, input="hello", stream=True):
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                got += ev.delta
        assert got == text and kinds.count("response.created") == 1 and kinds[-1] == "response.completed", kinds
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="n/chat-only", input="hi", previous_response_id="resp_1")
    assert "`responses` capability" in str(e.value)


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_native_ai_sdk_default_provider(native, stream):
    """The Vercel AI SDK's default provider against a native target: text, usage, and a
    two-step tool loop whose second step refers to the provider's own items (stored there)."""
    arg = {"base": f"{native.base}/v1", "model": "n/plain", "api": "responses", "stream": stream}
    out = run_node("ai_sdk_models.cjs", arg)
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["text"] == "native acct-plain", out
    assert out["usage"] == {"inputTokens": 9, "outputTokens": 4}, out
    assert out["headers"].get("x-detour-target") == "acct", out
    out = run_node("ai_sdk_models.cjs", {**arg, "model": "n/tools", "loop": True})
    assert out["error"] is None and out["streamErrors"] == [], out
    assert out["steps"] == 2 and out["text"].startswith("native acct-tool: "), out
    assert "sunny in Paris" in out["text"], out


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_native_node_client(native, stream):
    """The Node `openai` client against a native target: the provider's text, usage and
    request id."""
    out = run_node("responses.cjs", {"base": f"{native.base}/v1", "model": "n/plain", "stream": stream})
    assert out["error"] is None, out
    assert out["text"] == "native acct-plain" and out["status"] == "completed", out
    assert out["usage"] == {"input": 9, "output": 4}, out
    assert out["requestId"].startswith("req_acct-plain_"), out
