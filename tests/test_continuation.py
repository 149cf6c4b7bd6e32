"""Mid-stream continuation (`streaming.continueOnFailure`) through the release binary against
the scripted fake upstream: a committed stream that is cut, stalls or ends with an upstream
error event is finished by the next target, and the client reads one coherent stream (exact
text, one role chunk, one finish_reason, `[DONE]`); each guard ends the stream as before (one
error event, no `[DONE]`); the real Python and Node `openai` clients and the Vercel AI SDK
read a continued stream to its end.

The fake's continuing stub restarts the answer ("hello from <stub> 3 4 ...") as a model asked
to continue sometimes does; the sidecar takes out the repeated "hello from", so the client's
text is the first stub's "hello from" followed by the rest of the second answer.
"""

import json

import pytest

from support import sidecar
from test_clients import ai_sdk_call, node_call
from test_llm_semantics import audit, manifest, metric, policy, post, upstream  # noqa: F401

CONTINUE = {"streaming": {"continueOnFailure": True}}


def routes(up, model, first, second, spec=None, third=None):
    targets = [up.target("primary", first), up.target("backup", second)]
    if third:
        targets.append(up.target("last", third))
    return manifest({"cont": policy(**(CONTINUE if spec is None else spec))}, {model: ("cont", targets)})


def roles(r):
    return sum(1 for c in r.chunks() if (c.get("choices") or [{}])[0].get("delta", {}).get("role"))


def finishes(r):
    return [c["choices"][0]["finish_reason"] for c in r.chunks()
            if c.get("choices") and c["choices"][0].get("finish_reason")]


def assert_continued(r, text, frm="primary", to="backup"):
    assert r.status == 200, r.body[:300]
    assert r.content() == text, r.data()
    assert roles(r) == 1, r.data()
    assert finishes(r) == ["stop"], r.data()
    assert not r.errors(), r.data()
    assert r.data()[-1] == "[DONE]", r.data()[-3:]
    assert r.complete
    ids = {c.get("id") for c in r.chunks()}
    assert ids == {"chatcmpl-fake"}, ids
    final = next(c for c in r.chunks() if c.get("choices") and c["choices"][0].get("finish_reason"))
    assert [(b["from"], b["to"]) for b in final["detour"]["continued"]] == [(frm, to)], final


def assert_broken(r):
    assert r.status == 200
    assert "[DONE]" not in r.data(), r.data()
    assert len(r.errors()) == 1, r.data()
    assert not r.complete, "a broken stream ends abnormally"


@pytest.mark.parametrize("mode,cls", [("cut", "reset"), ("stall", "timeout"), ("error-event", "5xx")])
def test_a_broken_stream_is_finished_by_the_next_target(upstream, tmp_path, mode, cls):
    """Cut after two chunks, stalled past streamIdle, or ended by an upstream error event: the
    next target finishes the answer in the same stream, and the audit line, the metric and the
    continuing target's request say how."""
    first, second = f"cont-{mode}-a", f"cont-{mode}-b"
    upstream.script(first, mode, after=2, chunks=5)
    upstream.script(second, "ok", chunks=5)
    with sidecar(tmp_path, routes(upstream, "m", first, second)) as sc:
        r = post(sc, "m", True)
        assert_continued(r, f"hello from {second} 3 4")
        line = audit(sc, r)
        assert line["outcome"] == "ok" and line["target"] == "backup", line
        assert [a["class"] for a in line["attempts"]] == [cls, "ok"], line
        (c,) = line["continuations"]
        assert (c["from"], c["class"], c["to"], c["result"], c["style"]) == ("primary", cls, "backup", "ok", "prompt")
        assert (c["bytes"], c["chunks"]) == (len("hello from"), 2), c
        assert metric(sc, "detour_stream_continuations_total", route="m", to="backup", result="ok") == 1
        asked = upstream.requests(second)
        assert len(asked) == 1


