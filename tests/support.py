"""Helpers shared by the end-to-end tests: free loopback ports, and the real sidecar binary
started on them and stopped again (only the process the helper started, by its PID)."""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request

import pytest

SIDECAR_BIN = os.environ.get("DETOUR_SIDECAR_BIN", "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url, proc, log_path, timeout=15.0):
    """Polls `url` until it answers 200, the process exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready; log:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)


def stop(proc, timeout=10):
    """Stops one process this test started: SIGTERM, then SIGKILL if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Sidecar:
    def __init__(self, proc, port, admin, tmp):
        self.proc, self.port, self.admin, self.tmp = proc, port, admin, tmp
        self.base = f"http://127.0.0.1:{port}"
        self.admin_base = f"http://127.0.0.1:{admin}"

    def stdout(self):
        return (self.tmp / "sidecar.stdout").read_text(errors="replace")

    def stderr(self):
        return (self.tmp / "sidecar.stderr").read_text(errors="replace")

    def metrics(self):
        with urllib.request.urlopen(f"{self.admin_base}/metrics", timeout=5) as r:
            return r.read().decode()


@contextlib.contextmanager
def sidecar(tmp, routes_yaml, *extra_args):
    """Runs `detour-sidecar --routes` on free loopback ports until the block ends."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    routes = tmp / "routes.yaml"
    routes.write_text(routes_yaml)
    port, admin = free_port(), free_port()
    with open(tmp / "sidecar.stdout", "wb") as out, open(tmp / "sidecar.stderr", "wb") as err:
        proc = subprocess.Popen(
            [SIDECAR_BIN, "--routes", str(routes), "--listen", f"127.0.0.1:{port}",
             "--admin-listen", f"127.0.0.1:{admin}", *extra_args],
            stdout=out, stderr=err,
        )
        try:
            wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp / "sidecar.stderr")
            yield Sidecar(proc, port, admin, tmp)
        finally:
            stop(proc)
