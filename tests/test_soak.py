"""The fault soak, one minute long: ~500 requests a second through the real sidecar while its
primary rotates through a 5xx storm, a 429 storm, hangs, resets and slowness. Nothing may be
lost (the backup is healthy throughout), an open breaker must keep ≥ 95 % of the traffic off
the sick primary, and memory must stay flat. The 10-minute run: `scripts/soak --duration 600`.
"""

import os
import shutil

import pytest

from soak.soak import run, verdict, markdown


def test_one_minute_fault_soak_loses_nothing(tmp_path):
    """No request is lost while the primary fails in every way, the dead primary gets ≥ 95 %
    less traffic once its breaker opens, and RSS stays flat."""
    sidecar_bin = os.environ.get("DETOUR_SIDECAR_BIN")
    upstream_bin = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN")
    hey_bin = shutil.which("hey")
    if not (sidecar_bin and upstream_bin and hey_bin):
        pytest.skip("needs DETOUR_SIDECAR_BIN, DETOUR_FAKE_UPSTREAM_BIN and hey (run through scripts/test)")
    duration = int(os.environ.get("DETOUR_SOAK_SECONDS", "60"))
    report = run(duration, 500, tmp_path, sidecar_bin, upstream_bin, hey_bin)
    goals = verdict(report)
    print(markdown(report, goals, f"pytest tests/test_soak.py (DETOUR_SOAK_SECONDS={duration})"))
    assert report["sent"] >= duration * 300, f"load generator fell short: {report['achieved_rps']} rps"
    failed = [d for d, ok in goals if not ok]
    assert not failed, failed