def test_guards_end_the_stream_as_before(upstream, tmp_path):
    """n > 1, a JSON schema response format, and less than a second before the client's
    deadline: no continuation, one error event, no [DONE], the next target never asked."""
    upstream.script("cont-guard-a", "cut", after=2, chunks=5)
    upstream.script("cont-guard-b", "ok", chunks=5)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    cases = [({"n": 2}, None, "n"), ({"response_format": schema}, None, "json-format"),
             ({}, {"x-detour-timeout-ms": "900"}, "deadline")]
    with sidecar(tmp_path, routes(upstream, "m", "cont-guard-a", "cont-guard-b")) as sc:
        for extra, headers, why in cases:
            r = post(sc, "m", True, extra=extra, headers=headers)
            assert_broken(r)
            line = audit(sc, r)
            assert [(c["to"], c["result"]) for c in line["continuations"]] == [(None, why)], line
        assert upstream.requests("cont-guard-b") == []


def test_a_refusing_target_is_skipped_and_none_left_is_an_error(upstream, tmp_path):
    """A target that refuses the continuation (a 400) is passed over for the next; with none
    left the stream ends with the error event and no [DONE]."""
    upstream.script("cont-refuse-a", "cut", after=2, chunks=5)
    upstream.script("cont-refuse-b", "content-policy")
    upstream.script("cont-refuse-c", "ok", chunks=4)
    with sidecar(tmp_path, routes(upstream, "m", "cont-refuse-a", "cont-refuse-b", third="cont-refuse-c")) as sc:
        r = post(sc, "m", True)
        assert_continued(r, "hello from cont-refuse-c 3", to="last")
        line = audit(sc, r)
        assert [(c["to"], c["result"]) for c in line["continuations"]] == [("backup", "content-filter"), ("last", "ok")], line
    upstream.script("cont-refuse-a", "cut", after=2, chunks=5)
    with sidecar(tmp_path, routes(upstream, "m", "cont-refuse-a", "cont-refuse-b")) as sc:
        r = post(sc, "m", True)
        assert_broken(r)
        line = audit(sc, r)
        assert line["continuations"][-1]["result"] == "no-target", line
        assert line["target"] == "primary" and line["outcome"] == "stream_error", line


def test_off_by_default(upstream, tmp_path):
    """Without the policy's opt-in a cut stream ends with the error event, as before."""
    upstream.script("cont-off-a", "cut", after=2, chunks=5)
    upstream.script("cont-off-b", "ok", chunks=5)
    with sidecar(tmp_path, routes(upstream, "m", "cont-off-a", "cont-off-b", spec={})) as sc:
        r = post(sc, "m", True)
        assert_broken(r)
        assert "continuations" not in audit(sc, r)


def python_stream(sc, model):
    import openai
    client = openai.OpenAI(base_url=f"{sc.base}/v1", api_key="unused", max_retries=0, timeout=15)
    text, finals, marker = "", [], None
    for chunk in client.chat.completions.create(model=model, stream=True,
                                                messages=[{"role": "user", "content": "hello"}]):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                finals.append(chunk.choices[0].finish_reason)
                marker = (chunk.model_extra or {}).get("detour")
    return text, finals, marker


def test_real_clients_read_a_continued_stream(upstream, tmp_path):
    """The Python and Node openai clients and the Vercel AI SDK read a continued stream
    without error and see the whole text; the Python client exposes the `detour` field."""
    with sidecar(tmp_path, routes(upstream, "m", "cont-cli-a", "cont-cli-b")) as sc:
        upstream.script("cont-cli-a", "cut", after=2, chunks=5)
        upstream.script("cont-cli-b", "ok", chunks=5)
        text, finals, marker = python_stream(sc, "m")
        assert text == "hello from cont-cli-b 3 4"
        assert finals == ["stop"]
        assert marker["continued"][0]["to"] == "backup", marker
        upstream.script("cont-cli-a", "cut", after=2, chunks=5)
        out = node_call(sc, "m", True, usage=True)
        assert out["error"] is None, out
        assert out["content"] == "hello from cont-cli-b 3 4", out
        assert out["usage"]["completion_tokens"] == 5, out
        upstream.script("cont-cli-a", "cut", after=2, chunks=5)
        out = ai_sdk_call(sc, "m")
        assert out["error"] is None and not out["streamErrors"], out
        assert out["text"] == "hello from cont-cli-b 3 4", out
        assert out["finishReason"] == "stop", out
