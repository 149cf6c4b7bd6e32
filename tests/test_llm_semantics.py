"""Failover semantics that fit LLM calls, proven through the real sidecar binary against the
scripted fake upstream: one scenario per behaviour, each asserting what the client received
(status, bytes, `[DONE]` or not, whether the HTTP body ended cleanly), what each upstream stub
saw (requests and their timing), the breaker and the metrics.

Every scenario starts its own sidecar (fresh breakers and metrics) on routes whose targets
point at stubs named after the scenario, so no scenario sees another's traffic. Timeouts are
shortened so the file runs fast; one scenario streams for longer than the old 30 s
per-attempt bound under the built-in defaults, in real time.
"""

import json
import os
import re
import socket
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from support import SIDECAR_BIN, fake_upstream, sidecar

UPSTREAM_BIN = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN", "")

# Short deadlines for the scenarios that are not about the defaults.
FAST_TIMEOUTS = {"firstByte": "400ms", "streamIdle": "600ms", "perAttempt": "3s", "total": "6s"}
RETRY_ON = ["5xx", "429", "timeout", "connect-error"]


class Upstream:
    """The fake upstream process and its control API."""

    def __init__(self, base):
        self.base = base

    def script(self, stub, mode, **params):
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"{self.base}/_control/{stub}/{mode}" + (f"?{query}" if query else "")
        urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=2).close()

    def requests(self, stub):
        with urllib.request.urlopen(f"{self.base}/_requests?stub={stub}", timeout=2) as r:
            return json.loads(r.read())

    def target(self, name, stub, **extra):
        return {"name": name, "provider": "openai-compatible", "model": f"up-{name}",
                "endpoint": f"{self.base}/{stub}/v1", **extra}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    if not (SIDECAR_BIN and UPSTREAM_BIN):
        pytest.skip("needs DETOUR_SIDECAR_BIN and DETOUR_FAKE_UPSTREAM_BIN (run through scripts/test)")
    tmp = tmp_path_factory.mktemp("llm-upstream")
    with fake_upstream(tmp) as base:
        yield Upstream(base)


def manifest(policies, routes):
    """Standalone YAML (JSON documents are YAML): `policies` maps a policy name to its spec,
    `routes` maps a model id to `(policy name, targets)`."""
    docs = [{"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": name},
             "spec": spec} for name, spec in policies.items()]
    for i, (model, (policy, targets)) in enumerate(routes.items()):
        spec = {"model": model, "targets": targets}
        if policy:
            spec["policyRef"] = {"name": policy}
        docs.append({"apiVersion": "detour.dev/v1alpha1", "kind": "ModelRoute",
                     "metadata": {"name": f"route-{i}"}, "spec": spec})
    return "\n---\n".join(json.dumps(d) for d in docs) + "\n"


def policy(**spec):
    """A policy spec with the fast timeouts, few retries and a breaker that does not trip
    unless the scenario sets one."""
    base = {"timeouts": dict(FAST_TIMEOUTS), "retry": {"attempts": 1, "on": list(RETRY_ON)},
            "health": {"failureThreshold": 50}}
    for k, v in spec.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return base


def text_of(stub, chunks=3):
    """The answer text the fake upstream's stub sends in `chunks` pieces."""
    words = ["hello", " from", f" {stub}"] + [f" {i}" for i in range(3, chunks)]
    return "".join(words[:chunks])


