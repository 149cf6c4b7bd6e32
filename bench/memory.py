#!/usr/bin/env python3
"""Peak memory and connection behaviour of a release detour-sidecar (docs/benchmarks.md):

1. peak RSS (VmHWM) after one non-streaming answer of 20 MB;
2. peak RSS after eight concurrent non-streaming answers of 5 MB;
3. RSS with 8,000 idle client connections open, and /healthz latency meanwhile.

Each case runs a fresh sidecar against a loopback upstream (a threaded Python server that
answers a canned chat.completion of the given size). Everything listens on 127.0.0.1 and
every process started here is stopped by its PID.

    python3 bench/memory.py /path/to/release/detour-sidecar
"""

import http.client
import http.server
import json
import os
import resource
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = sys.argv[1]
IDLE = 8000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def answer(size):
    content = "x" * size
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return json.dumps(body).encode()


class Upstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def upstream(size):
    body = answer(size)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = Upstream(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def start_sidecar(tmp, up_port, *extra):
    port, admin = free_port(), free_port()
    routes = Path(tmp) / "routes.yaml"
    routes.write_text(f"""apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: m}}
spec:
  model: m
  targets:
    - {{name: up, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:{up_port}/v1"}}
""")
    proc = subprocess.Popen([BIN, "--routes", str(routes), "--listen", f"127.0.0.1:{port}",
                             "--admin-listen", f"127.0.0.1:{admin}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, admin


def status_kb(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def chat(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/chat/completions", body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
              headers={"content-type": "application/json"})
    r = c.getresponse()
    n = len(r.read())
    c.close()
    return r.status, n


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def case_answers(tmp, size, concurrent):
    up = upstream(size)
    proc, port, _ = start_sidecar(tmp, up.server_address[1])
    try:
        base = status_kb(proc.pid, "VmRSS")
        with ThreadPoolExecutor(concurrent) as pool:
            results = list(pool.map(lambda _: chat(port), range(concurrent)))
        peak = status_kb(proc.pid, "VmHWM")
        return {"answers": [r[0] for r in results], "bytes": results[0][1], "rss_start_kb": base, "peak_rss_kb": peak}
    finally:
        stop(proc)
        up.shutdown()


def case_idle(tmp):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    up = upstream(100)
    proc, port, admin = start_sidecar(tmp, up.server_address[1], "--idle-timeout-ms", "600000")
    socks = []
    try:
        base = status_kb(proc.pid, "VmRSS")
        for _ in range(IDLE):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        # Every connection accepted and its task started.
        for _ in range(100):
            m = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
            opened = [l for l in m.splitlines() if l.startswith("detour_open_connections ")]
            if opened and float(opened[0].split()[1]) >= IDLE:
                break
            time.sleep(0.1)
        rss = status_kb(proc.pid, "VmRSS")
        lat = []
        for _ in range(200):
            t = time.perf_counter()
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5).read()
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        return {"connections": IDLE, "open_reported": opened[0] if opened else None,
                "rss_before_kb": base, "rss_kb": rss,
                "per_connection_bytes": round((rss - base) * 1024 / IDLE),
                "healthz_ms_p50": round(statistics.median(lat), 3), "healthz_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 3)}
    finally:
        for s in socks:
            s.close()
        stop(proc)
        up.shutdown()


def main():
    # ANSWERS_ONLY=1: the two answer cases, without the 8,000 idle connections.
    answers_only = os.environ.get("ANSWERS_ONLY") == "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = {
            "one_20MB_answer": case_answers(tmp, 20 * 1000 * 1000, 1),
            "eight_5MB_answers": case_answers(tmp, 5 * 1000 * 1000, 8),
        }
        if not answers_only:
            out["idle_8000"] = case_idle(tmp)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
