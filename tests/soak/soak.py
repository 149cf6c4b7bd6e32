#!/usr/bin/env python3
"""Fault soak: ~500 requests a second through the real sidecar while its primary upstream
rotates through outages, and a report of what users would have seen.

    tests/soak/soak.py --duration 600 --report docs/soak-results.md

The load comes from `hey` (Debian package) at a fixed rate; the upstreams are
`detour-fake-upstream` (stub `a` is the primary, stub `b` the always-healthy backup). While the
load runs, the primary goes ok → 5xx storm → ok → 429 storm (Retry-After: 2) → ok → hang →
reset → slow → ok. The driver samples the sidecar's breaker state and RSS, and the fake's hit
counters, every 100 ms.

Reported:
- requests sent, answered 200, lost (any non-200: the backup was healthy throughout);
- for each outage, the traffic the sick primary still received after its breaker opened, as a
  reduction against the requests sent in that time (goal ≥ 95 %);
- RSS over time (goal: flat).
Exits 1 when a goal is missed. Binaries: $DETOUR_SIDECAR_BIN, $DETOUR_FAKE_UPSTREAM_BIN.
"""

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import free_port, stop, wait_http_ok  # noqa: E402

# (mode of the primary, share of the run)
SCHEDULE = [
    ("ok", 0.08), ("5xx", 0.14), ("ok", 0.08), ("429", 0.14), ("ok", 0.08),
    ("hang", 0.14), ("reset", 0.12), ("slow", 0.08), ("ok", 0.14),
]
OUTAGES = {"5xx", "429", "hang", "reset"}
# The sidecar sends plain requests to streaming-capable targets as streams and assembles the
# answer; the fake's streams then come as fast as its plain answers (no pause between
# events), so the soak measures failover under load, not a scripted generation speed.
UNPACED = "interval_ms=0"

ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {{name: soak}}
spec:
  retry: {{attempts: 1, on: ["5xx", "429", "timeout", "connect-error"]}}
  timeouts: {{perAttempt: 2s, firstByte: 600ms, total: 5s}}
  health:
    failureThreshold: 5
    cooldown: 2s
    maxCooldown: 8s
    halfOpenProbes: 2
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: soak}}
spec:
  model: soak/chat
  policyRef: {{name: soak}}
  targets:
    - {{name: primary, provider: openai-compatible, model: up-a, endpoint: "{base}/a/v1"}}
    - {{name: backup, provider: openai-compatible, model: up-b, endpoint: "{base}/b/v1"}}