@dataclass
class Reply:
    """One HTTP/1.1 exchange as the client saw it on the wire."""
    status: int
    headers: dict
    body: bytes
    # The body ended as HTTP says a complete body ends (the last chunk, or the declared length).
    complete: bool
    elapsed: float
    # (seconds since the request was sent, payload) of each SSE `data:` line.
    events: list = field(default_factory=list)

    def json(self):
        return json.loads(self.body)

    def data(self):
        return [d for _, d in self.events]

    def chunks(self):
        """The decoded JSON events (not `[DONE]`), undecodable ones left out."""
        out = []
        for d in self.data():
            if d == "[DONE]":
                continue
            try:
                out.append(json.loads(d))
            except ValueError:
                pass
        return out

    def content(self):
        return "".join((c.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                       for c in self.chunks() if c.get("choices"))

    def errors(self):
        return [c for c in self.chunks() if "error" in c]


def post(sc, model, stream, timeout=20.0, headers=None, extra=None):
    """POSTs a chat completion over a raw socket and reads to the end of the connection, so
    an abnormally ended body (no last chunk) is seen as such instead of being papered over."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream,
            **(extra or {})}
    raw = json.dumps(body).encode()
    head = [f"POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{sc.port}",
            "Content-Type: application/json", f"Content-Length: {len(raw)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    start = time.monotonic()
    s = socket.create_connection(("127.0.0.1", sc.port), timeout=timeout)
    s.settimeout(timeout)
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
    arrivals = []  # (t, bytes)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            arrivals.append((time.monotonic() - start, b))
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        s.close()
    elapsed = time.monotonic() - start
    wire = b"".join(b for _, b in arrivals)
    head_end = wire.find(b"\r\n\r\n")
    assert head_end >= 0, f"no response head: {wire[:200]!r}"
    lines = wire[:head_end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    # When each byte of the wire arrived, to time SSE events.
    times, pos = [], 0
    for t, b in arrivals:
        times.append((pos + len(b), t))
        pos += len(b)

    def arrival(offset):
        return next(t for end, t in times if offset < end)

    rest, base = wire[head_end + 4:], head_end + 4
    payload, offsets, complete = bytearray(), [], False
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        i = 0
        while True:
            nl = rest.find(b"\r\n", i)
            if nl < 0:
                break
            size = int(rest[i:nl].split(b";")[0], 16)
            if size == 0:
                complete = rest[nl + 2:nl + 4] == b"\r\n"
                break
            chunk = rest[nl + 2:nl + 2 + size]
            if len(chunk) < size or rest[nl + 2 + size:nl + 4 + size] != b"\r\n":
                payload += chunk
                offsets += [base + nl + 2 + k for k in range(len(chunk))]
                break
            payload += chunk
            offsets += [base + nl + 2 + k for k in range(size)]
            i = nl + 4 + size
    else:
        payload += rest
        offsets = [base + k for k in range(len(rest))]
        declared = hdrs.get("content-length")
        complete = declared is not None and int(declared) == len(rest)
    events, i = [], 0
    text = bytes(payload)
    while True:
        j = text.find(b"\n\n", i)
        if j < 0:
            break
        for line in text[i:j].split(b"\n"):
            if line.startswith(b"data:"):
                events.append((arrival(offsets[j]), line[5:].strip().decode(errors="replace")))
        i = j + 2
    return Reply(status, hdrs, text, complete, elapsed, events)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(sc, name, **labels):
    """The sum of a metric's samples whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in sc.metrics().splitlines():
        m = SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def breaker(sc, route, target):
    """The target's breaker: 0 closed, 1 half-open, 2 open."""
    return metric(sc, "detour_breaker_state", route=route, target=target)


def audit(sc, reply):
    """The audit line of one request (found by its `x-detour-request-id`; the audit writer
    is asynchronous, so it may take a moment to appear)."""
    rid = reply.headers["x-detour-request-id"]
    deadline = time.monotonic() + 3
    while True:
        for line in sc.stdout().splitlines():
            if rid in line:
                return json.loads(line)
        assert time.monotonic() < deadline, f"no audit line for {rid}"
        time.sleep(0.02)


def assert_clean_stream(r, content, done=True):
    """A complete stream: every piece of the text, `[DONE]` last, the body ended cleanly."""
    assert r.status == 200, (r.status, r.body[:500])
    assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
    assert r.content() == content, r.data()
    assert not r.errors(), r.data()
    assert (r.data()[-1:] == ["[DONE]"]) == done, r.data()[-3:]
    assert r.complete, "the body did not end with its last chunk"


def assert_broken_stream(r, content):
    """A broken stream: the text so far, one error event, no `[DONE]`, and the body ended
    abnormally (no last chunk) so a client that ignores error events still sees a failure."""
    assert r.status == 200, (r.status, r.body[:500])
    assert r.content() == content, r.data()
    assert len(r.errors()) == 1, r.data()
    assert "[DONE]" not in r.data(), r.data()
    assert "error" in json.loads(r.data()[-1]), r.data()
    assert not r.complete, "a broken stream's body must not end with its last chunk"


# 1. Long streams are not cut ------------------------------------------------------------

def test_01_a_healthy_stream_outlives_per_attempt_and_total(upstream, tmp_path):
    """A committed stream is bounded by the gap between events, not by `perAttempt` or
    `total`: a 2.5 s stream under a 1 s per-attempt and total deadline arrives whole,
    charged to nobody; the client's own `x-detour-timeout-ms` still ends it, without charging
    the healthy target. The upstream's wait for its first event is not the sidecar's overhead."""
    upstream.script("s01", "ok", chunks=25, interval_ms=100)
    routes = manifest({"p": policy(timeouts={"perAttempt": "1s", "total": "1s", "firstByte": "400ms",
                                             "streamIdle": "600ms"}, health={"failureThreshold": 1})},
                      {"llm/long": ("p", [upstream.target("primary", "s01"), upstream.target("backup", "s01b")])})
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/long", True)
        assert_clean_stream(r, text_of("s01", 25))
        assert r.elapsed >= 2.5, r.elapsed
        assert r.headers["x-detour-target"] == "primary"
        seen = upstream.requests("s01")
        assert [h["end"] for h in seen] == ["completed"], seen
        assert upstream.requests("s01b") == []
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 1
        assert metric(sc, "detour_attempts_total", target="primary") == 1
        assert metric(sc, "detour_stream_errors_total") == 0
        assert breaker(sc, "llm/long", "primary") == 0
        # The first event came after 100 ms: upstream time, not overhead.
        assert audit(sc, r)["overhead_us"] < 50_000, audit(sc, r)

        # The client's own deadline still bounds a committed stream, and says nothing about
        # the target's health: a 1-failure breaker stays closed.
        r = post(sc, "llm/long", True, headers={"x-detour-timeout-ms": "1200"})
        assert_broken_stream(r, r.content())
        assert 1.1 <= r.elapsed < 2.0, r.elapsed
        assert 8 <= len(r.content().split()) < 20, r.content()
        assert breaker(sc, "llm/long", "primary") == 0
        assert post(sc, "llm/long", True, headers={"x-detour-timeout-ms": "300"}).headers["x-detour-target"] == "primary"


def test_01_realtime_a_stream_longer_than_30s_completes_under_the_defaults(upstream, tmp_path):
    """Under the built-in policy, a healthy stream of 33 s (one chunk a second, longer than
    the old 30 s per-attempt bound) reaches the client whole, in real time."""
    upstream.script("s01rt", "ok", chunks=31, interval_ms=1000)
    routes = manifest({}, {"llm/realtime": (None, [upstream.target("primary", "s01rt")])})
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/realtime", True, timeout=60)
        assert_clean_stream(r, text_of("s01rt", 31))
        assert r.elapsed > 31, r.elapsed
        # Chunks arrived as they were produced, not buffered to the end.
        first_content = r.events[0][0]
        assert first_content < 2.5, r.events[:3]
        assert [h["end"] for h in upstream.requests("s01rt")] == ["completed"]
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 1
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "timeout"}) == 0


