"""`scripts/choose-share`: a share chosen from a team's own labelled requests, scored by the
same scorer the sidecar runs (the `score` example, built by scripts/test)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.environ.get("DETOUR_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCORE_BIN = os.environ.get("DETOUR_SCORE_BIN", "")
PROMPTS = os.path.join(ROOT, "sidecar", "tests", "data", "complexity-prompts.jsonl")


@pytest.fixture
def score_bin():
    if not SCORE_BIN:
        pytest.skip("DETOUR_SCORE_BIN is not set (run through scripts/test)")
    return SCORE_BIN


def team_prompts():
    with open(PROMPTS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def complex_only_rows():
    """The team prompts, where the cheap tier fails exactly the complex ones."""
    return [{"request": p["body"], "capable": 1, "cheap": 1 if p["label"] == "simple" else 0} for p in team_prompts()]


def write(tmp_path, rows, name="sample.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def choose(score_bin, path, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "choose-share"), str(path), "--scorer-cmd", score_bin, *extra],
        capture_output=True, text=True, timeout=120,
    )


def chosen_share(stdout):
    lines = [l for l in stdout.splitlines() if l.strip().startswith("cheapShare:")]
    assert len(lines) == 1, stdout
    return float(lines[0].split(":")[1])


def test_a_sample_where_only_complex_requests_need_the_capable_tier_gets_the_share_of_simple_ones(tmp_path, score_bin):
    prompts = team_prompts()
    rows = complex_only_rows()
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 0, out.stderr
    simple = sum(p["label"] == "simple" for p in prompts) / len(prompts)  # 32 of 54
    share = chosen_share(out.stdout)
    # Every share up to the simple requests' keeps the whole advantage; above it, the intervals
    # of the bootstrap decide how close to it the choice comes.
    assert 0.4 <= share <= simple + 0.02, out.stdout
    apgr = [l for l in out.stdout.splitlines() if l.startswith("How well scorer v2")]
    lo = float(apgr[0].split("[")[1].split(",")[0])
    assert lo > 0.5, out.stdout
    assert "does not find the requests" not in out.stdout


def test_a_stricter_bar_gives_a_smaller_share(tmp_path, score_bin):
    rows = []
    for i, p in enumerate(team_prompts()):
        # The cheap tier fails some simple requests too, so the advantage is spread.
        cheap = 0 if p["label"] == "complex" or i % 4 == 0 else 1
        rows.append({"request": p["body"], "capable": 1, "cheap": cheap})
    path = write(tmp_path, rows)
    loose = choose(score_bin, path, "--keep", "0.6")
    strict = choose(score_bin, path, "--keep", "0.8")
    assert loose.returncode == 0 and strict.returncode == 0, loose.stderr + strict.stderr
    assert chosen_share(loose.stdout) > chosen_share(strict.stdout), loose.stdout + strict.stdout
    # A simple request the cheap tier fails scores among the lowest: no share keeps it all.
    none = choose(score_bin, path, "--keep", "0.99")
    assert none.returncode == 0, none.stderr
    assert "No share keeps 99%" in none.stdout and "cheapShare:" not in none.stdout, none.stdout


def test_ratings_the_score_cannot_see_are_reported_as_no_better_than_a_random_split(tmp_path, score_bin):
    rows, seen = [], {"simple": 0, "complex": 0}
    for p in team_prompts():
        # Half of each class fails on the cheap tier, whatever the request asks.
        seen[p["label"]] += 1
        rows.append({"request": p["body"], "capable": 1, "cheap": seen[p["label"]] % 2})
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 0, out.stderr
    assert "does not find the requests" in out.stdout, out.stdout


def test_responses_requests_are_scored_on_their_chat_translation_as_the_sidecar_does(tmp_path, score_bin):
    chat_rows, responses_rows = [], []
    for p in team_prompts():
        cheap = 1 if p["label"] == "simple" else 0
        chat_rows.append({"request": p["body"], "capable": 1, "cheap": cheap})
        messages = p["body"]["messages"]
        # The Responses form of the same request: a system message as `instructions`, the turns as `input`.
        system = [m["content"] for m in messages if m["role"] == "system"]
        body = {"model": p["body"]["model"], "input": [m for m in messages if m["role"] != "system"]}
        if system:
            body["instructions"] = system[0]
        if "tools" in p["body"]:
            body["tools"] = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"].get("parameters", {})}
                             for t in p["body"]["tools"]]
        if "reasoning_effort" in p["body"]:
            body["reasoning"] = {"effort": p["body"]["reasoning_effort"]}
        if "response_format" in p["body"]:
            body["text"] = {"format": p["body"]["response_format"]}
        responses_rows.append({"request": body, "capable": 1, "cheap": cheap})
    as_chat = choose(score_bin, write(tmp_path, chat_rows, "chat.jsonl"))
    as_responses = choose(score_bin, write(tmp_path, responses_rows, "responses.jsonl"), "--api", "responses")
    assert as_chat.returncode == 0 and as_responses.returncode == 0, as_chat.stderr + as_responses.stderr
    assert as_responses.stdout.startswith("54 scored requests\n"), as_responses.stdout
    # The same requests score the same: every figure of the report is equal.
    assert as_responses.stdout == as_chat.stdout
    # Read as chat bodies, they have no messages: nothing is scored.
    misread = choose(score_bin, write(tmp_path, responses_rows, "responses.jsonl"))
    assert misread.returncode == 2 and "too few" in misread.stderr, misread.stdout + misread.stderr


def test_requests_without_a_prompt_are_counted_and_left_out(tmp_path, score_bin):
    rows = complex_only_rows()
    rows.append({"request": {"model": "embed", "input": "a document"}, "capable": 1, "cheap": 1})
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("54 scored requests (1 not scored, left out"), out.stdout
    # A body with only a system prompt is scored by v2 but not by length: it is left out of
    # every scorer's figures, and said so.
    rows.append({"request": {"model": "m", "messages": [{"role": "system", "content": "Be brief."}]}, "capable": 1, "cheap": 1})
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("54 scored requests (1 not scored, left out: they go to the most capable target)"
                                 " (1 that another scorer does not score, left out"), out.stdout


@pytest.mark.parametrize(
    "bad, names",
    [
        ('{"request": {"model": "m", "messages": []}, "capable": 1, "cheap": "yes"}', ["line 3", "`cheap`", '"yes"']),
        ('{"request": "hello", "capable": 1, "cheap": 0}', ["line 3", "`request`"]),
        ('{"request": {"model": "m"}, "cheap": 0}', ["line 3", "`capable`"]),
        ("{not json", ["line 3", "not JSON"]),
    ],
)
def test_a_bad_line_is_refused_naming_the_line_and_the_field(tmp_path, score_bin, bad, names):
    good = {"request": {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "capable": 1, "cheap": 1}
    out = choose(score_bin, write(tmp_path, [good, good, bad, good]))
    assert out.returncode == 2, out.stdout
    for n in names:
        assert n in out.stderr, out.stderr
    assert out.stdout == ""


def test_too_small_a_sample_is_refused(tmp_path, score_bin):
    rows = [{"request": {"model": "m", "messages": [{"role": "user", "content": f"Hi {i}"}]}, "capable": 1, "cheap": 0} for i in range(5)]
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 2
    assert "too few" in out.stderr


def test_traffic_where_only_size_tells_hard_from_easy_is_sent_to_the_length_scorer(tmp_path, score_bin):
    # One kind of task: short requests full of v2's signals (maths, asks for proof) that the
    # cheap tier answers, and long plain case descriptions only the capable tier gets right.
    rows = []
    for i in range(80):
        short = f"Prove step by step that {i}x^2 + {i + 1}x = {2 * i} has an integer solution, and explain why."
        rows.append({"request": {"model": "m", "messages": [{"role": "user", "content": short}]}, "capable": 1, "cheap": 1})
        story = " ".join(f"On day {d} the shop on street {i} opened late and the owner met a supplier." for d in range(10 + i % 25))
        long = story + f" Which supplier did the owner of shop {i} meet first?"
        rows.append({"request": {"model": "m", "messages": [{"role": "user", "content": long}]}, "capable": 1, "cheap": 0})
    path = write(tmp_path, rows)
    out = choose(score_bin, path)
    assert out.returncode == 0, out.stderr
    assert "Scorer length orders this traffic better than v2" in out.stdout, out.stdout
    assert "cheapShare:" not in out.stdout or chosen_share(out.stdout) < 0.4, out.stdout
    by_length = choose(score_bin, path, "--scorer", "length")
    assert by_length.returncode == 0, by_length.stderr
    assert "orders this traffic better" not in by_length.stdout, by_length.stdout
    assert "scorer: length" in by_length.stdout and 0.4 <= chosen_share(by_length.stdout) <= 0.5, by_length.stdout


def test_a_scorer_no_better_than_the_chosen_one_is_not_recommended(tmp_path, score_bin):
    rows = complex_only_rows()
    out = choose(score_bin, write(tmp_path, rows))
    assert out.returncode == 0, out.stderr
    table = [l for l in out.stdout.splitlines() if l.startswith("| v1 |") or l.startswith("| length |") or l.startswith("| v2 (chosen)")]
    assert len(table) == 3, out.stdout
    assert "orders this traffic better" not in out.stdout, out.stdout