"""


def get_json(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def breaker_state(admin):
    """The primary's breaker state from /metrics: 0 closed, 1 half-open, 2 open."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("detour_breaker_state{") and 'target="primary"' in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(duration, rate, workdir, sidecar_bin, upstream_bin, hey_bin):
    workdir = Path(workdir)
    procs = []
    try:
        with open(workdir / "upstream.log", "wb") as log:
            upstream = subprocess.Popen([upstream_bin, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                                        stderr=log)
        procs.append(upstream)
        line = upstream.stdout.readline().decode()
        assert line.startswith("listening on "), line
        up = "http://" + line.split()[-1]
        urllib.request.urlopen(urllib.request.Request(f"{up}/_control/b/ok?{UNPACED}", method="PUT"), timeout=2).close()

        routes = workdir / "routes.yaml"
        routes.write_text(ROUTES.format(base=up))
        port, admin_port = free_port(), free_port()
        with open(workdir / "sidecar.stdout", "wb") as out, open(workdir / "sidecar.stderr", "wb") as err:
            sidecar = subprocess.Popen(
                [sidecar_bin, "--routes", str(routes), "--listen", f"127.0.0.1:{port}",
                 "--admin-listen", f"127.0.0.1:{admin_port}"], stdout=out, stderr=err)
        procs.append(sidecar)
        admin = f"http://127.0.0.1:{admin_port}"
        wait_http_ok(f"{admin}/readyz", sidecar, workdir / "sidecar.stderr")

        samples = []  # (t, breaker state, hits on a, rss KiB)
        stop_sampling = threading.Event()
        phases = []  # (mode, start t, end t)
        t0 = time.monotonic()

        def sampler():
            while not stop_sampling.is_set():
                t = time.monotonic() - t0
                try:
                    stats = get_json(f"{up}/_stats")
                    hits_a = sum(stats.get("a", {}).values())
                    samples.append((t, breaker_state(admin), hits_a, rss_kib(sidecar.pid)))
                except OSError:
                    pass
                stop_sampling.wait(0.1)

        def scheduler():
            start = 0.0
            for mode, share in SCHEDULE:
                req = urllib.request.Request(f"{up}/_control/a/{mode}?{UNPACED}", method="PUT")
                urllib.request.urlopen(req, timeout=2).close()
                begin = time.monotonic() - t0
                length = duration * share
                phases.append([mode, begin, begin + length])
                start += length
                if stop_sampling.wait(max(0.0, start - (time.monotonic() - t0))):
                    return

        body = json.dumps({"model": "soak/chat", "messages": [{"role": "user", "content": "hello"}]})
        workers = 25
        hey = [hey_bin, "-z", f"{duration}s", "-c", str(workers), "-q", str(max(1, rate // workers)),
               "-m", "POST", "-T", "application/json", "-d", body, "-t", "10", "-o", "csv",
               f"http://127.0.0.1:{port}/v1/chat/completions"]
        threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=scheduler, daemon=True)]
        for t in threads:
            t.start()
        t_hey = time.monotonic() - t0
        result = subprocess.run(hey, capture_output=True, text=True, timeout=duration + 60)
        stop_sampling.set()
        for t in threads:
            t.join(timeout=5)
        if result.returncode != 0:
            raise RuntimeError(f"hey failed: {result.stderr}")

        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        # Request start times on the driver's clock.
        sends = sorted(t_hey + float(r["offset"]) for r in rows)
        statuses = [r["status-code"] for r in rows]
        ok = sum(1 for s in statuses if s == "200")
        report = {
            "duration_s": duration,
            "target_rate_rps": rate,
            "sent": len(rows),
            "achieved_rps": round(len(rows) / duration, 1),
            "answered_200": ok,
            "lost": len(rows) - ok,
            "non_200_statuses": sorted({s for s in statuses if s != "200"}),
            "outages": [],
            "rss_kib": [],
        }

        def sent_between(a, b):
            return sum(1 for s in sends if a <= s < b)

        def hits_at(t):
            before = [s for s in samples if s[0] <= t]
            return before[-1][2] if before else 0

        for mode, begin, end in phases:
            if mode not in OUTAGES:
                continue
            opened = next((s[0] for s in samples if begin <= s[0] < end and s[1] == 2), None)
            entry = {"mode": mode, "phase_s": [round(begin, 1), round(end, 1)],
                     "requests_in_phase": sent_between(begin, end),
                     "primary_hits_in_phase": hits_at(end) - hits_at(begin)}
            if opened is None:
                entry["breaker_opened_after_s"] = None
                entry["reduction"] = None
            else:
                after_sent = sent_between(opened, end)
                after_hits = hits_at(end) - hits_at(opened)
                entry["breaker_opened_after_s"] = round(opened - begin, 2)
                entry["requests_after_open"] = after_sent
                entry["primary_hits_after_open"] = after_hits
                entry["reduction"] = round(1 - after_hits / after_sent, 4) if after_sent else None
            report["outages"].append(entry)

        # RSS once a second.
        next_t = 0.0
        for t, _, _, rss in samples:
            if t >= next_t:
                report["rss_kib"].append([round(t, 1), rss])
                next_t = t + 1.0
        return report
    finally:
        for p in reversed(procs):
            stop(p)


def verdict(report):
    """The goals, as (description, passed)."""
    goals = [("0 lost", report["lost"] == 0)]
    for o in report["outages"]:
        goals.append((f"{o['mode']}: breaker opened", o["breaker_opened_after_s"] is not None))
        if o.get("reduction") is not None:
            goals.append((f"{o['mode']}: ≥ 95 % less traffic to the dead primary once open",
                          o["reduction"] >= 0.95))
    rss = [r for _, r in report["rss_kib"]]
    if len(rss) >= 4:
        half = len(rss) // 2
        early, late = max(rss[:half]), max(rss[half:])
        goals.append((f"flat memory (max RSS {early} KiB first half, {late} KiB second half)",
                      late <= early * 1.2 + 2048))
    return goals


def markdown(report, goals, command):
    lines = [
        f"Command: `{command}`",
        "",
        f"- sent {report['sent']} requests in {report['duration_s']} s ({report['achieved_rps']} rps), "
        f"answered 200: {report['answered_200']}, lost: {report['lost']}",
        "",
        "| outage | breaker opened after | requests after open | primary hits after open | reduction |",
        "|---|---|---|---|---|",
    ]
    for o in report["outages"]:
        red = "-" if o.get("reduction") is None else f"{o['reduction'] * 100:.1f} %"
        opened = "never" if o["breaker_opened_after_s"] is None else f"{o['breaker_opened_after_s']} s"
        lines.append(f"| {o['mode']} | {opened} | {o.get('requests_after_open', '-')} | "
                     f"{o.get('primary_hits_after_open', '-')} | {red} |")
    rss = report["rss_kib"]
    if rss:
        picks = rss[:: max(1, len(rss) // 10)]
        lines += ["", "RSS over time: " + ", ".join(f"{t:.0f}s {kib / 1024:.1f} MB" for t, kib in picks)]
    lines += ["", "Goals:"] + [f"- {'PASS' if ok else 'FAIL'}: {d}" for d, ok in goals]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    ap.add_argument("--rate", type=int, default=500, help="requests per second (default 500)")
    ap.add_argument("--report", help="also write the markdown report to this file")
    ap.add_argument("--json", help="also write the raw report as JSON to this file")
    args = ap.parse_args()
    sidecar_bin = os.environ.get("DETOUR_SIDECAR_BIN")
    upstream_bin = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN")
    hey_bin = shutil.which("hey")
    if not (sidecar_bin and upstream_bin and hey_bin):
        sys.exit("needs $DETOUR_SIDECAR_BIN, $DETOUR_FAKE_UPSTREAM_BIN and hey on PATH (scripts/soak sets them up)")
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.duration, args.rate, tmp, sidecar_bin, upstream_bin, hey_bin)
    goals = verdict(report)
    text = markdown(report, goals, f"scripts/soak --duration {args.duration} --rate {args.rate}")
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if all(ok for _, ok in goals) else 1)


if __name__ == "__main__":
    main()