# 2. Timeouts move on at once; 5xx keeps its same-target retries ---------------------------

def test_02_a_silent_target_costs_one_first_byte_then_the_next_target_serves(upstream, tmp_path):
    """With `retry.attempts: 3`, a target that never sends its first event is left after one
    `firstByte` (not three) and the next target gets the request at once; a 5xx is still
    retried on the same target, and `sameTarget: [timeout]` opts timeouts back in."""
    upstream.script("s02hang", "hang")
    upstream.script("s02hang2", "hang")
    upstream.script("s02err", "5xx")
    fast = policy(retry={"attempts": 3, "backoff": {"base": "20ms", "max": "20ms", "jitter": 0}})
    optin = policy(retry={"attempts": 3, "backoff": {"base": "20ms", "max": "20ms", "jitter": 0},
                          "sameTarget": ["5xx", "connect-error", "timeout"]})
    routes = manifest({"p": fast, "optin": optin}, {
        "llm/silent": ("p", [upstream.target("primary", "s02hang"), upstream.target("backup", "s02ok")]),
        "llm/err": ("p", [upstream.target("primary", "s02err"), upstream.target("backup", "s02ok2")]),
        "llm/optin": ("optin", [upstream.target("primary", "s02hang2"), upstream.target("backup", "s02ok3")]),
    })
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/silent", True)
        assert_clean_stream(r, text_of("s02ok"))
        assert r.headers["x-detour-target"] == "backup"
        hung, served = upstream.requests("s02hang"), upstream.requests("s02ok")
        assert len(hung) == 1 and len(served) == 1, (hung, served)
        gap = served[0]["at_ms"] - hung[0]["at_ms"]
        assert 350 <= gap < 800, f"the backup was asked {gap:.0f} ms after the silent primary"
        assert r.elapsed < 1.2, r.elapsed
        assert metric(sc, "detour_attempts_total", route="llm/silent", target="primary") == 1
        assert metric(sc, "detour_fallbacks_total", route="llm/silent", **{"from": "primary", "to": "backup"}) == 1

        r = post(sc, "llm/err", True)
        assert_clean_stream(r, text_of("s02ok2"))
        assert len(upstream.requests("s02err")) == 3
        assert metric(sc, "detour_attempts_total", route="llm/err", target="primary", **{"class": "5xx"}) == 3

        r = post(sc, "llm/optin", True)
        assert_clean_stream(r, text_of("s02ok3"))
        hung = upstream.requests("s02hang2")
        assert len(hung) == 3, hung
        assert upstream.requests("s02ok3")[0]["at_ms"] - hung[0]["at_ms"] >= 3 * 400


# 3. A stream that ends after its finish_reason without [DONE] is complete -----------------

def test_03_a_stream_without_done_is_complete_and_keeps_its_usage(upstream, tmp_path):
    """A body that ends cleanly after `finish_reason` and usage but without `data: [DONE]`
    reaches the client with its usage and a `[DONE]` the sidecar adds; ten of them in a row
    are ten successes and leave a 3-failure breaker closed."""
    upstream.script("s03", "ok", done=0, usage=1, chunks=4)
    routes = manifest({"p": policy(health={"failureThreshold": 3})},
                      {"llm/nodone": ("p", [upstream.target("primary", "s03"), upstream.target("backup", "s03b")])})
    with sidecar(tmp_path, routes) as sc:
        for _ in range(10):
            r = post(sc, "llm/nodone", True)
            assert_clean_stream(r, text_of("s03", 4))
            assert r.headers["x-detour-target"] == "primary"
            usage = [c["usage"] for c in r.chunks() if c.get("usage")]
            assert usage == [{"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}], r.data()
            assert [c["choices"][0]["finish_reason"] for c in r.chunks() if c.get("choices")][-1] == "stop"
        assert [h["end"] for h in upstream.requests("s03")] == ["completed"] * 10
        assert upstream.requests("s03b") == []
        assert breaker(sc, "llm/nodone", "primary") == 0
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 10
        assert metric(sc, "detour_attempts_total", target="primary") == 10
        assert metric(sc, "detour_stream_errors_total") == 0
        assert metric(sc, "detour_tokens_total", target="primary", kind="completion") == 40
        line = audit(sc, r)
        assert line["outcome"] == "ok" and "stream_error" not in line, line
        assert "circuit" not in sc.stderr(), sc.stderr()[-2000:]


# 4. A broken stream never claims completion ---------------------------------------------

@pytest.mark.parametrize("mode", ["cut", "stall", "error-event"])
def test_04_a_broken_stream_ends_with_an_error_event_no_done_and_an_aborted_body(upstream, tmp_path, mode):
    """Cut connection, a stall past `streamIdle`, or the upstream's own error event after
    the stream was committed: the client gets the text so far, one OpenAI-shaped error
    event, no `[DONE]`, and an HTTP body that ends without its last chunk."""
    stub = f"s04{mode}"
    upstream.script(stub, mode, after=2, chunks=5)
    routes = manifest({"p": policy()},
                      {"llm/broken": ("p", [upstream.target("primary", stub), upstream.target("backup", stub + "b")])})
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/broken", True)
        assert_broken_stream(r, text_of(stub, 2))
        err = r.errors()[0]["error"]
        assert err.get("message") and err.get("type"), err
        if mode == "stall":
            # The error comes one `streamIdle` (600 ms) after the last chunk.
            gap = r.events[-1][0] - r.events[-2][0]
            assert 0.55 <= gap < 1.2, r.events
            time.sleep(0.2)
            seen = upstream.requests(stub)
            assert seen[0]["closed_ms"] is not None, "the sidecar kept the stalled upstream open"
        assert len(upstream.requests(stub)) == 1
        assert upstream.requests(stub + "b") == []
        assert metric(sc, "detour_stream_errors_total", route="llm/broken", target="primary") == 1
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 0
        assert metric(sc, "detour_attempts_total", target="primary") == 1
        line = audit(sc, r)
        assert line["target"] == "primary" and line.get("stream_error"), line


# 5. A target that breaks every stream opens its breaker ---------------------------------

def test_05_streams_that_break_after_their_first_event_open_the_breaker(upstream, tmp_path):
    """Each stream that breaks after its first event is one failure (never a success that
    resets the count): three in a row open a 3-failure breaker, the transition is logged,
    and the next request goes straight to the backup."""
    upstream.script("s05", "cut", after=1)
    routes = manifest({"p": policy(health={"failureThreshold": 3, "cooldown": "30s"})},
                      {"llm/breaks": ("p", [upstream.target("primary", "s05"), upstream.target("backup", "s05b")])})
    with sidecar(tmp_path, routes) as sc:
        for i in range(3):
            assert breaker(sc, "llm/breaks", "primary") == 0, f"open after {i} broken streams"
            r = post(sc, "llm/breaks", True)
            assert_broken_stream(r, text_of("s05", 1))
            assert r.headers["x-detour-target"] == "primary"
        assert breaker(sc, "llm/breaks", "primary") == 2
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 0
        assert metric(sc, "detour_attempts_total", target="primary") == 3
        assert metric(sc, "detour_stream_errors_total", target="primary") == 3
        r = post(sc, "llm/breaks", True)
        assert_clean_stream(r, text_of("s05b"))
        assert r.headers["x-detour-target"] == "backup"
        assert len(upstream.requests("s05")) == 3
        opened = [line for line in sc.stderr().splitlines() if "circuit open" in line]
        assert len(opened) == 1 and "primary" in opened[0], sc.stderr()[-2000:]


# 6. Context-length errors fail over to a larger window ----------------------------------

def test_06_a_context_length_error_fails_over_to_a_larger_context_window(upstream, tmp_path):
    """OpenAI's `context_length_exceeded` 400 moves the request to the next target whose
    `contextWindow` is larger (a smaller one is passed over), once, without charging the
    refusing target; with no larger target the original 400 comes back."""
    upstream.script("s06small", "context-length")
    upstream.script("s06big", "context-length")
    routes = manifest({"p": policy(retry={"attempts": 3}, health={"failureThreshold": 1})}, {
        "llm/ctx": ("p", [upstream.target("small", "s06small", contextWindow=8192),
                          upstream.target("smaller", "s06smaller", contextWindow=4096),
                          upstream.target("large", "s06large", contextWindow=128000)]),
        "llm/ctx-none": ("p", [upstream.target("big", "s06big", contextWindow=128000),
                               upstream.target("little", "s06little", contextWindow=8192)]),
    })
    with sidecar(tmp_path, routes) as sc:
        for stream in (False, True):
            r = post(sc, "llm/ctx", stream)
            assert r.status == 200, r.body
            assert r.headers["x-detour-target"] == "large"
            if stream:
                assert_clean_stream(r, text_of("s06large"))
            else:
                assert r.json()["choices"][0]["message"]["content"] == text_of("s06large")
        assert len(upstream.requests("s06small")) == 2, "retried on the same target"
        assert upstream.requests("s06smaller") == []
        assert metric(sc, "detour_attempts_total", route="llm/ctx", target="small", **{"class": "context-length"}) == 2
        assert metric(sc, "detour_fallbacks_total", route="llm/ctx", reason="context-length") == 2
        assert breaker(sc, "llm/ctx", "small") == 0, "a context-length refusal was charged to health"

        r = post(sc, "llm/ctx-none", False)
        assert r.status == 400, (r.status, r.body)
        assert r.json()["error"]["code"] == "context_length_exceeded", r.body
        assert len(upstream.requests("s06big")) == 1
        assert upstream.requests("s06little") == []
        assert breaker(sc, "llm/ctx-none", "big") == 0


# 7. content_policy_violation is the content-filter class --------------------------------

def test_07_content_policy_violation_is_a_content_filter(upstream, tmp_path):
    """OpenAI's `content_policy_violation` 400 is the `content-filter` class: a policy with
    `retry.on: [content-filter]` fails over on it; one without returns the 400 as it came;
    both label the attempt `content-filter` and leave the breaker alone."""
    upstream.script("s07a", "content-policy")
    upstream.script("s07b", "content-policy")
    filt = policy(retry={"on": RETRY_ON + ["content-filter"]}, health={"failureThreshold": 1})
    plain = policy(health={"failureThreshold": 1})
    routes = manifest({"filt": filt, "plain": plain}, {
        "llm/filter": ("filt", [upstream.target("primary", "s07a"), upstream.target("backup", "s07ok")]),
        "llm/nofilter": ("plain", [upstream.target("primary", "s07b"), upstream.target("backup", "s07ok2")]),
    })
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/filter", False)
        assert r.status == 200, r.body
        assert r.headers["x-detour-target"] == "backup"
        assert r.json()["choices"][0]["message"]["content"] == text_of("s07ok")
        assert metric(sc, "detour_attempts_total", route="llm/filter", target="primary", **{"class": "content-filter"}) == 1
        assert metric(sc, "detour_fallbacks_total", route="llm/filter", reason="content-filter") == 1

        r = post(sc, "llm/nofilter", False)
        assert r.status == 400, (r.status, r.body)
        assert r.json()["error"]["code"] == "content_policy_violation", r.body
        assert upstream.requests("s07ok2") == []
        assert metric(sc, "detour_attempts_total", route="llm/nofilter", target="primary", **{"class": "content-filter"}) == 1
        assert breaker(sc, "llm/filter", "primary") == 0
        assert breaker(sc, "llm/nofilter", "primary") == 0


# 8. An undecodable event passes through an OpenAI-shaped stream -------------------------

BAD_EVENT = 'data: {"id": "chatcmpl-fake", "choices": [\n\n'


def test_08_an_undecodable_event_is_passed_through_and_counted_not_charged(upstream, tmp_path):
    """One event that is not JSON in an otherwise fine `openai-compatible` stream reaches the
    client verbatim, the stream completes with `[DONE]`, the anomaly is counted, and the
    breaker is never charged (three such streams under a 2-failure breaker)."""
    upstream.script("s08", "bad-event", after=1)
    routes = manifest({"p": policy(health={"failureThreshold": 2})},
                      {"llm/bad": ("p", [upstream.target("primary", "s08"), upstream.target("backup", "s08b")])})
    with sidecar(tmp_path, routes) as sc:
        for _ in range(3):
            r = post(sc, "llm/bad", True)
            assert_clean_stream(r, text_of("s08"))
            assert BAD_EVENT.encode() in r.body, r.body
            assert r.headers["x-detour-target"] == "primary"
        assert upstream.requests("s08b") == []
        assert breaker(sc, "llm/bad", "primary") == 0
        assert metric(sc, "detour_attempts_total", target="primary", **{"class": "ok"}) == 3
        assert metric(sc, "detour_stream_errors_total") == 0
        anomalies = [line for line in sc.metrics().splitlines()
                     if line.startswith("detour_stream_anomalies_total{") and 'target="primary"' in line]
        assert anomalies and float(anomalies[0].rsplit(" ", 1)[1]) == 3, sc.metrics()


# 9. A recovered primary serves again within one cooldown --------------------------------

def test_09_a_recovered_primary_serves_again_within_one_cooldown_and_probes_are_cheap(upstream, tmp_path):
    """Failed half-open probes do not grow the cooldown unless asked: a primary down for
    2.5 s serves again within one cooldown (300 ms) and one probe of recovering. A probe to
    a silent provider waits only `probeFirstByte` before the request moves on."""
    upstream.script("s09", "5xx")
    upstream.script("s09hang", "5xx", times=1)
    health = {"failureThreshold": 1, "cooldown": "300ms", "halfOpenProbes": 1}
    quick = policy(health=health)
    probe = policy(timeouts={"firstByte": "3s", "perAttempt": "4s", "total": "8s"},
                   health={**health, "cooldown": "200ms", "probeFirstByte": "150ms"})
    routes = manifest({"quick": quick, "probe": probe}, {
        "llm/recover": ("quick", [upstream.target("primary", "s09"), upstream.target("backup", "s09b")]),
        "llm/probe": ("probe", [upstream.target("primary", "s09hang"), upstream.target("backup", "s09hb")]),
    })
    with sidecar(tmp_path, routes) as sc:
        start = time.monotonic()
        recovered_at = served_at = None
        while time.monotonic() - start < 6:
            now = time.monotonic() - start
            if recovered_at is None and now >= 2.5:
                upstream.script("s09", "ok")
                recovered_at = time.monotonic() - start
            r = post(sc, "llm/recover", False)
            assert r.status == 200, r.body
            if r.headers["x-detour-target"] == "primary":
                assert recovered_at is not None, "the primary served while it was down"
                served_at = time.monotonic() - start
                break
            time.sleep(0.03)
        assert served_at is not None, "the recovered primary never served again"
        assert served_at - recovered_at <= 0.3 + 0.35, \
            f"served again {served_at - recovered_at:.2f} s after recovering (cooldown 300 ms)"
        down = [h for h in upstream.requests("s09") if h["mode"] == "5xx"]
        # One trip, then one probe per cooldown while down: at most 2.5 s / 300 ms + 1.
        assert 2 <= len(down) <= 10, down
        assert metric(sc, "detour_attempts_total", route="llm/recover", target="primary", **{"class": "5xx"}) == len(down)

        # The probe case: one 5xx opens the breaker, then the primary goes silent.
        r = post(sc, "llm/probe", True)
        assert r.headers["x-detour-target"] == "backup"
        assert breaker(sc, "llm/probe", "primary") == 2
        upstream.script("s09hang", "hang")
        time.sleep(0.3)
        r = post(sc, "llm/probe", True)
        assert_clean_stream(r, text_of("s09hb"))
        assert r.headers["x-detour-target"] == "backup"
        seen = upstream.requests("s09hang")
        assert [h["mode"] for h in seen] == ["5xx", "hang"], seen
        assert r.elapsed < 0.8, f"probing a silent primary cost the request {r.elapsed:.2f} s (firstByte 3 s)"
        assert breaker(sc, "llm/probe", "primary") == 2


# 10. The answer names the model that served ---------------------------------------------

def test_10_the_body_and_every_chunk_name_the_model_that_served(upstream, tmp_path):
    """After a fallback, the body's `model` and every chunk's `model` are what the serving
    provider reported (not the route id, not the primary's model); `x-detour-route` names
    the route. `responseModel: route` opts back into the route id."""
    upstream.script("s10p", "5xx")
    upstream.script("s10b", "ok", model="up-backup-2024-08-06", chunks=4)
    upstream.script("s10rp", "5xx")
    upstream.script("s10rb", "ok", model="up-backup-2024-08-06")
    routes = manifest({"p": policy(), "r": policy(responseModel="route")}, {
        "llm/served": ("p", [upstream.target("primary", "s10p"), upstream.target("backup", "s10b")]),
        "llm/route-id": ("r", [upstream.target("primary", "s10rp"), upstream.target("backup", "s10rb")]),
    })
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/served", False)
        assert r.status == 200, r.body
        assert r.json()["model"] == "up-backup-2024-08-06", r.body
        assert r.headers["x-detour-route"] == "llm/served"
        assert r.headers["x-detour-target"] == "backup"
        assert r.headers["x-detour-fallback-count"] == "1"

        r = post(sc, "llm/served", True)
        assert_clean_stream(r, text_of("s10b", 4))
        assert {c["model"] for c in r.chunks()} == {"up-backup-2024-08-06"}, r.data()
        assert r.headers["x-detour-route"] == "llm/served"

        r = post(sc, "llm/route-id", False)
        assert r.json()["model"] == "llm/route-id", r.body
        r = post(sc, "llm/route-id", True)
        assert_clean_stream(r, text_of("s10rb"))
        assert {c["model"] for c in r.chunks()} == {"llm/route-id"}, r.data()
        assert r.headers["x-detour-route"] == "llm/route-id"


# 11. A hung provider costs a non-streaming request only the first-byte bound -------------

def test_11_a_plain_request_leaves_a_hung_provider_after_first_byte(upstream, tmp_path):
    """A non-streaming request goes to streaming-capable targets as a stream: a provider
    that accepts and never answers costs it one `firstByte` (400 ms), not `perAttempt`
    (3 s), and the answer assembled from the backup's stream is the JSON its plain call
    returns. `streaming.assemble: false`, or a target without the `streaming` capability,
    keeps the plain call and its `perAttempt` wait."""
    upstream.script("s11", "hang")
    upstream.script("s11plain", "hang")
    upstream.script("s11nocap", "hang")
    upstream.script("s11b", "ok", chunks=5)
    routes = manifest({"p": policy(), "off": policy(streaming={"assemble": False}, timeouts={"perAttempt": "1s"}),
                       "short": policy(timeouts={"perAttempt": "1s"})}, {
        "llm/hung": ("p", [upstream.target("primary", "s11"), upstream.target("backup", "s11b")]),
        "llm/plain": ("off", [upstream.target("primary", "s11plain"), upstream.target("backup", "s11pb")]),
        "llm/nocap": ("short", [upstream.target("primary", "s11nocap", capabilities=["tools"]),
                                upstream.target("backup", "s11nb")]),
    })
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/hung", False)
        assert r.status == 200, r.body
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert r.complete
        assert 0.4 <= r.elapsed < 1.2, r.elapsed
        hung, served = upstream.requests("s11"), upstream.requests("s11b")
        assert [h["stream"] for h in hung] == [True], hung
        assert [h["stream"] for h in served] == [True], served
        got = r.json()
        assert got["choices"][0]["message"]["content"] == text_of("s11b", 5), got
        assert got["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}, got
        # The very answer the backup gives a plain call.
        direct = urllib.request.Request(f"{upstream.base}/s11b/v1/chat/completions", method="POST",
                                        data=json.dumps({"model": "up-backup", "messages": []}).encode())
        with urllib.request.urlopen(direct, timeout=5) as d:
            assert got == json.loads(d.read()), got
        assert metric(sc, "detour_attempts_total", route="llm/hung", target="primary", **{"class": "first-byte-timeout"}) == 1

        r = post(sc, "llm/plain", False)
        assert r.status == 200, r.body
        assert r.elapsed >= 1.0, r.elapsed
        assert [h["stream"] for h in upstream.requests("s11plain")] == [False]
        assert [h["stream"] for h in upstream.requests("s11pb")] == [False]
        assert r.json()["choices"][0]["message"]["content"] == text_of("s11pb")

        r = post(sc, "llm/nocap", False)
        assert r.status == 200, r.body
        assert r.elapsed >= 1.0, r.elapsed
        assert [h["stream"] for h in upstream.requests("s11nocap")] == [False]
        assert [h["stream"] for h in upstream.requests("s11nb")] == [True]


# 12. A one-target route waits for Retry-After -------------------------------------------

def test_12_a_single_target_route_waits_for_retry_after_when_it_fits(upstream, tmp_path):
    """With no other target, a 429 with `Retry-After: 1` is waited out and retried inside
    the deadline; a `Retry-After` longer than `retry.rateLimit.maxWait` is a 503 at once."""
    upstream.script("s12", "429", retry_after=1, times=1)
    upstream.script("s12long", "429", retry_after=30)
    p = policy(retry={"rateLimit": {"maxWait": "3s"}})
    routes = manifest({"p": p}, {
        "llm/one": ("p", [upstream.target("only", "s12")]),
        "llm/long-wait": ("p", [upstream.target("only", "s12long")]),
    })
    with sidecar(tmp_path, routes) as sc:
        r = post(sc, "llm/one", False)
        assert r.status == 200, (r.status, r.body)
        assert r.json()["choices"][0]["message"]["content"] == text_of("s12")
        assert 1.0 <= r.elapsed < 2.0, r.elapsed
        seen = upstream.requests("s12")
        assert [h["mode"] for h in seen] == ["429", "ok"], seen
        assert seen[1]["at_ms"] - seen[0]["at_ms"] >= 990, seen
        assert metric(sc, "detour_attempts_total", route="llm/one", target="only", **{"class": "429"}) == 1
        assert metric(sc, "detour_attempts_total", route="llm/one", target="only", **{"class": "ok"}) == 1

        r = post(sc, "llm/long-wait", False)
        assert r.status == 503, (r.status, r.body)
        assert r.elapsed < 0.5, r.elapsed
        assert len(upstream.requests("s12long")) == 1
        assert int(r.headers["retry-after"]) >= 1
